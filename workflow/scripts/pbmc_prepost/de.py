"""Condition DE per population: paired DESeq2 on pseudobulks, donor in the design.

pyDESeq2 (Muzellec et al. 2023) tests ``treated`` against ``reference`` on the pseudobulks of one
population (:mod:`pbmc_prepost.pseudobulk`) with the donor as a blocking factor
(``~donor + timepoint``), so every donor is its own control (Squair et al. 2021; Crowell et al.
2020). Genes are filtered with edgeR's ``filterByExpr`` rule (decoupler). When no donor has both
timepoints the design falls back to an unpaired one and says so in the design note; a batch
enters only where it is estimable.

Callers need per-pseudobulk ``obs`` columns: ``n_cells``, ``total_counts``, the contrast column,
optionally the pairing column and a batch column.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from pbmc_prepost.de_design import choose_design
from pbmc_prepost.design import Contrast, safe_names
from pbmc_prepost.pseudobulk import pseudobulk_for_contrast
from pbmc_prepost.settings import DESettings

log = logging.getLogger(__name__)

#: Columns of every per-population results table, in this order.
RESULT_COLUMNS = ["gene", "baseMean", "log2FoldChange", "lfcSE", "stat", "pvalue", "padj"]
#: Columns of the per-population summary table (``note`` is the human-readable design sentence).
SUMMARY_COLUMNS = (
    "population n_pairs n_samples n_cells n_genes_tested n_up n_down design paired status reason note".split()
)


def _filter_by_expr(counts: pd.DataFrame, groups: pd.Series, settings: DESettings) -> list[str]:
    """Genes kept by edgeR's filterByExpr (decoupler's implementation), group = condition."""
    import decoupler as dc

    data = ad.AnnData(
        X=counts.to_numpy(dtype=np.float64),
        obs=pd.DataFrame({"group": groups.to_numpy()}, index=counts.index),
        var=pd.DataFrame(index=counts.columns),
    )
    genes = dc.pp.filter_by_expr(
        data,
        group="group",
        min_count=settings.filter_min_count,
        min_total_count=settings.filter_min_total_count,
        large_n=settings.filter_large_n,
        min_prop=settings.filter_min_prop,
        inplace=False,
    )
    return list(genes)


def _group_label(pb_group: ad.AnnData, level: str) -> str:
    if level in pb_group.obs.columns:
        values = pb_group.obs[level].astype(str).unique()
        if len(values) == 1:
            return str(values[0])
        if len(values) > 1:
            raise ValueError(f"fit_population: pseudobulks of several populations given ({sorted(values)[:5]})")
    return "all"


def _summary(label: str, **values) -> dict:
    row = {
        "population": label,
        "n_pairs": 0,
        "n_samples": 0,
        "n_cells": 0,
        "n_genes_tested": 0,
        "n_up": 0,
        "n_down": 0,
        "design": "",
        "paired": False,
        "status": "skipped",
        "reason": "",
        "note": "",
    }
    row.update(values)
    return row


def fit_population(
    pb_group: ad.AnnData, settings: DESettings, batch_col: str | None = "batch"
) -> tuple[pd.DataFrame | None, dict]:
    """Pseudobulk DE of one population, treated vs reference, with pyDESeq2.

    Steps: drop pseudobulks below ``min_cells``/``min_counts``; keep the two contrast levels;
    :func:`choose_design`; skip when complete pairs < ``min_pairs`` (unpaired fallback: either
    level has < ``min_pairs`` samples); filterByExpr with the condition as group; DESeq2 Wald
    test of ``treated`` vs ``reference``.

    Parameters
    ----------
    pb_group
        Pseudobulks of one population (:func:`pbmc_prepost.pseudobulk.pseudobulk`): X = summed
        counts, obs with ``n_cells``, ``total_counts``, the contrast column, optionally
        pairing/batch columns.
    settings
        DE settings: the contrast (levels and pairing column); ``level`` names the obs column
        holding the population label.
    batch_col
        Batch column (None: no batch).

    Returns
    -------
    tuple
        (results table or None when skipped, summary dict). The table has columns
        :data:`RESULT_COLUMNS`, sorted by pvalue (NaN last); NaN padj (independent filtering,
        Cooks outliers) stays NaN. The summary has the keys of :data:`SUMMARY_COLUMNS`:
        ``design`` is the formula, ``note`` the design sentence, ``reason`` why it was skipped.
    """
    label = _group_label(pb_group, settings.level)
    contrast = settings.contrast
    obs = pb_group.obs
    for column in ("n_cells", "total_counts", contrast.column):
        if column not in obs.columns:
            raise ValueError(f"fit_population: pseudobulk obs lacks '{column}' (build it with pseudobulk())")
    in_contrast = contrast.sample_mask(obs)
    big_cells = (obs["n_cells"] >= settings.min_cells).to_numpy()
    big = big_cells & (obs["total_counts"] >= settings.min_counts).to_numpy()
    if not (in_contrast & big_cells).any():
        reason = f"no pseudobulk with >= {settings.min_cells} cells"
        return None, _summary(label, reason=reason, note=reason)
    if not (in_contrast & big).any():
        reason = f"no pseudobulk with >= {settings.min_cells} cells and >= {settings.min_counts} counts"
        return None, _summary(label, reason=reason, note=reason)
    kept = pb_group[in_contrast & big]
    design = choose_design(kept.obs, contrast, batch_col, settings.use_batch)
    used = kept[design.samples]
    meta = used.obs
    n_by_level = meta[contrast.column].astype(str).value_counts()
    n_ref = int(n_by_level.get(contrast.reference, 0))
    n_trt = int(n_by_level.get(contrast.treated, 0))
    base = dict(
        n_pairs=design.n_pairs,
        n_samples=used.n_obs,
        n_cells=int(meta["n_cells"].sum()),
        design=design.formula,
        paired=design.paired,
        note=design.note,
    )
    if contrast.is_interaction:
        pairs_per_arm = contrast.pairs_per_arm(meta) if design.paired else dict.fromkeys(contrast.arms, 0)
        if min(pairs_per_arm.values()) < settings.min_pairs:
            text = ", ".join(f"{n} {arm}" for arm, n in pairs_per_arm.items())
            reason = f"complete {contrast.pair_by} pairs per arm ({text}) < min_pairs {settings.min_pairs}"
            return None, _summary(label, reason=reason, **base)
    if design.paired and design.n_pairs < settings.min_pairs:
        reason = f"{design.n_pairs} complete {contrast.pair_by} pairs < min_pairs {settings.min_pairs}"
        return None, _summary(label, reason=reason, **base)
    if not design.paired and (min(n_ref, n_trt) < max(settings.min_pairs, 1)):
        reason = (
            f"unpaired: {n_ref} {contrast.reference} / {n_trt} {contrast.treated} samples "
            f"< min_pairs {settings.min_pairs}"
        )
        return None, _summary(label, reason=reason, **base)
    if design.df_residual < 1:
        return None, _summary(label, reason=f"no residual degrees of freedom for {design.formula}", **base)

    metadata = design.metadata(kept.obs)
    # pyDESeq2 wants integers; sums of integer counts are integers, rounding only guards floats.
    counts = pd.DataFrame(
        np.rint(np.asarray(used.X, dtype=np.float64)).astype(np.int64),
        index=metadata.index,
        columns=used.var_names.astype(str),
    )
    cond = next(clean for clean, orig in design.columns.items() if orig == contrast.column)
    groups = metadata[cond]
    if contrast.is_interaction:  # filterByExpr's smallest group: one arm at one timepoint
        groups = groups + "_" + meta[contrast.arm_column].astype(str).to_numpy()
    genes = _filter_by_expr(counts, groups, settings)
    if not genes:
        return None, _summary(label, reason="no gene passes filterByExpr", **base)
    counts = counts[genes]

    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.default_inference import DefaultInference
    from pydeseq2.ds import DeseqStats

    np.random.seed(settings.seed)  # noqa: NPY002 (pyDESeq2 draws from numpy's global generator)
    inference = DefaultInference(n_cpus=settings.n_cpus)
    dds = DeseqDataSet(
        counts=counts, metadata=metadata, design=design.formula, refit_cooks=True, inference=inference, quiet=True
    )
    dds.deseq2()
    stats = DeseqStats(
        dds,
        contrast=list(design.tested),
        alpha=settings.alpha,
        inference=inference,
        quiet=True,
    )
    stats.summary()
    table = stats.results_df.copy()
    table.insert(0, "gene", table.index.astype(str))
    table = table[RESULT_COLUMNS].sort_values(["pvalue", "gene"], na_position="last", kind="mergesort")
    table = table.reset_index(drop=True)
    significant = table["padj"] < settings.alpha
    summary = _summary(
        label,
        status="tested",
        n_genes_tested=len(genes),
        n_up=int((significant & (table["log2FoldChange"] > 0)).sum()),
        n_down=int((significant & (table["log2FoldChange"] < 0)).sum()),
        **base,
    )
    return table, summary


def fit_all_populations(
    adata: ad.AnnData, settings: DESettings, sample_col: str = "sample", batch_col: str | None = "batch"
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Pseudobulk DE of every population at ``settings.level``.

    Parameters
    ----------
    adata
        Annotated cells: raw counts in ``layers["counts"]``; obs with ``sample_col``,
        ``settings.level``, the contrast column and, if present, the pairing and batch columns.
    settings
        DE settings (the contrast's pairing column missing from obs -> unpaired fallback).
    sample_col
        obs column naming the sample.
    batch_col
        obs column with the batch (None or missing: no batch).

    Returns
    -------
    tuple
        ({population: results table} for tested populations, summary DataFrame with one row per
        population in sorted label order and columns :data:`SUMMARY_COLUMNS`).
    """
    pb = pseudobulk_for_contrast(adata, settings, sample_col=sample_col, batch_col=batch_col)
    batch = batch_col if batch_col and batch_col in pb.obs.columns else None
    tables: dict[str, pd.DataFrame] = {}
    rows = []
    labels = sorted(adata.obs[settings.level].astype(str).unique())
    group_of = pb.obs[settings.level].astype(str).to_numpy()
    for label in labels:
        table, summary = fit_population(pb[group_of == label].copy(), settings, batch_col=batch)
        summary["population"] = label
        rows.append(summary)
        if table is not None:
            tables[label] = table
        log.info("%s: %s %s", label, summary["status"], summary["reason"] or summary["note"])
    return tables, pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def fit_population_table(
    pb_group: ad.AnnData, label: str, settings: DESettings, batch_col: str | None = "batch"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`fit_population` as the workflow writes it: the results table (empty, with its
    columns, when the population was skipped) and a one-row summary naming contrast, population
    and level."""
    table, summary = fit_population(pb_group, settings, batch_col=batch_col)
    summary.update(population=label, level=settings.level)
    frame = pd.DataFrame([summary])
    frame.insert(0, "contrast", settings.contrast.name)
    return (table if table is not None else pd.DataFrame(columns=RESULT_COLUMNS)), frame


def contrast_pseudobulks(pb_group: ad.AnnData, contrast: Contrast) -> ad.AnnData:
    """The pseudobulks a contrast uses: its two levels, and its arms when it names any."""
    return pb_group[contrast.sample_mask(pb_group.obs)].copy()


def combine_summaries(
    paths: Sequence[str | Path], annotation_notes: dict[str, str] | None = None, contrasts: Sequence[str] = ()
) -> pd.DataFrame:
    """The per-population summaries of one run in one table, ``contrast`` and ``level`` first,
    contrasts in config order, populations sorted; the note of a population whose annotation is
    flagged says so."""
    summary = pd.concat([pd.read_csv(path, sep="\t", keep_default_na=False) for path in paths], ignore_index=True)
    order = {name: i for i, name in enumerate(contrasts)}
    summary = summary.assign(_order=summary["contrast"].map(order).fillna(len(order)))
    summary = summary.sort_values(["_order", "population"], kind="mergesort").drop(columns="_order")
    notes = annotation_notes or {}
    summary["note"] = [
        f"{note}; {notes[p]}" if p in notes else note for p, note in zip(summary["population"], summary["note"])
    ]
    return summary[["contrast", "level", *[c for c in SUMMARY_COLUMNS if c in summary.columns]]].reset_index(drop=True)


def read_population_tables(summary: pd.DataFrame, paths: Sequence[str | Path]) -> dict[tuple[str, str], pd.DataFrame]:
    """The DE tables of the tested (contrast, population) rows of ``summary``, found among ``paths``
    (``results/de/<contrast>/<population>.tsv``) by contrast folder and safe name."""
    names = safe_names(summary["population"])
    path_of = {(Path(path).parent.name, Path(path).stem): path for path in paths}
    tested = summary.loc[summary["status"] == "tested", ["contrast", "population"]]
    return {
        (name, label): pd.read_csv(path_of[(name, names[label])], sep="\t")
        for name, label in tested.itertuples(index=False)
    }
