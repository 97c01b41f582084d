# Shared set-up: config and sample-sheet validation (before any job runs), sample lookups,
# resource functions and the environment every job inherits.

import os
import sys
from pathlib import Path

import pandas as pd

from snakemake.exceptions import WorkflowError

# The project folder: two levels above this file (current_basedir, not basedir, so that the
# workflow also finds its package and resources when another workflow uses it as a module).
PROJECT_DIR = Path(str(workflow.current_basedir)).parents[1]
sys.path.insert(0, str(PROJECT_DIR / "workflow" / "scripts"))

from pbmc_prepost import InputError  # noqa: E402
from pbmc_prepost.configuration import validate_config  # noqa: E402
from pbmc_prepost.design import Design, Study  # noqa: E402
from pbmc_prepost.io import locate_mtx  # noqa: E402
from pbmc_prepost.runtime import pin_blas_kernels  # noqa: E402
from pbmc_prepost.samplesheet import load_sample_sheet  # noqa: E402
from pbmc_prepost.sheet_design import contrast_support  # noqa: E402
from pbmc_prepost.settings import build_settings  # noqa: E402

# numba compiles scanpy/pynndescent/UMAP kernels on first use in every new process; a persistent
# project-local cache lets each Snakemake job reuse what an earlier job compiled.
os.environ.setdefault("NUMBA_CACHE_DIR", str(PROJECT_DIR / ".cache" / "numba"))
os.environ.setdefault("MPLCONFIGDIR", str(PROJECT_DIR / ".cache" / "matplotlib"))
# One OpenBLAS kernel family on every x86-64 machine: same input, same tables (runtime.py).
pin_blas_kernels()

ENV = "../../envs/analysis.yaml"

CONFIG_WARNINGS = []
try:
    _validated = validate_config(
        config, PROJECT_DIR / "workflow" / "schemas" / "config.schema.yaml", warnings=CONFIG_WARNINGS
    )
    # Replaced in place, in the schema's key order: the old `contrast` block is gone (converted into
    # design/contrasts), and the same settings print the same way whatever file gave them.
    config.clear()
    config.update(_validated)
    DESIGN = Design.from_config(config)
    SHEET = load_sample_sheet(
        config["samples"],
        DESIGN,
        config["extra_sample_columns"],
        mito_pattern=config["qc"]["mito_pattern"],
        mito_overrides={
            sample: values["mito_pattern"]
            for sample, values in config["qc"]["sample_overrides"].items()
            if "mito_pattern" in values
        },
    )
    # CellBender's output is already corrected: it needs no raw droplets.
    _no_raw = list(
        SHEET.samples.index[(SHEET.samples["resolved_raw_path"] == "") & (SHEET.samples["format"] != "cellbender_h5")]
    )
    if config["ambient"]["method"] == "raw_droplets" and _no_raw:
        raise InputError(
            f"{config['samples']}: ambient.method is raw_droplets, but {len(_no_raw)} sample(s) have no "
            f"raw_path ({', '.join(_no_raw[:5])}{' ...' if len(_no_raw) > 5 else ''}): give each its Cell "
            "Ranger raw_feature_bc_matrix in column raw_path, or set ambient.method: auto"
        )
except InputError as error:
    raise WorkflowError(str(error)) from None

for message in CONFIG_WARNINGS + SHEET.warnings:
    logger.warning(f"WARNING {message}")

# What each contrast rests on; one with fewer complete donors per arm than de.min_pairs is skipped
# (results/provenance/contrasts.tsv says why) and the others run. A one-arm contrast without any
# donor pair keeps the unpaired fallback of every stage, as before; a two-arm one cannot.
CONTRAST_SUPPORT = contrast_support(SHEET.samples, DESIGN)
CONTRAST_SUPPORT["status"] = "run"
CONTRAST_SUPPORT["reason"] = ""
_two_arm = pd.Series([c.is_interaction for c in DESIGN.contrasts], index=CONTRAST_SUPPORT.index)
_fewest = CONTRAST_SUPPORT["min_donors_per_arm"]
_too_few = (_fewest < config["de"]["min_pairs"]) & ((_fewest > 0) | _two_arm)
CONTRAST_SUPPORT.loc[_too_few, "status"] = "skipped"
CONTRAST_SUPPORT.loc[_too_few, "reason"] = [
    f"fewer complete donors per arm ({text}) than de.min_pairs {config['de']['min_pairs']}"
    for text in CONTRAST_SUPPORT.loc[_too_few, "donors_per_arm"]
]
for row in CONTRAST_SUPPORT.itertuples():
    if row.status == "skipped":
        logger.warning(f"WARNING contrast {row.contrast} ({row.description}) is skipped: {row.reason}")
    else:
        logger.info(
            f"contrast {row.contrast}: {row.description}; rests on {row.n_donors} donors ({row.donors_per_arm})"
        )
if _too_few.all():
    raise WorkflowError(
        f"{config['samples']}: no contrast rests on at least de.min_pairs = {config['de']['min_pairs']} complete "
        "donors per arm. Fix: add the donors' missing samples, lower de.min_pairs, or check the contrasts' "
        "levels and arms against the sheet."
    )
DESIGN = DESIGN.select(CONTRAST_SUPPORT.loc[~_too_few, "contrast"])
CONTRASTS = DESIGN.names


def project_path(path):
    """A config path as given when it exists from the run folder, else inside the project.

    Lets `snakemake --directory elsewhere` keep using the shipped resources (marker table ...).
    """
    if not path or Path(path).is_absolute() or Path(path).exists():
        return path
    return str(PROJECT_DIR / path)


config["annotation"]["marker_table"] = project_path(config["annotation"]["marker_table"])
config["ambient"]["gene_families"] = project_path(config["ambient"]["gene_families"])
config["annotation"]["consistency_checks"] = project_path(config["annotation"]["consistency_checks"])
config["annotation"]["overrides"] = project_path(config["annotation"]["overrides"])
config["enrichment"]["gmt"] = [project_path(path) for path in config["enrichment"]["gmt"]]
config["enrichment"]["set_metadata"] = project_path(config["enrichment"]["set_metadata"])

SAMPLES = list(SHEET.samples.index)
# Every rule family's settings, built once from the validated config and the sheet; each rule
# passes its family's settings as its one `settings` parameter.
SETTINGS = build_settings(config, Study.from_sheet(SHEET.samples, DESIGN, config["extra_sample_columns"]))


wildcard_constraints:
    sample="|".join(SAMPLES),
    contrast="|".join(CONTRASTS),


def sample_row(wildcards):
    return SHEET.samples.loc[wildcards.sample]


def sample_input_files(wildcards):
    """Every file a sample's counts (and raw droplets, when used) are read from, so that changing
    any of them reruns its QC."""
    row = sample_row(wildcards)
    paths = [row["resolved_path"]]
    if row["resolved_raw_path"] and config["ambient"]["method"] in ("auto", "raw_droplets"):
        paths.append(row["resolved_raw_path"])
    files = []
    for path in paths:
        if os.path.isdir(path) or path.endswith((".mtx", ".mtx.gz")):
            found = locate_mtx(path)
            files += [str(found.matrix), str(found.features), str(found.barcodes)]
        else:
            files.append(path)
    return files


def qc_settings(wildcards):
    """QC thresholds of one sample: the qc/doublets config plus that sample's overrides."""
    return SETTINGS.qc(wildcards.sample)


# On a cluster the job runs Snakemake itself beside the rule's script, and the job's memory limit
# counts both: measured on the test SLURM, a QC job whose script peaks at 430 MB took 944 MB.
# The per-rule figures below are the scripts' own peaks (Snakemake's benchmark files).
SNAKEMAKE_IN_JOB_MB = 500


def scaled(base_mb, per_input_mb=0.0):
    """Memory (MB) from the input size, scaled by config resources.scale and grown on every retry
    by resources.retry_growth times the first attempt's.

    The per-MB coefficients of the heavy rules are fitted to the peaks measured at 100k and 860k
    cells (docs/benchmarks.md): the first attempt declares at least 1.15x the measured peak. The
    merged-stage steps that stream their matrices (merge, assemble, markers, annotation,
    pseudobulk, figures) grow with the cells' obs and graph, not with the file they read.
    `python tools/benchmark/check_resources.py .benchmark-runs/workflow_*` compares them again.
    """

    def mem_mb(wildcards, input, attempt):
        grow = 1.0 + config["resources"]["retry_growth"] * (attempt - 1)
        need = SNAKEMAKE_IN_JOB_MB + base_mb + per_input_mb * input.size_mb
        return int(config["resources"]["scale"] * grow * need)

    return mem_mb


def runtime_min(base_min, per_input_mb=0.0):
    """Runtime (minutes) from the input size, doubled on every retry.

    The per-MB coefficients of the merged stage are fitted to the 860k-cell run (2 cores): the
    first attempt declares 3x or more the measured time, never hours for minutes of work (a long
    request waits longer in a SLURM queue and cannot be backfilled)."""

    def runtime(wildcards, input, attempt):
        return max(1, int(config["resources"]["scale"] * attempt * (base_min + per_input_mb * input.size_mb)))

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


def de_population_files(wildcards):
    """Safe file names of the populations at de.level, known once the checkpoint has run."""
    table = checkpoints.pseudobulk_cells.get().output.populations
    return list(pd.read_csv(table, sep="\t", dtype=str)["file"])


def de_summaries(wildcards):
    return expand(
        "results/de/per_population/{contrast}/{population}.summary.tsv",
        contrast=CONTRASTS,
        population=de_population_files(wildcards),
    )


def de_tables(wildcards):
    return expand(
        "results/de/{contrast}/{population}.tsv", contrast=CONTRASTS, population=de_population_files(wildcards)
    )


def per_contrast(pattern, caption=None, category=None, labels=None):
    """One path per contrast (config order), other wildcards kept; with a caption, each path is in
    the report under its contrast's subcategory (the subcategory names the contrast, so the labels
    need not: a label shared by every row changes how the report lays its table out)."""
    paths = []
    for name in CONTRASTS:
        path = pattern.replace("{contrast}", name)
        if caption is not None:
            path = report(
                path,
                caption=caption,
                category=category,
                subcategory=name,
                labels=labels or {},
            )
        paths.append(path)
    return paths
