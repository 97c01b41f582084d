# Shared set-up: config and sample-sheet validation (before any job runs), sample lookups,
# resource functions and the environment every job inherits.

import os
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from snakemake.exceptions import WorkflowError

PROJECT_DIR = Path(workflow.basedir)
sys.path.insert(0, str(PROJECT_DIR / "workflow" / "scripts"))

from pbmc_prepost import InputError, io as count_io  # noqa: E402
from pbmc_prepost.configuration import validate_config  # noqa: E402
from pbmc_prepost.qc import QCSettings  # noqa: E402
from pbmc_prepost.samplesheet import Contrast, format_warnings, load_sample_sheet  # noqa: E402

# numba compiles scanpy/pynndescent/UMAP kernels on first use in every new process; a persistent
# project-local cache lets each Snakemake job reuse what an earlier job compiled.
os.environ.setdefault("NUMBA_CACHE_DIR", str(PROJECT_DIR / ".cache" / "numba"))
os.environ.setdefault("MPLCONFIGDIR", str(PROJECT_DIR / ".cache" / "matplotlib"))

ENV = "../../envs/analysis.yaml"

try:
    config.update(validate_config(config, PROJECT_DIR / "workflow" / "schemas" / "config.schema.yaml"))
    CONTRAST = Contrast(**config["contrast"])
    SHEET = load_sample_sheet(config["samples"], CONTRAST, config["extra_sample_columns"])
except InputError as error:
    raise WorkflowError(str(error)) from None

for message in SHEET.warnings:
    logger.warning(f"WARNING {message}")



def project_path(path):
    """A config path as given when it exists from the run folder, else inside the project.

    Lets `snakemake --directory elsewhere` keep using the shipped resources (marker table ...).
    """
    if not path or Path(path).is_absolute() or Path(path).exists():
        return path
    return str(PROJECT_DIR / path)


config["annotation"]["marker_table"] = project_path(config["annotation"]["marker_table"])
config["annotation"]["overrides"] = project_path(config["annotation"]["overrides"])
config["enrichment"]["gmt"] = [project_path(path) for path in config["enrichment"]["gmt"]]
config["enrichment"]["set_metadata"] = project_path(config["enrichment"]["set_metadata"])

SAMPLES = list(SHEET.samples.index)
# Sheet columns carried into obs and tables, in this order.
META_COLUMNS = list(dict.fromkeys(
    [c for c in (CONTRAST.pair_by, CONTRAST.column, "batch") if c in SHEET.samples.columns]
    + list(config["extra_sample_columns"])
))
SAMPLE_META = SHEET.samples.reset_index()[["sample", *META_COLUMNS]].to_dict(orient="list")
RESOLUTION = config["clustering"]["default_resolution"]

wildcard_constraints:
    sample="|".join(SAMPLES),


def sample_row(wildcards):
    return SHEET.samples.loc[wildcards.sample]


def sample_input_files(wildcards):
    """Every file a sample's counts are read from, so that changing any of them reruns its QC."""
    row = sample_row(wildcards)
    if row["format"] == "10x_mtx":
        files = count_io.locate_mtx(row["resolved_path"])
        return [str(files.matrix), str(files.features), str(files.barcodes)]
    return [row["resolved_path"]]


def qc_settings(wildcards):
    """QC thresholds of one sample: the qc/doublets config plus that sample's overrides."""
    overrides = config["qc"]["sample_overrides"].get(wildcards.sample, {})
    return asdict(QCSettings.from_config(config["qc"], config["doublets"], config["seed"], overrides))


def scaled(base_mb, per_input_mb=0.0, per_attempt=0.5):
    """Memory (MB) from the input size, escalated by attempt and scaled by config resources.scale.

    The per-MB coefficients of the heavy rules are fitted to the peaks measured at 100k and 200k
    cells (docs/benchmarks.md): the first attempt declares at least 1.15x the measured peak.
    `python tools/benchmark/check_resources.py .benchmark-runs/workflow_*` compares them again.
    """

    def mem_mb(wildcards, input, attempt):
        grow = 1.0 + per_attempt * (attempt - 1)
        return int(config["resources"]["scale"] * grow * (base_mb + per_input_mb * input.size_mb))

    return mem_mb


def runtime_min(base_min, per_input_mb=0.0):
    """Runtime (minutes) from the input size, doubled on every retry."""

    def runtime(wildcards, input, attempt):
        return int(config["resources"]["scale"] * attempt * (base_min + per_input_mb * input.size_mb))

    return runtime


def annotation_overrides(wildcards=None):
    """The cluster -> cell type override table, when the user has one (an empty list otherwise)."""
    path = config["annotation"]["overrides"]
    return [path] if path and Path(path).exists() else []


def composition_figure(level, kind, caption):
    label = {"bars": "stacked bars per sample", "pairs": "per-donor proportions"}[kind]
    return report(
        f"results/figures/composition/{kind}_{level}.png",
        caption=f"../report/{caption}",
        category="4. Composition",
        labels={"level": level, "type": "figure", "result": label},
    )


def de_settings():
    de = config["de"]
    expr = de["filter_by_expr"]
    return {
        "level": de["level"],
        "min_cells": de["min_cells"],
        "min_counts": de["min_counts"],
        "min_pairs": de["min_pairs"],
        "filter_min_count": expr["min_count"],
        "filter_min_total_count": expr["min_total_count"],
        "filter_large_n": expr["large_n"],
        "filter_min_prop": expr["min_prop"],
        "alpha": de["alpha"],
        "use_batch": de["use_batch"],
        "n_cpus": 1,
        "seed": config["seed"],
    }


def de_group_summaries(wildcards):
    groups_file = checkpoints.pseudobulk_cells.get().output.groups
    files = pd.read_csv(groups_file, sep="\t", dtype=str)["file"]
    return expand("results/de/per_group/{group}.summary.tsv", group=files)


def de_group_tables(wildcards):
    groups_file = checkpoints.pseudobulk_cells.get().output.groups
    files = pd.read_csv(groups_file, sep="\t", dtype=str)["file"]
    return expand("results/de/{group}.tsv", group=files)
