"""Figures of the workflow. Every function takes plain data and writes PNG and PDF files.

Figures are deterministic: fixed sizes, sorted categories, and no creation timestamps in the PDF.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

PNG_DPI = 120
TIMEPOINT_COLOURS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3"]


def save(fig: plt.Figure, paths: Sequence[str | Path]) -> None:
    """Write ``fig`` to every path (format from the suffix) and close it."""
    for path in paths:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".pdf":
            fig.savefig(path, metadata={"CreationDate": None, "ModDate": None})
        else:
            fig.savefig(path, dpi=PNG_DPI, metadata={"Software": None})
    plt.close(fig)


def palette(n: int) -> list:
    """``n`` distinguishable colours (tab20, then hsv for more)."""
    if n <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(n)]
    return [plt.get_cmap("hsv")(i / n) for i in range(n)]


def qc_sample_figure(obs: pd.DataFrame, thresholds: Mapping[str, float], doublet_threshold: float | None,
                     qc_pass: np.ndarray, title: str, paths: Sequence[str | Path]) -> None:
    """Histograms of one sample's QC metrics with the thresholds drawn as dashed lines."""
    panels = [
        ("total_counts", "UMIs per cell (log10)", True, thresholds["min_total_counts"], thresholds["max_total_counts"]),
        ("n_genes_by_counts", "genes per cell (log10)", True, thresholds["min_n_genes"], thresholds["max_n_genes"]),
        ("pct_counts_mt", "mitochondrial %", False, None, thresholds["max_pct_mt"]),
        ("pct_counts_in_top_20_genes", "top-20 genes share %", False, thresholds["min_pct_top20"], thresholds["max_pct_top20"]),
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


def qc_summary_figure(summary: pd.DataFrame, reasons: Sequence[str], contrast_column: str,
                      paths: Sequence[str | Path]) -> None:
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


def umap_figure(coords: np.ndarray, labels: pd.Series, title: str, paths: Sequence[str | Path],
                label_on_data: bool = False) -> None:
    """UMAP coloured by a categorical label; cells drawn in a fixed shuffled order."""
    labels = pd.Categorical(labels.astype(str))
    categories = list(labels.categories)
    if all(c.isdigit() for c in categories):
        categories = sorted(categories, key=int)
        labels = labels.reorder_categories(categories)
    colours = palette(len(categories))
    order = np.random.default_rng(0).permutation(len(labels))
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    size = max(0.5, min(8.0, 30000 / max(len(labels), 1)))
    point_colours = np.array(colours, dtype=object)[labels.codes[order]]
    ax.scatter(coords[order, 0], coords[order, 1], c=list(point_colours), s=size, linewidths=0, rasterized=True)
    for i, category in enumerate(categories):
        ax.scatter([], [], color=colours[i], label=category, s=20)
        if label_on_data:
            members = labels.codes == i
            if members.any():
                cx, cy = np.median(coords[members], axis=0)
                ax.text(cx, cy, category, fontsize=8, ha="center", va="center", weight="bold")
    ax.legend(frameon=False, fontsize=7, bbox_to_anchor=(1.0, 1.0), loc="upper left", markerscale=1,
              ncol=1 if len(categories) <= 20 else 2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save(fig, paths)


def dotplot_figure(mean_expression: pd.DataFrame, fraction: pd.DataFrame, gene_groups: Mapping[str, Sequence[str]],
                   title: str, paths: Sequence[str | Path]) -> None:
    """Dot plot: colour = mean log-normalized expression scaled per gene, size = fraction expressing.

    ``mean_expression`` and ``fraction`` are groups x genes (same shape and order).
    """
    genes = list(mean_expression.columns)
    groups = list(mean_expression.index)
    scaled = mean_expression / mean_expression.max(axis=0).replace(0, 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.32 * len(genes) + 2.5), max(3, 0.3 * len(groups) + 1.8)))
    yy, xx = np.meshgrid(np.arange(len(groups)), np.arange(len(genes)), indexing="ij")
    points = ax.scatter(xx.ravel(), yy.ravel(), s=(fraction.to_numpy().ravel() * 120) + 0.5,
                        c=scaled.to_numpy().ravel(), cmap="Reds", vmin=0, vmax=1, edgecolors="grey", linewidths=0.3)
    ax.set_xticks(range(len(genes)))
    ax.set_xticklabels(genes, rotation=90, fontsize=8)
    ax.set_yticks(range(len(groups)))
    ax.set_yticklabels(groups, fontsize=8)
    ax.set_xlim(-0.7, len(genes) - 0.3)
    ax.set_ylim(len(groups) - 0.5, -0.5)
    position = 0
    for name, members in gene_groups.items():
        present = [g for g in members if g in genes]
        if not present:
            continue
        ax.annotate(name, xy=(position + (len(present) - 1) / 2, -0.8), xycoords="data", ha="center",
                    va="bottom", fontsize=7, annotation_clip=False)
        if position:
            ax.axvline(position - 0.5, color="lightgrey", linewidth=0.5)
        position += len(present)
    colourbar = fig.colorbar(points, ax=ax, fraction=0.03, pad=0.02)
    colourbar.set_label("mean expression (scaled to gene max)", fontsize=8)
    for share in (0.25, 0.5, 1.0):
        ax.scatter([], [], s=share * 120 + 0.5, color="grey", label=f"{int(share * 100)} %")
    ax.legend(title="cells expressing", frameon=False, fontsize=7, title_fontsize=7,
              bbox_to_anchor=(1.12, 0.0), loc="lower left")
    ax.set_title(title, fontsize=10, pad=22)
    fig.tight_layout()
    save(fig, paths)


def message_figure(title: str, message: str, paths: Sequence[str | Path]) -> None:
    """A figure that only says why there is nothing to show (e.g. a population not tested)."""
    fig, ax = plt.subplots(figsize=(6.5, 2.5))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=10, wrap=True)
    ax.set_title(title, fontsize=10)
    save(fig, paths)


def de_counts_figure(summary: pd.DataFrame, alpha: float, paths: Sequence[str | Path]) -> None:
    """Genes up and down (padj < alpha) per population, with donor pairs and status in the labels."""
    table = summary.sort_values("cell_type", ascending=False).reset_index(drop=True)
    labels = [f"{row.cell_type} ({row.n_pairs} pairs)" if row.status == "tested" else f"{row.cell_type} (not tested)"
              for row in table.itertuples()]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.35 * len(table) + 1.2)))
    y = np.arange(len(table))
    ax.barh(y, table["n_up"], color="#C44E52", label="up")
    ax.barh(y, -table["n_down"], color="#4C72B0", label="down")
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel(f"genes with padj < {alpha:g} (down <- 0 -> up)")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    save(fig, paths)
