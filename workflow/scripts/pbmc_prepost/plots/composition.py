"""Figures of the composition: stacked bars per sample and per-donor lines per population."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pbmc_prepost.composition import RELATIVE_NOTE
from pbmc_prepost.design import Contrast, str_values
from pbmc_prepost.plots import palette, plt, save


def _level_order(levels: Sequence[str], contrast: Contrast) -> dict[str, int]:
    """Reference first, treated second, other levels after them in sorted order."""
    others = sorted(set(levels) - {contrast.reference, contrast.treated})
    order = {contrast.reference: 0, contrast.treated: 1}
    order.update({level: 2 + i for i, level in enumerate(others)})
    return order


def _plain_props(props: pd.DataFrame, contrast: Contrast) -> pd.DataFrame:
    table = props.copy()
    table["sample"] = str_values(table["sample"])
    table["population"] = str_values(table["population"])
    table["_pair"] = str_values(table[contrast.pair_by]) if contrast.pair_by in table.columns else ""
    table["_level"] = str_values(table[contrast.column])
    return table


def stacked_bar_figure(
    props: pd.DataFrame,
    contrast: Contrast,
    paths: Sequence[str | Path],
    title: str = "Cell-type composition per sample",
) -> None:
    """One stacked bar of cell-type proportions per sample.

    Parameters
    ----------
    props
        Output of :func:`cell_counts`.
    contrast
        Orders the bars: reference samples, then treated, then any other level; by donor within.
    paths
        Files to write (PNG and/or PDF, format from the suffix).
    title
        Figure title; the subtitle always states that proportions are relative.
    """
    table = _plain_props(props, contrast)
    meta = table.drop_duplicates("sample").set_index("sample")[["_pair", "_level"]]
    rank = _level_order(list(meta["_level"]), contrast)
    meta = (
        meta.assign(_rank=meta["_level"].map(rank))
        .reset_index()
        .sort_values(["_rank", "_pair", "sample"], kind="mergesort")
    )
    order = list(meta["sample"])
    populations = sorted(table["population"].unique())
    colours = dict(zip(populations, palette(len(populations))))
    wide = (
        table.pivot(index="sample", columns="population", values="proportion")
        .reindex(index=order, columns=populations)
        .fillna(0.0)
    )

    fig, ax = plt.subplots(figsize=(min(max(5.0, 0.42 * len(order) + 3.8), 24.0), 4.8), layout="constrained")
    x = np.arange(len(order))
    bottom = np.zeros(len(order))
    for population in populations:
        values = wide[population].to_numpy()
        ax.bar(
            x,
            values,
            bottom=bottom,
            width=0.85,
            color=colours[population],
            label=population,
            edgecolor="white",
            linewidth=0.3,
        )
        bottom += values
    # Separate and name the contrast levels above the bars.
    levels = list(meta["_level"])
    starts = [i for i in range(len(levels)) if i == 0 or levels[i] != levels[i - 1]]
    for j, start in enumerate(starts):
        end = starts[j + 1] if j + 1 < len(starts) else len(levels)
        if start:
            ax.axvline(start - 0.5, color="black", linewidth=0.8)
        ax.text(
            (start + end - 1) / 2,
            1.01,
            levels[start] or "(none)",
            ha="center",
            va="bottom",
            fontsize=8,
            transform=ax.get_xaxis_transform(),
        )
    ax.set_xticks(x)
    ax.set_xticklabels(order, rotation=90, fontsize=8)
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("proportion of the sample's cells")
    handles, labels = ax.get_legend_handles_labels()
    # Reversed so that the legend reads top-down like the stack.
    ax.legend(
        handles[::-1],
        labels[::-1],
        frameon=False,
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        title="cell type",
        title_fontsize=8,
    )
    ax.set_title(RELATIVE_NOTE, fontsize=8, style="italic", pad=16)
    fig.suptitle(title, fontsize=10)
    save(fig, paths)


def paired_lines_figure(
    props: pd.DataFrame,
    test: pd.DataFrame,
    contrast: Contrast,
    paths: Sequence[str | Path],
    title: str = "Change in cell-type proportions per donor",
) -> None:
    """Small multiples of each cell type's proportion, one line per donor from reference to treated.

    Parameters
    ----------
    props
        Output of :func:`cell_counts`; only reference and treated samples are drawn.
    test
        Output of :func:`paired_composition_test` (``n_pairs`` and ``padj`` go into the panel
        titles; a cell type missing from it is labelled "not tested").
    contrast
        Reference and treated levels and the pairing column.
    paths
        Files to write (PNG and/or PDF, format from the suffix).
    title
        Figure title; a second line always states that proportions are relative.
    """
    ref, trt = contrast.reference, contrast.treated
    table = _plain_props(props, contrast)
    populations = sorted(table["population"].unique())
    table = table[table["_level"].isin([ref, trt]) & table["proportion"].notna()]
    table = table.assign(_x=(table["_level"] == trt).astype(int))
    # A donor with replicate samples at one level is drawn at its mean proportion.
    by_donor = table[table["_pair"] != ""].groupby(["population", "_pair", "_x"])["proportion"].mean()
    no_donor = table[table["_pair"] == ""]
    donors = sorted(table.loc[table["_pair"] != "", "_pair"].unique())
    colours = dict(zip(donors, palette(len(donors))))
    arm_colours = {}
    if contrast.arms and contrast.arm_column in table.columns:
        # Two arms: colour = arm, so that the difference of changes is what the eye sees.
        arm_colours = dict(zip(contrast.arms, ["#C44E52", "#4C72B0"]))
        arm_of = table.drop_duplicates("_pair").set_index("_pair")[contrast.arm_column].astype(str)
        colours = {d: arm_colours.get(arm_of.get(d, ""), "grey") for d in donors}
    results = (
        test.assign(population=str_values(test["population"])).set_index("population")
        if len(test)
        else pd.DataFrame(columns=["n_pairs", "padj"])
    )

    n_panels = max(len(populations), 1)
    ncols = min(5, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(2.3 * ncols + 1.4, 2.3 * nrows + 0.9), squeeze=False, layout="constrained"
    )
    flat = axes.ravel()
    for ax, population in zip(flat, populations):
        for donor in donors:
            key = (population, donor)
            points = by_donor.loc[key] if key in by_donor.index.droplevel("_x") else pd.Series(dtype=float)
            xs, ys = points.index.to_numpy(), points.to_numpy()
            if len(xs) == 2:
                ax.plot(xs, ys, "-o", color=colours[donor], markersize=4, linewidth=1.2)
            elif len(xs) == 1:
                # A donor without its pair: a lone open point, no line.
                ax.plot(xs, ys, "o", markerfacecolor="none", markeredgecolor=colours[donor], markersize=5)
        lone = no_donor[no_donor["population"] == population]
        if len(lone):
            ax.plot(lone["_x"], lone["proportion"], "x", color="grey", markersize=5)
        if population in results.index:
            row = results.loc[population]
            padj = float(row["padj"])
            padj_text = f"padj {padj:.2g}" if np.isfinite(padj) else "padj n/a"
            label = f"{int(row['n_pairs'])} pairs, {padj_text}"
            if arm_colours:
                label = f"{int(row['n_pairs'])} pairs, difference {padj_text}"
        else:
            label = "not tested"
        ax.set_title(f"{population}\n{label}", fontsize=8)
        ax.set_xticks([0, 1])
        ax.set_xticklabels([ref, trt], fontsize=8)
        ax.set_xlim(-0.4, 1.4)
        # A little room below 0 so that zero proportions are not cut in half by the axis.
        top = max(ax.get_ylim()[1], 1e-3)
        ax.set_ylim(-0.04 * top, top)
        ax.tick_params(axis="y", labelsize=7)
    for ax in flat[len(populations) :]:
        ax.axis("off")
    if not populations:
        flat[0].text(0.5, 0.5, "no cells", ha="center", va="center", transform=flat[0].transAxes)
    for row_axes in axes:
        row_axes[0].set_ylabel("proportion", fontsize=8)
    handles = [plt.Line2D([], [], color=colours[d], marker="o", markersize=4, label=d) for d in donors]
    if arm_colours:
        handles = [plt.Line2D([], [], color=c, marker="o", markersize=4, label=a) for a, c in arm_colours.items()]
    if len(no_donor):
        handles.append(plt.Line2D([], [], color="grey", marker="x", linestyle="none", label="no donor"))
    if handles:
        fig.legend(
            handles=handles,
            loc="outside right upper",
            frameon=False,
            fontsize=7,
            title=contrast.arm_column if arm_colours else (contrast.pair_by or "donor"),
            title_fontsize=8,
        )
    fig.suptitle(f"{title}\n{RELATIVE_NOTE}", fontsize=10)
    save(fig, paths)


def composition_figures(
    proportions: pd.DataFrame,
    tests: pd.DataFrame,
    contrasts: Sequence[Contrast],
    paths: dict[str, Sequence[str | Path]],
) -> None:
    """The figures of every level of :func:`pbmc_prepost.composition.composition_tables`.

    ``paths`` maps ``"bars_<level>"`` to the files of the stacked bars (every sample, once) and
    ``"pairs_<level>_<contrast>"`` to those of each contrast's per-donor lines.
    """
    for level in proportions["level"].unique():
        props = proportions[proportions["level"] == level].drop(columns="level").reset_index(drop=True)
        stacked_bar_figure(props, contrasts[0], paths[f"bars_{level}"], title=f"Composition per sample ({level})")
        for contrast in contrasts:
            keep = (tests["level"] == level) & (tests["contrast"] == contrast.name)
            test = tests[keep].drop(columns=["level", "contrast"]).reset_index(drop=True)
            own = props
            if contrast.arms and contrast.arm_column in props.columns:
                own = props[props[contrast.arm_column].isin(contrast.arms)]
            paired_lines_figure(
                own,
                test,
                contrast,
                paths[f"pairs_{level}_{contrast.name}"],
                title=f"Proportion per donor ({level}), {contrast.describe()}",
            )
