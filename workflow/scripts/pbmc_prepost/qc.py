"""Per-sample cell QC: metrics, MAD thresholds, doublet calls and the per-barcode QC table.

Thresholds follow the single-cell best-practices book (Heumos et al. 2023) and Germain et al.
2020: per sample, a cell is an outlier when log1p(total counts), log1p(genes) or the share of the
top-20 genes lies more than ``nmads`` median absolute deviations (unscaled MAD, as in the book)
from the sample's median, or when its mitochondrial percentage lies more than ``nmads_mt`` MADs
above the median or above an absolute ceiling. Doublets are called per sample with scanpy's
Scrublet (Wolock et al. 2019) on the cells that pass the metric filters.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from pbmc_prepost.design import Study, cell_key
from pbmc_prepost.settings import QCSettings

log = logging.getLogger(__name__)

# Order in which failure reasons are listed in `fail_reason`.
FAIL_REASONS = ["low_counts", "high_counts", "low_genes", "high_genes", "top20_outlier", "high_pct_mt", "doublet"]
#: The threshold (key of :func:`metric_thresholds`) each metric filter applies, for the warnings.
FILTER_THRESHOLDS = {
    "low_counts": ("min_total_counts",),
    "high_counts": ("max_total_counts",),
    "low_genes": ("min_n_genes",),
    "high_genes": ("max_n_genes",),
    "top20_outlier": ("min_pct_top20", "max_pct_top20"),
    "high_pct_mt": ("max_pct_mt",),
}
CELL_TABLE_COLUMNS = (
    "sample barcode total_counts n_genes pct_mt pct_ribo pct_hb pct_top20 doublet_score predicted_doublet qc_pass "
    "fail_reason"
).split()


def mad_bounds(values: np.ndarray, nmads: float) -> tuple[float, float]:
    """Median -/+ ``nmads`` unscaled median absolute deviations.

    Parameters
    ----------
    values
        One QC metric of every cell of one sample.
    nmads
        How many MADs from the median a cell may lie.

    Returns
    -------
    tuple of float
        (lower, upper) bounds; a cell outside them is an outlier.
    """
    values = np.asarray(values, dtype=float)
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median)))
    return median - nmads * mad, median + nmads * mad


def add_qc_metrics(adata: ad.AnnData, settings: QCSettings) -> None:
    """Add scanpy QC metrics (mito, ribo, hb, top-20 share) to ``obs`` in place."""
    # Here, not at import: the Snakefile imports this module to build the DAG. Through
    # import_scanpy, so that the QC metrics' numba kernels are cached like Scrublet's.
    from pbmc_prepost.runtime import import_scanpy

    sc = import_scanpy()

    names = adata.var_names.to_series()
    adata.var["mt"] = names.str.contains(settings.mito_pattern, regex=True).to_numpy()
    adata.var["ribo"] = names.str.contains(settings.ribo_pattern, regex=True).to_numpy()
    adata.var["hb"] = names.str.contains(settings.hb_pattern, regex=True).to_numpy()
    if not adata.var["mt"].any():
        log.warning("no gene matches the mitochondrial pattern %r: pct_mt is 0 for every cell", settings.mito_pattern)
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt", "ribo", "hb"], percent_top=[20], log1p=True, inplace=True)


def metric_thresholds(obs: pd.DataFrame, settings: QCSettings) -> dict[str, float]:
    """Per-sample thresholds, in natural units, combining MAD bounds and absolute limits."""
    lo_counts, hi_counts = mad_bounds(obs["log1p_total_counts"], settings.nmads_counts)
    lo_genes, hi_genes = mad_bounds(obs["log1p_n_genes_by_counts"], settings.nmads_genes)
    lo_top, hi_top = mad_bounds(obs["pct_counts_in_top_20_genes"], settings.nmads_top20)
    _, hi_mt = mad_bounds(obs["pct_counts_mt"], settings.nmads_mt)
    return {
        "min_total_counts": max(float(np.expm1(lo_counts)), float(settings.min_counts)),
        "max_total_counts": float(np.expm1(hi_counts)),
        "min_n_genes": max(float(np.expm1(lo_genes)), float(settings.min_genes)),
        "max_n_genes": float(np.expm1(hi_genes)),
        "min_pct_top20": lo_top,
        "max_pct_top20": hi_top,
        "max_pct_mt": min(hi_mt, settings.max_pct_mt),
    }


def metric_failures(obs: pd.DataFrame, thresholds: dict[str, float]) -> pd.DataFrame:
    """Boolean frame, one column per metric filter, True where the cell fails it."""
    total, genes = obs["total_counts"], obs["n_genes_by_counts"]
    top = obs["pct_counts_in_top_20_genes"]
    return pd.DataFrame(
        {
            "low_counts": total < thresholds["min_total_counts"],
            "high_counts": total > thresholds["max_total_counts"],
            "low_genes": genes < thresholds["min_n_genes"],
            "high_genes": genes > thresholds["max_n_genes"],
            "top20_outlier": (top < thresholds["min_pct_top20"]) | (top > thresholds["max_pct_top20"]),
            "high_pct_mt": obs["pct_counts_mt"] > thresholds["max_pct_mt"],
        },
        index=obs.index,
    )


def filter_warnings(failures: pd.DataFrame, thresholds: dict[str, float], sample: str, max_share: float) -> list[str]:
    """One warning per metric filter that alone removes more than ``max_share`` of the barcodes.

    A filter that takes a large bite of one sample is usually a threshold that does not fit that
    sample (a fixed mitochondrial ceiling in a high-baseline batch) or a broken sample; either way
    the loss may differ between timepoints, so it is named (log, QC summary, report).
    """
    warnings = []
    for reason, keys in FILTER_THRESHOLDS.items():
        share = float(failures[reason].mean()) if len(failures) else 0.0
        if share > max_share:
            limits = ", ".join(f"{key} {thresholds[key]:.4g}" for key in keys)
            warnings.append(f"{reason} removes {100 * share:.1f} % of barcodes ({limits})")
            log.warning(
                "%s: the %s filter alone removes %.1f %% of barcodes (%s), more than qc.warn_share_removed "
                "%.0f %%: check that threshold for this sample (qc.sample_overrides)",
                sample,
                reason,
                100 * share,
                limits,
                100 * max_share,
            )
    return warnings


def call_doublets(adata: ad.AnnData, settings: QCSettings) -> tuple[pd.Series, pd.Series, float | None]:
    """Scrublet doublet scores and calls for the cells of one sample.

    Scrublet ranks cells well, but its automatic threshold (the minimum of the simulated doublets'
    bimodal score histogram) is unstable on channels of a few thousand cells. With
    ``doublet_call="expected_rate"`` (default) the cells with the highest scores are called, as
    many as ``expected_doublet_rate`` predicts, as DoubletFinder and scDblFinder do; with
    ``"scrublet"`` Scrublet's own threshold is used.

    Returns scores, calls (both indexed like ``adata.obs``) and the score threshold used. Samples
    with fewer than ``min_cells_for_doublets`` cells get NaN scores and no calls (logged).
    """
    from pbmc_prepost.runtime import import_scanpy

    sc = import_scanpy()

    scores = pd.Series(np.nan, index=adata.obs_names, dtype=float)
    calls = pd.Series(False, index=adata.obs_names, dtype=bool)
    if adata.n_obs < settings.min_cells_for_doublets:
        log.warning(
            "only %d cells passed the metric filters (< %d): doublet detection skipped",
            adata.n_obs,
            settings.min_cells_for_doublets,
        )
        return scores, calls, None
    work = ad.AnnData(
        X=adata.X.copy(), obs=pd.DataFrame(index=adata.obs_names), var=pd.DataFrame(index=adata.var_names)
    )
    n_comps = int(min(settings.n_prin_comps, work.n_obs - 1, work.n_vars - 1))
    sc.pp.scrublet(
        work,
        expected_doublet_rate=settings.expected_doublet_rate,
        sim_doublet_ratio=settings.sim_doublet_ratio,
        n_prin_comps=n_comps,
        mean_center=settings.mean_center,
        random_state=settings.seed,
        verbose=False,
        use_approx_neighbors=False,
    )
    values = work.obs["doublet_score"].to_numpy()
    scores[:] = values
    if settings.doublet_call == "expected_rate":
        n_expected = int(round(settings.expected_doublet_rate * len(values)))
        # Exactly n_expected cells; ties in score broken by position (stable sort), not at random.
        top = np.argsort(-values, kind="stable")[:n_expected]
        called = np.zeros(len(values), dtype=bool)
        called[top] = True
        calls[:] = called
        threshold = float(values[top].min()) if n_expected > 0 else np.inf
    else:
        threshold = work.uns["scrublet"].get("threshold")
        calls[:] = work.obs["predicted_doublet"].fillna(False).to_numpy().astype(bool)
    log.info(
        "doublets (%s): %d of %d cells called, score threshold %s",
        settings.doublet_call,
        int(calls.sum()),
        len(values),
        threshold,
    )
    return scores, calls, (float(threshold) if threshold is not None else None)


@dataclass
class SampleQC:
    """Result of :func:`run_sample_qc`."""

    filtered: ad.AnnData
    removed: ad.AnnData  # the barcodes QC removed (raw counts), for the QC bias check
    cells: pd.DataFrame
    summary: dict
    obs: pd.DataFrame  # every barcode's metrics, for plotting


def run_sample_qc(adata: ad.AnnData, sample: str, settings: QCSettings) -> SampleQC:
    """QC one sample: metrics, MAD thresholds, doublets, filtering.

    Parameters
    ----------
    adata
        Raw counts of every barcode of the sample (barcodes as ``obs_names``).
    sample
        Sample id, written to every row of the tables.
    settings
        Thresholds (already merged with this sample's overrides).

    Returns
    -------
    SampleQC
        ``filtered``: passing cells with raw counts in ``X``; ``removed``: the other barcodes, the
        same way, with ``fail_reason`` in obs; ``cells``: one row per input barcode
        (columns :data:`CELL_TABLE_COLUMNS`); ``summary``: cells in/out, cells failing each filter
        and the thresholds used.
    """
    adata = adata.copy()
    add_qc_metrics(adata, settings)
    obs = adata.obs
    thresholds = metric_thresholds(obs, settings)
    failures = metric_failures(obs, thresholds)
    warnings = filter_warnings(failures, thresholds, sample, settings.warn_share_removed)
    metric_pass = ~failures.any(axis=1)
    passing = adata[metric_pass.to_numpy()]
    scores, calls, doublet_threshold = call_doublets(passing, settings)
    obs["doublet_score"] = scores.reindex(obs.index)
    obs["predicted_doublet"] = calls.reindex(obs.index, fill_value=False).astype(bool)
    failures["doublet"] = obs["predicted_doublet"] & settings.remove_doublets
    qc_pass = ~failures.any(axis=1)
    reasons = failures[FAIL_REASONS]
    fail_reason = (
        reasons.apply(lambda row: ";".join(r for r, failed in row.items() if failed), axis=1)
        if len(reasons)
        else pd.Series([], dtype=str)
    )

    cells = pd.DataFrame(
        {
            "sample": sample,
            "barcode": obs.index.astype(str),
            "total_counts": obs["total_counts"].round().astype(np.int64).to_numpy(),
            "n_genes": obs["n_genes_by_counts"].astype(np.int64).to_numpy(),
            "pct_mt": obs["pct_counts_mt"].round(4).to_numpy(),
            "pct_ribo": obs["pct_counts_ribo"].round(4).to_numpy(),
            "pct_hb": obs["pct_counts_hb"].round(4).to_numpy(),
            "pct_top20": obs["pct_counts_in_top_20_genes"].round(4).to_numpy(),
            "doublet_score": obs["doublet_score"].round(6).to_numpy(),
            "predicted_doublet": obs["predicted_doublet"].to_numpy(),
            "qc_pass": qc_pass.to_numpy(),
            "fail_reason": fail_reason.to_numpy(),
        }
    )
    summary = {"sample": sample, "cells_in": int(adata.n_obs)}
    for reason in FAIL_REASONS:
        summary[f"failed_{reason}"] = int(failures[reason].sum())
    summary["cells_out"] = int(qc_pass.sum())
    summary["pct_removed"] = round(100.0 * (1 - qc_pass.mean()), 2) if adata.n_obs else 0.0
    summary.update({k: round(v, 4) for k, v in thresholds.items()})
    summary["doublet_score_threshold"] = round(doublet_threshold, 4) if doublet_threshold is not None else np.nan
    summary["expected_doublet_rate"] = settings.expected_doublet_rate
    summary["qc_warning"] = "; ".join(warnings)
    log.info(
        "%s: %d barcodes in, %d pass (%s)",
        sample,
        adata.n_obs,
        summary["cells_out"],
        ", ".join(f"{r}={summary[f'failed_{r}']}" for r in FAIL_REASONS),
    )

    keep_obs = [
        "barcode",
        "total_counts",
        "n_genes_by_counts",
        "pct_counts_mt",
        "pct_counts_ribo",
        "pct_counts_hb",
        "pct_counts_in_top_20_genes",
        "doublet_score",
    ]
    obs["fail_reason"] = fail_reason.to_numpy()
    obs["sample"] = sample

    def cells_of(mask: np.ndarray, columns: list[str]) -> ad.AnnData:
        part = adata[mask].copy()
        part.obs["barcode"] = part.obs_names.astype(str)
        part.obs_names = cell_key([sample] * part.n_obs, part.obs_names)
        part.obs = part.obs[columns].rename(columns={"n_genes_by_counts": "n_genes"})
        part.var = part.var[[c for c in ("gene_ids", "mt", "ribo", "hb") if c in part.var]]
        return part

    kept = qc_pass.to_numpy()
    return SampleQC(
        filtered=cells_of(kept, keep_obs),
        removed=cells_of(~kept, ["sample", *keep_obs, "fail_reason"]),
        cells=cells,
        summary=summary,
        obs=obs,
    )


def combine_samples(
    cell_tables: Sequence[str | Path], summaries: Sequence[str | Path], study: Study
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cohort's per-barcode table and per-sample summary from the per-sample QC outputs.

    The summary gets the study's metadata columns after ``sample``; the share removed per
    condition is logged, because unequal QC loss between timepoints is itself a warning sign.
    """
    from pbmc_prepost.tables import read_tsv

    cells = pd.concat(
        [
            read_tsv(
                path,
                dtype={"barcode": str, "fail_reason": str},
                keep_default_na=False,
                na_values={"doublet_score": [""]},
            )
            for path in cell_tables
        ],
        ignore_index=True,
    )
    cells["fail_reason"] = cells["fail_reason"].fillna("")
    summary = pd.concat([read_tsv(path) for path in summaries], ignore_index=True)
    if "qc_warning" in summary:
        summary["qc_warning"] = summary["qc_warning"].fillna("")
        for row in summary[summary["qc_warning"] != ""].itertuples():
            log.warning("%s: %s", row.sample, row.qc_warning)
    meta = study.sample_meta()
    for column in reversed(study.meta_columns):
        summary.insert(1, column, summary["sample"].map(meta[column]))
    condition = study.contrast.column
    by_condition = summary.groupby(condition)[["cells_in", "cells_out"]].sum()
    by_condition["pct_removed"] = 100 * (1 - by_condition["cells_out"] / by_condition["cells_in"])
    log.info("QC removal by %s:\n%s", condition, by_condition.round(2).to_string())
    return cells[CELL_TABLE_COLUMNS], summary
