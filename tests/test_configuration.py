"""Config validation: defaults filled, every problem reported with key, value and fix."""

from __future__ import annotations

import copy

import pytest
import yaml

from pbmc_prepost import InputError
from pbmc_prepost.configuration import validate_config

from conftest import ROOT

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


@pytest.fixture()
def config():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_shipped_config_is_valid_and_complete(config):
    validated = validate_config(config, SCHEMA)
    assert validated["clustering"]["default_resolution"] in validated["clustering"]["resolutions"]


def test_shipped_config_is_the_schemas_defaults(config):
    """A default lives in the schema only: config/config.yaml documents them, value for value."""
    assert validate_config(config, SCHEMA) == validate_config({}, SCHEMA)


def test_settings_carry_no_defaults_of_their_own():
    """Every field of every rule family's settings comes from the validated config."""
    from pbmc_prepost import settings

    for kind in (settings.QCSettings, settings.EmbedSettings, settings.DESettings, settings.ScoreSettings):
        assert not kind._field_defaults, kind
    built = settings.DESettings.from_config(settings.default_config(de={"alpha": 0.1}))
    assert built.alpha == 0.1 and built.level == "lineage"


def test_every_schema_key_has_a_description_and_default():
    schema = yaml.safe_load(SCHEMA.read_text())

    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            assert "description" in sub, f"{path}{key} has no description"
            # The old `contrast` block has no default: its presence is what marks an old config.
            assert "default" in sub or key == "contrast", f"{path}{key} has no default"
            if sub.get("type") == "object" and "properties" in sub and key != "sample_overrides":
                walk(sub, f"{path}{key}.")

    walk(schema, "")


def test_defaults_fill_a_minimal_config():
    validated = validate_config({"samples": "sheet.tsv"}, SCHEMA)
    assert validated["qc"]["nmads_mt"] == 3 and validated["qc"]["max_pct_mt"] == 20
    assert validated["design"] == {"column": "timepoint", "pair_by": "donor", "arm": None, "covariates": []}
    assert validated["contrasts"] == [{"name": "post_vs_pre", "reference": "pre", "treated": "post"}]
    assert validated["hvg"]["flavor"] == "seurat_v3"


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda c: c["qc"].update(nmads_mt=-1), "qc.nmads_mt = -1 is out of range"),
        (lambda c: c["qc"].update(max_pct_mt=150), "qc.max_pct_mt = 150 is out of range"),
        (
            lambda c: c["doublets"].update(expected_doublet_rate=0.9),
            "doublets.expected_doublet_rate = 0.9 is out of range",
        ),
        (lambda c: c["hvg"].update(flavor="magic"), "hvg.flavor = 'magic' is not allowed"),
        (lambda c: c["qc"].update(nmads_typo=3), "unknown key(s) 'nmads_typo'"),
        (lambda c: c["qc"].update(max_pct_mito=15), "did you mean 'max_pct_mt' for 'max_pct_mito'?"),
        (lambda c: c["clustering"].update(default_resolution=2.0), "clustering.default_resolution = 2.0 is not among"),
        (lambda c: c["integration"].update(method="harmony", key="timepoint"), "integrating on it would erase"),
        (lambda c: c["contrasts"][0].update(treated="pre"), "reference and treated are both 'pre'"),
        (lambda c: c["qc"].update(mito_pattern="^MT-("), "not a valid regular expression"),
        (
            lambda c: c["qc"]["sample_overrides"].update(D1_pre={"max_pct_mt": -3}),
            "qc.sample_overrides.D1_pre.max_pct_mt",
        ),
    ],
)
def test_bad_values_get_a_message_with_key_and_fix(config, change, expected):
    bad = copy.deepcopy(config)
    change(bad)
    with pytest.raises(InputError) as error:
        validate_config(bad, SCHEMA, source="config/config.yaml")
    message = str(error.value)
    assert expected in message
    assert "config/config.yaml" in message and "Fix:" in message


def test_bad_config_stops_snakemake_before_any_job(tmp_path):
    from conftest import run_snakemake

    result = run_snakemake(tmp_path, "-n", "--config", "seed=-4", check=False)
    assert result.returncode != 0
    assert "seed = -4 is out of range" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()
