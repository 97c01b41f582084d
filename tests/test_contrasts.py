"""Trial designs: the design/contrasts config, its checks, and the difference of changes between arms.

The statistical checks run on pseudobulks drawn from a negative binomial with known effects: 16
donors (8 on IL-7, 8 on placebo), a disease course in both arms and a drug effect in the IL-7 arm
only. The question under test is the reviewer's: does the arm x time interaction find the drug and
leave the course alone, while a within-arm contrast mistakes the course for the drug?
"""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pbmc_prepost import InputError, arms, composition, de
from pbmc_prepost.configuration import validate_config
from pbmc_prepost.design import Contrast, Design
from pbmc_prepost.samplesheet import load_sample_sheet
from pbmc_prepost.settings import SCHEMA, DESettings, build_settings, default_config
from pbmc_prepost.sheet_design import contrast_support

from conftest import ROOT, settings_of

IL7 = Contrast(
    "timepoint", "pre", "post", "donor", name="il7_vs_placebo", arm_column="arm", arm="IL7", versus_arm="placebo"
)
WITHIN_IL7 = Contrast("timepoint", "pre", "post", "donor", name="within_il7", arm_column="arm", arm="IL7")
N_GENES = 400
DRUG = [f"DRUG{i}" for i in range(25)]
COURSE = [f"COURSE{i}" for i in range(25)]


def trial_pseudobulks(drug_lfc: float = 1.5, course_lfc: float = 1.2, n_per_arm: int = 8, seed: int = 1) -> ad.AnnData:
    """Pseudobulks of one population: course genes move in every donor, drug genes in IL-7 only."""
    rng = np.random.default_rng(seed)
    genes = DRUG + COURSE + [f"G{i}" for i in range(N_GENES - len(DRUG) - len(COURSE))]
    base = np.exp(rng.normal(4.0, 1.2, N_GENES))
    rows, counts = [], []
    for d in range(2 * n_per_arm):
        arm = "IL7" if d < n_per_arm else "placebo"
        donor_effect = rng.normal(0, 0.3, N_GENES)
        for timepoint in ("pre", "post"):
            log_mu = np.log(base) + donor_effect
            if timepoint == "post":
                log_mu[len(DRUG) : len(DRUG) + len(COURSE)] += (
                    course_lfc * np.log(2) * np.where(np.arange(len(COURSE)) % 2, 1, -1)
                )
                if arm == "IL7":
                    log_mu[: len(DRUG)] += drug_lfc * np.log(2)
            mean = np.exp(log_mu) * rng.uniform(0.7, 1.4)
            shape = 10.0
            counts.append(rng.poisson(mean * rng.gamma(shape, 1 / shape, N_GENES)))
            rows.append(
                {"sample": f"D{d}_{timepoint}", "donor": f"D{d}", "timepoint": timepoint, "arm": arm, "batch": "b1"}
            )
    obs = pd.DataFrame(rows).set_index("sample", drop=False)
    obs.index.name = None
    X = np.array(counts, dtype=np.float64)
    obs["n_cells"] = 200
    obs["total_counts"] = X.sum(1)
    obs["lineage"] = "CD8 T"
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))


def _settings(contrast: Contrast) -> DESettings:
    return settings_of(DESettings, contrast=contrast, contrasts=(contrast,), n_cpus=1)


def _called(table: pd.DataFrame) -> set[str]:
    return set(table.loc[table["padj"] < 0.05, "gene"])


@pytest.fixture(scope="module")
def trial_fits():
    pb = trial_pseudobulks()
    fits = {}
    for contrast in (IL7, WITHIN_IL7):
        table, summary = de.fit_population(de.contrast_pseudobulks(pb, contrast), _settings(contrast))
        fits[contrast.name] = (table, summary)
    return fits


def test_interaction_finds_the_drug_and_not_the_disease_course(trial_fits):
    table, summary = trial_fits["il7_vs_placebo"]
    called = _called(table)
    precision = len(called & set(DRUG)) / max(len(called), 1)
    recall = len(called & set(DRUG)) / len(DRUG)
    # DESeq2's Wald test is a little liberal with 14 residual degrees of freedom: over seeds 1-6
    # of this simulation, 1-4 of 20-26 calls were null genes (precision 0.84-0.96).
    assert precision >= 0.8 and recall >= 0.7, (precision, recall)
    assert len(called & set(COURSE)) <= 0.05 * len(COURSE)
    assert summary["n_pairs"] == 16 and "difference of changes" in summary["note"]
    assert "8 IL7 + 8 placebo" in summary["note"] and "timepoint_x_arm" in summary["design"]
    drug = table.set_index("gene").reindex(DRUG)["log2FoldChange"].dropna()  # filterByExpr may drop one
    assert abs(drug.median() - 1.5) < 0.3  # the interaction coefficient is the extra change


def test_within_arm_contrast_mistakes_the_course_for_the_drug(trial_fits):
    table, summary = trial_fits["within_il7"]
    called = _called(table)
    assert len(called & set(COURSE)) >= 0.8 * len(COURSE)
    assert len(called & set(DRUG)) >= 0.8 * len(DRUG)
    assert summary["n_pairs"] == 8 and "of arm IL7" in summary["note"]


def test_null_trial_calls_almost_nothing_in_either_contrast():
    pb = trial_pseudobulks(drug_lfc=0.0, course_lfc=0.0, seed=3)
    for contrast in (IL7, WITHIN_IL7):
        table, _ = de.fit_population(de.contrast_pseudobulks(pb, contrast), _settings(contrast))
        assert (table["padj"] < 0.05).mean() <= 0.01, contrast.name


def test_interaction_with_too_few_donors_in_one_arm_is_skipped_with_the_reason():
    pb = trial_pseudobulks()
    keep = ~pb.obs["donor"].isin([f"D{d}" for d in range(8, 14)])  # placebo keeps 2 donors
    table, summary = de.fit_population(de.contrast_pseudobulks(pb[keep.to_numpy()], IL7), _settings(IL7))
    assert table is None and "8 IL7, 2 placebo" in summary["reason"]


def test_covariates_enter_where_estimable_and_donor_level_ones_are_absorbed():
    meta = trial_pseudobulks().obs.copy()
    meta["sex"] = np.where(meta["donor"].str[1:].astype(int) % 2 == 0, "f", "m")  # per donor
    meta["days_since_dose"] = np.random.default_rng(5).uniform(0, 9, len(meta))  # per sample, numeric
    contrast = Contrast(
        "timepoint",
        "pre",
        "post",
        "donor",
        arm_column="arm",
        arm="IL7",
        versus_arm="placebo",
        covariates=("sex", "days_since_dose"),
    )
    design = de.choose_design(meta, contrast, "batch", use_batch=True)
    assert "sex not added (absorbed by donor: constant within every donor)" in design.note
    assert "days_since_dose added (numeric)" in design.note and "days_since_dose" in design.formula
    values = design.metadata(meta)
    assert values["days_since_dose"].dtype == float and set(values["timepoint_x_arm"]) == {"no", "yes"}
    assert (values.loc[(meta["arm"] == "IL7") & (meta["timepoint"] == "post"), "timepoint_x_arm"] == "yes").all()


def test_between_arm_change_test_finds_a_planted_difference_and_not_a_null():
    rng = np.random.default_rng(0)
    donors = [f"D{i}" for i in range(16)]
    arm = ["IL7"] * 8 + ["placebo"] * 8
    planted = pd.DataFrame(
        {"arm": arm, "change": rng.normal(0, 0.3, 16) + np.r_[np.full(8, 0.8), np.zeros(8)]}, index=donors
    )
    result = arms.compare_changes(planted, IL7, min_pairs=3)
    assert result["pvalue"] < 0.01 and result["difference"] > 0.4 and result["n_arm"] == result["n_versus_arm"] == 8
    pvalues = [
        arms.compare_changes(pd.DataFrame({"arm": arm, "change": rng.normal(0, 0.3, 16)}, index=donors), IL7, 3)[
            "pvalue"
        ]
        for _ in range(200)
    ]
    assert 0.02 <= np.mean(np.array(pvalues) < 0.05) <= 0.09  # calibrated under the null
    few = arms.compare_changes(planted.iloc[6:], IL7, min_pairs=3)
    assert math.isnan(few["pvalue"]) and "not tested" in few["note"]


def test_composition_interaction_calls_a_share_that_rises_more_under_il7():
    rng = np.random.default_rng(2)
    rows, meta = [], []
    for d in range(16):
        arm = "IL7" if d < 8 else "placebo"
        base = rng.normal(0.25, 0.03)
        for timepoint in ("pre", "post"):
            share = (
                base * (1.2 if timepoint == "post" else 1.0) * (1.8 if arm == "IL7" and timepoint == "post" else 1.0)
            )
            n_t = int(2000 * share)
            sample = f"D{d}_{timepoint}"
            meta.append({"sample": sample, "donor": f"D{d}", "timepoint": timepoint, "arm": arm})
            for population, n in (("T", n_t), ("other", 2000 - n_t)):
                rows.append(
                    {"sample": sample, "donor": f"D{d}", "timepoint": timepoint, "population": population, "n_cells": n}
                )
    props = pd.DataFrame(rows)
    props["proportion"] = props["n_cells"] / 2000
    sample_meta = pd.DataFrame(meta).set_index("sample")
    test = composition.between_arm_composition_test(props, IL7, sample_meta, min_pairs=3).set_index("population")
    assert test.loc["T", "padj"] < 0.05 and test.loc["T", "difference"] > 0 and test.loc["T", "log2_ratio"] > 0.5
    assert test.loc["T", "n_pairs"] == 16 and "8 IL7, 8 placebo" in test.loc["T", "note"]
    within = composition.contrast_composition_test(props, WITHIN_IL7, sample_meta, "logit", 3).set_index("population")
    assert within.loc["T", "n_pairs"] == 8 and within.loc["T", "note"].startswith("donors of arm IL7 only")


# ---------------------------------------------------------------------------------------------
# Config and sheet checks


def test_old_contrast_block_reads_as_one_contrast_with_a_warning():
    warnings: list[str] = []
    old = validate_config(
        {"contrast": {"column": "visit", "reference": "d0", "treated": "d28"}}, SCHEMA, warnings=warnings
    )
    assert old["design"]["column"] == "visit" and old["design"]["pair_by"] == "donor"
    assert old["contrasts"] == [{"name": "d28_vs_d0", "reference": "d0", "treated": "d28"}]
    assert "contrast" not in old and "design:" in warnings[0] and "contrasts:" in warnings[0]
    # What a second --configfile sets explicitly wins over the old block.
    given = [{"name": "day7", "reference": "day0", "treated": "day7"}]
    both = validate_config(
        {"contrast": {"reference": "pre", "treated": "post"}, "contrasts": given}, SCHEMA, warnings=[]
    )
    assert both["contrasts"] == given


def test_old_style_default_config_gives_the_same_settings_as_the_shipped_one():
    shipped = yaml_config()
    old = {k: v for k, v in shipped.items() if k not in ("design", "contrasts")}
    old["contrast"] = {"column": "timepoint", "reference": "pre", "treated": "post", "pair_by": "donor"}
    new_config = validate_config(shipped, SCHEMA)
    old_config = validate_config(old, SCHEMA, warnings=[])
    assert new_config == old_config
    sheet = load_sample_sheet(ROOT / "config" / "samples.tsv", Design.from_config(new_config), check_files=False)
    from pbmc_prepost.design import Study

    study = Study.from_sheet(sheet.samples, Design.from_config(new_config))
    assert build_settings(new_config, study) == build_settings(old_config, study)


def yaml_config() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_shipped_config_design_is_the_schema_default():
    shipped, defaults = yaml_config(), default_config()
    assert shipped["design"] == defaults["design"] and shipped["contrasts"] == defaults["contrasts"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"contrasts": [{"name": "a", "reference": "pre", "treated": "post", "arm": "IL7"}]}, "design.arm is not set"),
        (
            {
                "design": {"arm": "arm"},
                "contrasts": [{"name": "a", "reference": "pre", "treated": "post", "versus_arm": "x"}],
            },
            "without arm",
        ),
        ({"contrasts": [{"name": "a", "reference": "pre", "treated": "post"}] * 2}, "also used by contrasts[0]"),
        ({"contrasts": [{"name": "a", "reference": "pre", "treated": "pre"}]}, "reference and treated are both"),
        ({"contrasts": [{"name": "a b", "reference": "pre", "treated": "post"}]}, "contrasts.0.name"),
        (
            {
                "design": {"arm": "arm"},
                "contrasts": [{"name": "a", "reference": "pre", "treated": "post", "arm": "x", "versus_arm": "x"}],
            },
            "arm and versus_arm are both",
        ),
        ({"design": {"covariates": ["donor"]}}, "also design.pair_by"),
        ({"contrasts": [{"name": "pseudobulk", "reference": "pre", "treated": "post"}]}, "reserved"),
    ],
)
def test_bad_design_config_is_refused_with_the_key_and_a_fix(config, message):
    with pytest.raises(InputError) as error:
        validate_config(config, SCHEMA)
    assert message in str(error.value) and "Fix:" in str(error.value)


def _trial_sheet(tmp_path, rows: list[str], header: str = "sample\tdonor\ttimepoint\tarm\tsex\tpath") -> str:
    path = tmp_path / "samples.tsv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def _design(**changes) -> Design:
    config = default_config(design={"arm": "arm", "covariates": ["sex"]}, **changes)
    return Design.from_config(config)


TRIAL_ROWS = [
    f"D{d}_{t}\tD{d}\t{t}\t{'IL7' if d < 4 else 'placebo'}\t{'f' if d % 2 else 'm'}\tdata/D{d}_{t}"
    for d in range(8)
    for t in ("pre", "post")
]
TWO_ARMS = {
    "contrasts": [{"name": "diff", "reference": "pre", "treated": "post", "arm": "IL7", "versus_arm": "placebo"}]
}


def test_trial_sheet_support_counts_complete_donors_per_arm(tmp_path):
    sheet = load_sample_sheet(_trial_sheet(tmp_path, TRIAL_ROWS[:-1]), _design(**TWO_ARMS), check_files=False)
    support = contrast_support(sheet.samples, _design(**TWO_ARMS)).iloc[0]
    assert support["donors_per_arm"] == "IL7: 4; placebo: 3" and support["min_donors_per_arm"] == 3
    assert any("D7" in w and "excluded from paired tests" in w for w in sheet.warnings)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows: [rows[0].replace("\tIL7\t", "\tplacebo\t"), *rows[1:]], "is in two arms"),
        (lambda rows: [rows[0].replace("\tIL7\t", "\t\t"), *rows[1:]], "empty 'arm'"),
        (lambda rows: [rows[0].replace("\tm\t", "\t\t"), *rows[1:]], "empty covariate 'sex'"),
        (lambda rows: [r.replace("placebo", "PBO") for r in rows], "versus_arm 'placebo' but no sample"),
    ],
)
def test_bad_trial_sheet_is_refused_naming_the_line_and_a_fix(tmp_path, edit, message):
    with pytest.raises(InputError) as error:
        load_sample_sheet(_trial_sheet(tmp_path, edit(list(TRIAL_ROWS))), _design(**TWO_ARMS), check_files=False)
    text = str(error.value)
    assert message in text and "Fix:" in text and "samples.tsv" in text


def test_missing_arm_or_covariate_column_is_named(tmp_path):
    rows = ["\t".join(r.split("\t")[:3] + r.split("\t")[5:]) for r in TRIAL_ROWS]
    with pytest.raises(InputError) as error:
        load_sample_sheet(
            _trial_sheet(tmp_path, rows, "sample\tdonor\ttimepoint\tpath"), _design(**TWO_ARMS), check_files=False
        )
    assert "missing required column 'arm', named by config key `design.arm`" in str(error.value)
    assert "missing required column 'sex', named by config key `design.covariates`" in str(error.value)


def test_three_timepoints_two_contrasts_check_every_level(tmp_path):
    rows = [f"D{d}_{t}\tD{d}\t{t}\tIL7\tm\tdata/x{d}{t}" for d in range(4) for t in ("day0", "day7", "day28")]
    design = _design(
        contrasts=[
            {"name": "day7_vs_day0", "reference": "day0", "treated": "day7"},
            {"name": "day28_vs_day0", "reference": "day0", "treated": "day28"},
            {"name": "day90_vs_day0", "reference": "day0", "treated": "day90"},
        ]
    )
    sheet = load_sample_sheet(_trial_sheet(tmp_path, rows), design, check_files=False)
    assert not any("is in no contrast" in w for w in sheet.warnings)
    assert any("no sample has timepoint 'day90', so contrast day90_vs_day0" in w for w in sheet.warnings)
    support = contrast_support(sheet.samples, design).set_index("contrast")["n_donors"]
    assert support.to_dict() == {"day7_vs_day0": 4, "day28_vs_day0": 4, "day90_vs_day0": 0}
