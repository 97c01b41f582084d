"""Another workflow uses this one as a Snakemake module (`module ...; use rule * from ... as pbmc_*`).

The outer workflow lives in a folder of its own and only names this project's Snakefile: the
package, resources and rule scripts must be found from the module's folder, the checkpoint must
work under renamed rules, and the outputs land in the outer workflow's folder.
"""

from __future__ import annotations

import subprocess

import pandas as pd
import pytest

from pbmc_prepost.simulation import PRESETS, simulate

from conftest import ROOT, SNAKEMAKE, SNAKEMAKE_ENV, write_cohort

pytestmark = pytest.mark.workflow

OUTER = """\
configfile: "{root}/config/config.yaml"

config["samples"] = "{sheet}"


module pbmc_prepost:
    snakefile:
        "{root}/Snakefile"
    config:
        config


use rule * from pbmc_prepost as pbmc_*
"""


@pytest.fixture(scope="module")
def module_run(tmp_path_factory):
    outer = tmp_path_factory.mktemp("outer_workflow")
    sheet = write_cohort(simulate(PRESETS["tiny"]), outer / "cohort")
    (outer / "Snakefile").write_text(OUTER.format(root=ROOT, sheet=sheet))
    command = [str(SNAKEMAKE), "--cores", "2"]
    result = subprocess.run(command, cwd=outer, env=SNAKEMAKE_ENV, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-6000:]
    return outer, result


def test_every_rule_ran_under_its_prefixed_name(module_run):
    _, result = module_run
    for rule in ("qc_sample", "merge_samples", "pseudobulk_cells", "fit_de", "enrich_de", "summarize_study"):
        assert f"pbmc_{rule}" in result.stderr, rule


def test_outputs_land_in_the_outer_workflow(module_run):
    outer, _ = module_run
    summary = pd.read_csv(outer / "results" / "de" / "summary.tsv", sep="\t")
    tested = summary[summary["status"] == "tested"]
    assert len(tested) >= 3 and (tested["n_pairs"] == 3).all()
    gsea = pd.read_csv(outer / "results" / "enrichment" / "gsea.tsv", sep="\t")
    assert set(tested["population"]) == set(gsea["population"])
    assert (outer / "results" / "figures" / "summary.png").stat().st_size > 10_000
    dry = subprocess.run(
        [str(SNAKEMAKE), "-n", "--cores", "2"],
        cwd=outer,
        env=SNAKEMAKE_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Nothing to be done" in dry.stdout + dry.stderr
