"""What produced a run: the resolved config, the gene sets and the installed software versions."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

import pandas as pd
import yaml


def write_config(config: Mapping[str, Any], path: str | Path) -> None:
    """The run's configuration, every default filled in, as YAML with a header line."""
    Path(path).write_text(
        "# Configuration of this run, every default filled in (config/config.yaml + "
        "command-line overrides).\n" + yaml.safe_dump(dict(config), sort_keys=False)
    )


def concatenate_gene_sets(gmt_paths: Sequence[str | Path], path: str | Path) -> None:
    """Every GMT file of the run in one file, each introduced by a ``# <path>`` line."""
    with open(path, "w") as out:
        for gmt in gmt_paths:
            out.write(f"# {gmt}\n")
            out.write(Path(gmt).read_text())


def software_versions() -> pd.DataFrame:
    """``package``, ``version`` of Python and of every installed distribution, sorted by name."""
    versions = sorted((d.metadata["Name"], d.version) for d in distributions())
    frame = pd.DataFrame(versions, columns=["package", "version"]).drop_duplicates("package")
    first = [{"package": "python", "version": sys.version.split()[0]}, *blas_kernels()]
    return pd.concat([pd.DataFrame(first), frame])


def blas_kernels() -> list[dict[str, str]]:
    """The BLAS libraries loaded and the kernel family each runs (``OPENBLAS_CORETYPE``), as rows
    ``package`` (e.g. ``blas:openblas``), ``version`` (e.g. ``0.3.29 Haswell``)."""
    import numpy  # noqa: F401 (loads numpy's BLAS)
    import scipy.linalg  # noqa: F401 (and scipy's)
    from threadpoolctl import threadpool_info

    rows = {}
    for library in threadpool_info():
        if library.get("user_api") == "blas":
            rows[f"blas:{library['internal_api']}"] = f"{library.get('version')} {library.get('architecture')}"
    return [{"package": name, "version": value} for name, value in sorted(rows.items())]


FALLBACK_COLUMNS = ["step", "subject", "fallback", "reason"]


def fallbacks(
    qc_summary: pd.DataFrame,
    hvg_batches: pd.DataFrame,
    markers_untested: pd.DataFrame,
    min_cells_per_sample: int = 1,
) -> pd.DataFrame:
    """Every place where a step could not run as configured and fell back, one row each.

    Samples without doublet calls (too few cells passed the metric filters), samples left out of
    the merged stage (fewer cells than ``min_cells_per_sample`` after QC), HVG batches that could
    not be fitted on their own, and clusters too small for marker tests. Populations or gene sets
    that were not tested are in the DE summary and the enrichment tables with their reasons.
    """
    rows = [
        {
            "step": "qc_sample",
            "subject": row.sample,
            "fallback": "no doublet calls",
            "reason": "too few cells passed the metric filters for Scrublet (doublets.min_cells)",
        }
        for row in qc_summary.itertuples()
        if pd.isna(row.doublet_score_threshold)
    ]
    rows += [
        {
            "step": "merge_samples",
            "subject": row.sample,
            "fallback": "sample left out of the merged stage and every test",
            "reason": f"{row.cells_out} cells passed QC, fewer than merge.min_cells_per_sample {min_cells_per_sample}",
        }
        for row in qc_summary.itertuples()
        if row.cells_out < min_cells_per_sample
    ]
    rows += [
        {"step": "embed_cells", "subject": row.batch, "fallback": f"HVG ranking: {row.status}", "reason": row.detail}
        for row in hvg_batches.itertuples()
        if row.status != "own" and row.detail != "no batch key"
    ]
    rows += [
        {
            "step": "find_cluster_markers",
            "subject": f"cluster {row.cluster}",
            "fallback": "no marker test",
            "reason": f"{row.n_cells} cells: {row.reason}",
        }
        for row in markers_untested.itertuples()
    ]
    return pd.DataFrame(rows, columns=FALLBACK_COLUMNS)
