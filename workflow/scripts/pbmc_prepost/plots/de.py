"""Figures of the DE: volcano per population, headline genes per donor, genes up/down per population."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pbmc_prepost.design import Contrast
from pbmc_prepost.plots import message_figure, palette, plt, save
from pbmc_prepost.pseudobulk import normalized_pseudobulk
from pbmc_prepost.settings import DESettings


def volcano_figure(
    table: pd.DataFrame, title: str, n_label: int, paths: Sequence[str | Path], alpha: float = 0.05
) -> None:
    """Volcano plot of one group's DE table.

    Parameters
    ----------
    table
        Results table (:data:`RESULT_COLUMNS`).
    title
        Figure title; should carry the group, the design note and the number of donor pairs.
    n_label
        Label this many genes with the smallest padj (among padj < ``alpha``).
    paths
        Output files (PNG/PDF).
    alpha
        padj cut-off for colouring (up red, down blue).
    """
    data = table.dropna(subset=["pvalue", "log2FoldChange"]).copy()
    data["y"] = -np.log10(np.maximum(data["pvalue"].to_numpy(dtype=float), 1e-300))
    significant = (data["padj"] < alpha).to_numpy()
    up = significant & (data["log2FoldChange"] > 0).to_numpy()
    down = significant & (data["log2FoldChange"] < 0).to_numpy()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    rest = ~(up | down)
    for mask, size, colour, label in (
        (rest, 5, "lightgrey", f"n.s. ({int(rest.sum())})"),
        (up, 9, "#C44E52", f"up, padj < {alpha:g} ({int(up.sum())})"),
        (down, 9, "#4C72B0", f"down, padj < {alpha:g} ({int(down.sum())})"),
    ):
        # The many non-significant points are rasterized so that the PDF stays small.
        ax.scatter(
            data["log2FoldChange"][mask],
            data["y"][mask],
            s=size,
            color=colour,
            linewidths=0,
            rasterized=mask is rest,
            label=label,
        )
    # Genes the soup explains (ambient_flag): ringed, so that a "monocyte gene" made by T cells and
    # arriving through the ambient RNA is not read as biology.
    flagged = (
        data["ambient_flag"].astype(str).eq("True").to_numpy() if "ambient_flag" in data else np.zeros(len(data), bool)
    )
    if flagged.any():
        ax.scatter(
            data["log2FoldChange"][flagged],
            data["y"][flagged],
            s=30,
            facecolors="none",
            edgecolors="black",
            linewidths=0.6,
            label=f"ambient RNA explains it ({int(flagged.sum())})",
        )
    ax.axvline(0, color="black", linewidth=0.5)
    labelled = data.loc[significant].sort_values(["padj", "pvalue", "gene"]).head(max(n_label, 0))
    for i, (_, row) in enumerate(labelled.iterrows()):
        # Alternate small offsets so neighbouring labels overlap less (no adjustText dependency).
        dx = 4 if row["log2FoldChange"] >= 0 else -4
        dy = (i % 3 - 1) * 5
        ax.annotate(
            row["gene"],
            (row["log2FoldChange"], row["y"]),
            xytext=(dx, dy),
            textcoords="offset points",
            fontsize=7,
            ha="left" if dx > 0 else "right",
            va="center",
        )
    ax.set_xlabel("log2 fold change")
    ax.set_ylabel("-log10 p-value")
    ax.legend(frameon=False, fontsize=7, loc="upper left")
    ax.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=9)
    fig.tight_layout()
    save(fig, paths)


def paired_genes_figure(
    norm: pd.DataFrame, genes: Sequence[str], contrast: Contrast, title: str, paths: Sequence[str | Path]
) -> None:
    """Per-donor paired plot of normalized pseudobulk expression, one panel per gene.

    Parameters
    ----------
    norm
        Output of :func:`normalized_pseudobulk` (columns ``gene``, ``log2cpm``, the contrast
        column and, when paired, the pairing column).
    genes
        Genes to draw, one panel each (missing genes get an empty panel).
    contrast
        x axis = ``reference``, ``treated``; one line per ``pair_by`` value.
    title
        Figure title; the number of donors is appended.
    paths
        Output files (PNG/PDF).
    """
    genes = list(dict.fromkeys(genes)) or ["(no gene)"]
    levels = [contrast.reference, contrast.treated]
    has_pairs = contrast.pair_by in norm.columns
    donors = sorted(norm[contrast.pair_by].astype(str).unique()) if has_pairs and len(norm) else []
    colours = dict(zip(donors, palette(len(donors))))
    by_arm = bool(contrast.arms) and contrast.arm_column in norm.columns
    if by_arm:  # two arms: colour = arm, so that the difference of changes is what the eye sees
        arm_colours = dict(zip(contrast.arms, ["#C44E52", "#4C72B0"]))
        arm_of = norm.drop_duplicates(contrast.pair_by).set_index(contrast.pair_by)[contrast.arm_column].astype(str)
        colours = {d: arm_colours.get(arm_of.get(d, ""), "grey") for d in donors}
    in_levels = norm[contrast.column].astype(str).isin(levels) if len(norm) else pd.Series(dtype=bool)
    n_cols = min(4, len(genes))
    n_rows = int(np.ceil(len(genes) / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols, 2.6 * n_rows + 0.6), squeeze=False)
    for ax in axes.ravel()[len(genes) :]:
        ax.set_visible(False)
    for ax, gene in zip(axes.ravel(), genes):
        rows = norm.loc[(norm["gene"] == gene) & in_levels] if len(norm) else norm
        ax.set_title(gene, fontsize=9)
        ax.set_xticks([0, 1])
        ax.set_xticklabels(levels, fontsize=8)
        ax.set_xlim(-0.4, 1.4)
        if rows.empty:
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", va="center", fontsize=8)
            continue
        x = rows[contrast.column].astype(str).map({lvl: i for i, lvl in enumerate(levels)}).to_numpy()
        if has_pairs:
            for donor, part in rows.assign(_x=x).groupby(rows[contrast.pair_by].astype(str)):
                part = part.sort_values("_x")
                ax.plot(
                    part["_x"],
                    part["log2cpm"],
                    marker="o",
                    markersize=4,
                    linewidth=1,
                    color=colours.get(donor, "grey"),
                    label=(arm_of.get(donor, "") if by_arm else donor),
                    alpha=0.7 if by_arm else 1.0,
                )
        else:
            ax.scatter(x, rows["log2cpm"], s=14, color="grey")
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("log2(CPM + 1)", fontsize=8)
    if by_arm:
        handles = [plt.Line2D([], [], color=c, marker="o", label=a) for a, c in arm_colours.items()]
        axes[0, 0].legend(handles=handles, frameon=False, fontsize=6, loc="best")
    elif donors and len(donors) <= 20:
        axes[0, 0].legend(frameon=False, fontsize=6, loc="best")
    if has_pairs:
        per_donor = norm.loc[in_levels].groupby(norm[contrast.pair_by].astype(str))[contrast.column].nunique()
        n_text = f"{len(donors)} {contrast.pair_by}s, {int((per_donor == 2).sum())} with both timepoints"
    else:
        n_text = f"{norm['sample'].nunique() if 'sample' in norm else 0} samples, unpaired"
    fig.suptitle("\n".join(textwrap.wrap(f"{title} ({n_text})", 90)), fontsize=9)
    fig.tight_layout()
    save(fig, paths)


def de_counts_figure(summary: pd.DataFrame, alpha: float, paths: Sequence[str | Path]) -> None:
    """Genes up and down (padj < alpha) per population, with donor pairs and status in the labels."""
    table = summary.sort_values("population", ascending=False).reset_index(drop=True)
    labels = [
        f"{row.population} ({row.n_pairs} pairs)" if row.status == "tested" else f"{row.population} (not tested)"
        for row in table.itertuples()
    ]
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


def population_figures(
    pb_group, table: pd.DataFrame, summary: pd.Series, label: str, settings: DESettings, outputs: dict[str, str]
) -> None:
    """The volcano and the per-donor headline genes of one population (or why it was not tested).

    ``outputs`` holds ``volcano_png``/``_pdf`` and ``paired_png``/``_pdf``.
    """
    contrast = settings.contrast
    volcano = [outputs["volcano_png"], outputs["volcano_pdf"]]
    paired = [outputs["paired_png"], outputs["paired_pdf"]]
    if summary["status"] != "tested":
        reason = f"{label}: not tested ({summary['reason']})"
        message_figure(f"{label}: {contrast.describe()}", reason, volcano)
        message_figure(f"{label}: headline genes", reason, paired)
        return
    title = f"{label}: {contrast.describe()} ({summary['note']})"
    volcano_figure(table, title, settings.n_label, volcano, alpha=settings.alpha)
    norm = normalized_pseudobulk(pb_group, settings.headline_genes)
    paired_genes_figure(
        norm, settings.headline_genes, contrast, f"{label}: headline genes per donor (log2 CPM of pseudobulks)", paired
    )
