"""Figures of the merged stage: UMAPs and marker dot plots (by cluster or by cell type)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pbmc_prepost.cluster import group_expression, leiden_key
from pbmc_prepost.plots import palette, plt, save
from pbmc_prepost.settings import AnnotationSettings, FigureSettings

log = logging.getLogger(__name__)


def umap_figure(
    coords: np.ndarray, labels: pd.Series, title: str, paths: Sequence[str | Path], label_on_data: bool = False
) -> None:
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
    ax.legend(
        frameon=False,
        fontsize=7,
        bbox_to_anchor=(1.0, 1.0),
        loc="upper left",
        markerscale=1,
        ncol=1 if len(categories) <= 20 else 2,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save(fig, paths)


def dotplot_figure(
    mean_expression: pd.DataFrame,
    fraction: pd.DataFrame,
    gene_groups: Mapping[str, Sequence[str]],
    title: str,
    paths: Sequence[str | Path],
) -> None:
    """Dot plot: colour = mean log-normalized expression scaled per gene, size = fraction expressing.

    ``mean_expression`` and ``fraction`` are groups x genes (same shape and order).
    """
    genes = list(mean_expression.columns)
    groups = list(mean_expression.index)
    scaled = mean_expression / mean_expression.max(axis=0).replace(0, 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.32 * len(genes) + 2.5), max(3, 0.3 * len(groups) + 1.8)))
    yy, xx = np.meshgrid(np.arange(len(groups)), np.arange(len(genes)), indexing="ij")
    points = ax.scatter(
        xx.ravel(),
        yy.ravel(),
        s=(fraction.to_numpy().ravel() * 120) + 0.5,
        c=scaled.to_numpy().ravel(),
        cmap="Reds",
        vmin=0,
        vmax=1,
        edgecolors="grey",
        linewidths=0.3,
    )
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
        ax.annotate(
            name,
            xy=(position + (len(present) - 1) / 2, -0.8),
            xycoords="data",
            ha="center",
            va="bottom",
            fontsize=7,
            annotation_clip=False,
        )
        if position:
            ax.axvline(position - 0.5, color="lightgrey", linewidth=0.5)
        position += len(present)
    colourbar = fig.colorbar(points, ax=ax, fraction=0.03, pad=0.02)
    colourbar.set_label("mean expression (scaled to gene max)", fontsize=8)
    for share in (0.25, 0.5, 1.0):
        ax.scatter([], [], s=share * 120 + 0.5, color="grey", label=f"{int(share * 100)} %")
    ax.legend(
        title="cells expressing",
        frameon=False,
        fontsize=7,
        title_fontsize=7,
        bbox_to_anchor=(1.12, 0.0),
        loc="lower left",
    )
    ax.set_title(title, fontsize=10, pad=22)
    fig.tight_layout()
    save(fig, paths)


def marker_dotplot(
    adata,
    groupby: str,
    gene_groups: Mapping[str, Sequence[str]],
    title: str,
    paths: Sequence[str | Path],
    row_label: str = "{}",
    order: Callable[[str], object] | None = None,
) -> None:
    """Dot plot of the marker genes (grouped by population) over the groups of ``obs[groupby]``.

    Genes absent from the data are left out (logged). ``row_label`` formats each group's row
    name; ``order`` sorts the rows (default: clusters numerically, other labels alphabetically).
    """
    groups = {name: [g for g in genes if g in adata.var_names] for name, genes in gene_groups.items()}
    missing = sorted({g for genes in gene_groups.values() for g in genes} - set(adata.var_names))
    if missing:
        log.warning("dot-plot genes not in the data: %s", ", ".join(missing))
    genes = list(dict.fromkeys(g for members in groups.values() for g in members))
    mean, fraction = group_expression(adata, groupby, genes)
    if order is not None:
        rows = sorted(mean.index, key=order)
        mean, fraction = mean.loc[rows], fraction.loc[rows]
    mean.index = [row_label.format(c) for c in mean.index]
    fraction.index = mean.index
    dotplot_figure(mean, fraction, groups, title, paths)


def cell_type_dotplot(adata, cell_types: pd.Series, settings: AnnotationSettings, paths: Sequence[str | Path]) -> None:
    """Marker dot plot by cell type, each split by condition (reference first): a label that
    means different cells at the two timepoints shows here."""
    split = cell_types.astype(str) + " | " + adata.obs[settings.condition_column].astype(str)
    adata.obs["cell_type_by_condition"] = pd.Categorical(split)
    marker_dotplot(
        adata,
        "cell_type_by_condition",
        settings.dotplot_genes,
        f"Marker genes by cell type, split by {settings.condition_column}",
        paths,
        order=lambda label: (label.split(" | ")[0], label.split(" | ")[1] != settings.reference),
    )


def overview_umaps(coords: np.ndarray, obs: pd.DataFrame, settings: FigureSettings, outputs: Mapping[str, str]) -> None:
    """UMAP by sample, by condition and by Leiden cluster (``outputs``: ``<what>_png``/``_pdf``)."""
    umap_figure(
        coords, obs["sample"], f"UMAP by sample ({len(obs)} cells)", [outputs["sample_png"], outputs["sample_pdf"]]
    )
    umap_figure(
        coords,
        obs[settings.condition_column],
        f"UMAP by {settings.condition_column}",
        [outputs["condition_png"], outputs["condition_pdf"]],
    )
    umap_figure(
        coords,
        obs[leiden_key(settings.resolution)],
        f"UMAP by Leiden cluster (resolution {settings.resolution:g})",
        [outputs["cluster_png"], outputs["cluster_pdf"]],
        label_on_data=True,
    )
