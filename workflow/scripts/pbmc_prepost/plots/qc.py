"""Figures of the per-sample QC: metric histograms with thresholds, and the cohort summary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pbmc_prepost.plots import TIMEPOINT_COLOURS, palette, plt, save


def qc_sample_figure(
    obs: pd.DataFrame,
    thresholds: Mapping[str, float],
    doublet_threshold: float | None,
    qc_pass: np.ndarray,
    title: str,
    paths: Sequence[str | Path],
) -> None:
    """Histograms of one sample's QC metrics with the thresholds drawn as dashed lines."""
    panels = [
        ("total_counts", "UMIs per cell (log10)", True, thresholds["min_total_counts"], thresholds["max_total_counts"]),
        ("n_genes_by_counts", "genes per cell (log10)", True, thresholds["min_n_genes"], thresholds["max_n_genes"]),
        ("pct_counts_mt", "mitochondrial %", False, None, thresholds["max_pct_mt"]),
        (
            "pct_counts_in_top_20_genes",
            "top-20 genes share %",
            False,
            thresholds["min_pct_top20"],
            thresholds["max_pct_top20"],
        ),
        ("doublet_score", "Scrublet doublet score", False, None, doublet_threshold),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0))
    for ax, (column, label, log10, low, high) in zip(axes, panels):
        values = obs[column].to_numpy(dtype=float)
        finite = np.isfinite(values)
        if log10:
            values = np.log10(np.maximum(values, 1))
            low = np.log10(max(low, 1)) if low is not None else None
            high = np.log10(max(high, 1)) if high is not None else None
        if finite.any():
            bins = np.linspace(np.nanmin(values[finite]), np.nanmax(values[finite]) + 1e-9, 50)
            ax.hist(values[finite & qc_pass], bins=bins, color="#4C72B0", alpha=0.8, label="kept")
            ax.hist(values[finite & ~qc_pass], bins=bins, color="#C44E52", alpha=0.7, label="removed")
        for bound in (low, high):
            if bound is not None and np.isfinite(bound):
                ax.axvline(bound, color="black", linestyle="--", linewidth=1)
        ax.set_xlabel(label)
        ax.set_ylabel("cells")
    axes[0].legend(frameon=False, fontsize=8)
    fig.suptitle(f"{title}: {int(qc_pass.sum())} of {len(qc_pass)} barcodes kept", fontsize=10)
    fig.tight_layout()
    save(fig, paths)


def qc_summary_figure(
    summary: pd.DataFrame, reasons: Sequence[str], contrast_column: str, paths: Sequence[str | Path]
) -> None:
    """Cells kept and cells failing each filter, per sample, grouped by timepoint."""
    table = summary.sort_values([contrast_column, "sample"]).reset_index(drop=True)
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.55 * len(table) + 4), 4), gridspec_kw={"width_ratios": [1, 1]})
    x = np.arange(len(table))
    levels = list(dict.fromkeys(table[contrast_column]))
    colours = {lvl: TIMEPOINT_COLOURS[i % len(TIMEPOINT_COLOURS)] for i, lvl in enumerate(levels)}
    axes[0].bar(x, table["cells_out"], color=[colours[v] for v in table[contrast_column]])
    axes[0].set_ylabel("cells kept")
    axes[0].set_title("cells passing QC")
    for lvl in levels:
        axes[0].bar([], [], color=colours[lvl], label=lvl)
    axes[0].legend(frameon=False, fontsize=8, title=contrast_column)
    bottom = np.zeros(len(table))
    for i, reason in enumerate(reasons):
        values = 100.0 * table[f"failed_{reason}"] / table["cells_in"].clip(lower=1)
        axes[1].bar(x, values, bottom=bottom, color=palette(len(reasons))[i], label=reason)
        bottom += values
    axes[1].set_ylabel("% of barcodes failing (a cell can fail several)")
    axes[1].set_title("failures by filter")
    axes[1].legend(frameon=False, fontsize=7)
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(table["sample"], rotation=90, fontsize=8)
    fig.tight_layout()
    save(fig, paths)


def ambient_figure(table: pd.DataFrame, contrast_column: str, pair_by: str, paths: Sequence[str | Path]) -> None:
    """Each sample's ambient RNA contamination (with its 95 % interval) by timepoint, a donor's
    samples joined: a change of contamination between timepoints moves every population's counts
    of the soup's genes, so it is worth seeing before any DE result."""
    estimated = table[table["contamination"].notna()].copy()
    levels = list(dict.fromkeys(table[contrast_column]))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(levels) + 2.5), 4))
    if estimated.empty:
        ax.text(
            0.5,
            0.5,
            "ambient RNA not estimated:\nthe sample sheet gives no raw_path\n(Cell Ranger's raw_feature_bc_matrix)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
    else:
        position = {lvl: i for i, lvl in enumerate(levels)}
        estimated["x"] = estimated[contrast_column].map(position).astype(float)
        pct = 100 * estimated[["contamination", "contamination_low", "contamination_high"]]
        if pair_by in estimated:
            for _, donor in estimated.assign(y=pct["contamination"]).groupby(pair_by):
                donor = donor.sort_values("x")
                ax.plot(donor["x"], donor["y"], color="0.75", lw=0.8, zorder=1)
        colours = [TIMEPOINT_COLOURS[int(x) % len(TIMEPOINT_COLOURS)] for x in estimated["x"]]
        ax.errorbar(
            estimated["x"],
            pct["contamination"],
            yerr=[pct["contamination"] - pct["contamination_low"], pct["contamination_high"] - pct["contamination"]],
            fmt="none",
            ecolor="0.5",
            lw=0.8,
            zorder=2,
        )
        ax.scatter(estimated["x"], pct["contamination"], c=colours, s=28, zorder=3)
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels(levels)
        ax.set_xlim(-0.5, len(levels) - 0.5)
        ax.set_ylim(bottom=0)
        ax.set_xlabel(contrast_column)
        ax.set_ylabel("contamination (% of a cell's UMIs from the soup)")
        missing = len(table) - len(estimated)
        note = f", {missing} without raw droplets" if missing else ""
        ax.set_title(f"ambient RNA: {len(estimated)} samples{note}", fontsize=9)
    fig.tight_layout()
    save(fig, paths)
