"""A collaborator adds a new donor's two samples and reruns: only what depends on them runs again."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace

import pandas as pd
import pytest

from pbmc_prepost.simulation import PRESETS, simulate, write_sample

from conftest import run_snakemake

pytestmark = pytest.mark.workflow


def planned_jobs(dry_run_output: str) -> dict[str, int]:
    """Job counts from the 'Job stats' table of a dry run."""
    table = dry_run_output.split("Job stats:", 1)[1]
    return {
        m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M) if m.group(1) != "total"
    }


def test_adding_a_donor_reruns_only_its_samples_and_the_merged_stage(example_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(example_run, workdir, symlinks=True)  # copy2 keeps modification times
    sheet = pd.read_csv(workdir / "samples.tsv", sep="\t", dtype=str, keep_default_na=False)
    old_samples = list(sheet["sample"])

    # Donor 6 of the same simulated cohort: D1-D5 are identical to the example, D6 is new.
    data = simulate(replace(PRESETS["example"], n_donors=6))
    rows = []
    for sample in ("D6_pre", "D6_post"):
        path, fmt, layer = write_sample(data.samples[sample], tmp_path / "new_data", sample, "10x_h5")
        rows.append(
            {
                "sample": sample,
                "donor": "D6",
                "timepoint": sample.split("_")[1],
                "batch": "",
                "path": str(path),
                "format": fmt,
                "counts_layer": layer,
            }
        )
    sheet = pd.concat([sheet, pd.DataFrame(rows)], ignore_index=True)
    sheet.to_csv(workdir / "samples.tsv", sep="\t", index=False)

    per_sample_outputs = [
        workdir / "results" / "qc" / f"{s}{suffix}"
        for s in old_samples
        for suffix in (".h5ad", ".cells.tsv.gz", ".summary.tsv")
    ]
    before = {p: p.stat().st_mtime_ns for p in per_sample_outputs}

    config = ["--config", f"samples={workdir / 'samples.tsv'}"]
    dry = run_snakemake(workdir, *config, "-n")
    jobs = planned_jobs(dry.stdout)
    assert jobs["qc_sample"] == 2, jobs
    assert jobs["aggregate_qc"] == 1 and jobs["merge_samples"] == 1 and jobs["embed_cells"] == 1, jobs

    # Run up to the clustering (the dry run above showed the whole plan): the new samples' QC, the
    # merge and the embedding, without the annotation, DE and enrichment that would follow.
    targets = ("results/qc/cells.tsv.gz", "results/clustering/clusters.tsv.gz")
    run_snakemake(workdir, *targets, *config)
    after = {p: p.stat().st_mtime_ns for p in per_sample_outputs}
    assert after == before, "per-sample outputs of the existing samples were rewritten"
    cells = pd.read_csv(workdir / "results" / "qc" / "cells.tsv.gz", sep="\t", usecols=["sample"])
    assert {"D6_pre", "D6_post"} <= set(cells["sample"])
    clusters = pd.read_csv(workdir / "results" / "clustering" / "clusters.tsv.gz", sep="\t", usecols=["sample"])
    assert {"D6_pre", "D6_post"} <= set(clusters["sample"])
    assert "Nothing to be done" in run_snakemake(workdir, *targets, *config, "-n").stdout
