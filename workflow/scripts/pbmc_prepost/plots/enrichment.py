"""Figures of the enrichment: the headline GSEA heatmap and module scores per donor."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pbmc_prepost.design import Contrast
from pbmc_prepost.genesets import CATEGORIES, CATEGORY_LABELS, CELL_TYPES, short_set_name, split_cell_types
from pbmc_prepost.gsea import TESTED
from pbmc_prepost.plots import message_figure, palette, plt, save


def _row_order(labels: Sequence[str]) -> list[str]:
    """Populations in the usual PBMC order, unknown labels after them alphabetically."""
    known = [c for c in CELL_TYPES if c != "all"]
    labels = list(dict.fromkeys(map(str, labels)))
    return [c for c in known if c in labels] + sorted(c for c in labels if c not in known)


def _column_groups(set_names: Sequence[str], meta: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(category, sets) in :data:`CATEGORIES` order; sets without metadata count as user sets."""
    category = {name: (str(meta.at[name, "category"]) if name in meta.index else "user") for name in set_names}
    order = [n for n in meta.index if n in set(set_names)] + [n for n in set_names if n not in meta.index]
    order = list(dict.fromkeys(order))
    groups = []
    for cat in CATEGORIES:
        members = [n for n in order if category[n] == cat]
        if members:
            groups.append((cat, members))
    others = [n for n in order if category[n] not in CATEGORIES]
    if others:
        groups.append(("user", others))
    return groups


def headline_heatmap(
    gsea: pd.DataFrame,
    meta: pd.DataFrame,
    paths: Sequence[str | Path],
    vmax: float = 3.0,
    title: str = "Gene-set enrichment (GSEA NES, treated vs reference)",
    footnote: str = (
        "* FDR < 0.05, ** FDR < 0.01 (gseapy, gene-set permutation: genes treated as "
        "independent; see the donor-level score test). Grey hatched: not tested. "
        "Framed: population the set is meant for."
    ),
) -> None:
    """Cell types x gene sets heatmap of GSEA NES with FDR marks.

    Colour = NES (blue-white-red, centred at 0, fixed limits +-``vmax`` so figures compare across
    runs); '*' fdr < 0.05, '**' fdr < 0.01; grey hatched = not tested (too few genes, or the
    population had no DE table); a black frame marks the populations a set is meant for
    (``cell_types`` in the metadata, not drawn for "all"). Columns are grouped by category,
    positive controls first and set apart from hypotheses, context and artefact controls.

    Parameters
    ----------
    gsea
        Stacked GSEA tables with a ``population`` column (:func:`pbmc_prepost.gsea.enrich_populations`).
    meta
        ``GeneSetLibrary.meta`` (category, cell_types).
    paths
        Output files (PNG/PDF).
    vmax
        Colour limit; |NES| beyond it is drawn at the limit.
    title
        Figure title.
    """
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    rows = _row_order(gsea["population"]) if len(gsea) else []
    set_names = list(dict.fromkeys(list(meta.index) + list(gsea["gene_set"] if len(gsea) else [])))
    groups = _column_groups(set_names, meta)
    gap = 0.6
    x_of: dict[str, float] = {}
    spans = []
    x = 0.0
    for cat, members in groups:
        start = x
        for name in members:
            x_of[name] = x
            x += 1.0
        spans.append((cat, start, x))
        x += gap
    width = max(x - gap, 1.0)
    lookup = {(str(r.population), str(r.gene_set)): r for r in gsea.itertuples(index=False)} if len(gsea) else {}
    cmap = plt.get_cmap("RdBu_r")
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax)

    fig, ax = plt.subplots(figsize=(min(3.5 + 0.42 * width, 30), 3.4 + 0.42 * max(len(rows), 1)))
    for i, cell_type in enumerate(rows):
        for name, x0 in x_of.items():
            rec = lookup.get((cell_type, name))
            nes = float(rec.NES) if rec is not None and pd.notna(rec.NES) else math.nan
            tested = rec is not None and str(rec.status) == TESTED and np.isfinite(nes)
            if tested:
                ax.add_patch(
                    Rectangle(
                        (x0, i), 1, 1, facecolor=cmap(norm(np.clip(nes, -vmax, vmax))), edgecolor="white", linewidth=0.8
                    )
                )
                fdr = float(rec.fdr) if pd.notna(rec.fdr) else math.nan
                mark = "**" if fdr < 0.01 else "*" if fdr < 0.05 else ""
                if mark:
                    ax.text(
                        x0 + 0.5,
                        i + 0.5,
                        mark,
                        ha="center",
                        va="center",
                        fontsize=9,
                        color="white" if abs(nes) > 0.6 * vmax else "black",
                    )
            else:
                ax.add_patch(
                    Rectangle((x0, i), 1, 1, facecolor="#e3e3e3", edgecolor="#a8a8a8", hatch="////", linewidth=0.0)
                )
            intended = split_cell_types(meta.at[name, "cell_types"]) if name in meta.index else ["all"]
            if "all" not in intended and cell_type in intended:
                ax.add_patch(Rectangle((x0 + 0.04, i + 0.04), 0.92, 0.92, fill=False, edgecolor="black", linewidth=1.1))
    ax.set_xlim(-0.2, width + 0.2)
    ax.set_ylim(max(len(rows), 1), 0)
    ax.set_yticks([i + 0.5 for i in range(len(rows))])
    ax.set_yticklabels(rows, fontsize=8)
    ax.set_xticks([x0 + 0.5 for x0 in x_of.values()])
    ax.set_xticklabels([short_set_name(n) for n in x_of], rotation=60, ha="right", fontsize=7.5)
    for cat, start, end in spans:
        ax.text(
            (start + end) / 2, -0.25, CATEGORY_LABELS.get(cat, cat), ha="center", va="bottom", fontsize=8, weight="bold"
        )
        ax.plot([start + 0.05, end - 0.05], [-0.12, -0.12], color="black", linewidth=0.8, clip_on=False)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    ax.tick_params(length=0)
    mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    colourbar = fig.colorbar(mappable, ax=ax, fraction=0.025, pad=0.02, ticks=np.linspace(-vmax, vmax, 5))
    colourbar.set_label("NES (treated vs reference)", fontsize=8)
    colourbar.ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=10, pad=26)
    fig.text(0.01, 0.005, footnote, fontsize=6.5, ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    save(fig, paths)


def _panel_pairs(sets: Sequence[str], groups: Sequence[str]) -> list[tuple[str, str]]:
    sets, groups = list(sets), list(groups)
    if len(sets) == 1 and len(groups) > 1:
        sets = sets * len(groups)
    if len(groups) == 1 and len(sets) > 1:
        groups = groups * len(sets)
    if len(sets) != len(groups):
        raise ValueError(
            f"donor_score_lines: {len(groups)} group(s) and {len(sets)} set(s); give one group per set "
            f"(panel i = groups[i] x sets[i]) or a single group or set"
        )
    return list(zip(groups, sets))


def donor_score_lines(
    scores: pd.DataFrame,
    test: pd.DataFrame,
    sets: Sequence[str],
    groups: Sequence[str],
    contrast: Contrast,
    paths: Sequence[str | Path],
    title: str = "Module scores per donor",
) -> None:
    """Small multiples: one panel per (group, set), one line per donor from reference to treated.

    Parameters
    ----------
    scores
        Output of :func:`module_scores`.
    test
        Output of :func:`paired_score_test` (n pairs and padj go into the panel titles).
    sets, groups
        Panel i shows ``sets[i]`` in ``groups[i]``; a single set (or group) is used for every
        panel, e.g. ``sets=["PD_IL7_STAT5_RESPONSE_UP"], groups=["CD4 T", "CD8 T"]``.
    contrast
        x axis = reference, treated; one line per ``pair_by`` value.
    paths
        Output files (PNG/PDF).
    title
        Figure title.
    """
    pairs = _panel_pairs(sets, groups)
    ref, trt, pair_by = contrast.reference, contrast.treated, contrast.pair_by
    table = scores.copy()
    table["_pair"] = table[pair_by].astype(str) if pair_by in table.columns else ""
    table["_level"] = table[contrast.column].astype(str) if contrast.column in table.columns else ""
    table = table[table["_level"].isin([ref, trt])]
    donors = sorted(d for d in table["_pair"].unique() if d)
    colours = dict(zip(donors, palette(len(donors))))
    arm_of = pd.Series(dtype=str)
    arm_colours: dict[str, str] = {}
    if contrast.arms and contrast.arm_column in table.columns:
        # Two arms: colour = arm and one mean line per arm, so the difference of changes shows.
        table = table[table[contrast.arm_column].astype(str).isin(contrast.arms)]
        donors = sorted(d for d in table["_pair"].unique() if d)
        arm_colours = dict(zip(contrast.arms, ["#C44E52", "#4C72B0"]))
        arm_of = table.drop_duplicates("_pair").set_index("_pair")[contrast.arm_column].astype(str)
        colours = {d: arm_colours.get(arm_of.get(d, ""), "grey") for d in donors}
    n_cols = min(4, max(len(pairs), 1))
    n_rows = int(np.ceil(max(len(pairs), 1) / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.9 * n_cols, 2.9 * n_rows + 0.7), squeeze=False)
    for ax in axes.ravel()[len(pairs) :]:
        ax.set_visible(False)
    for ax, (group, name) in zip(axes.ravel(), pairs):
        part = table[(table["population"].astype(str) == group) & (table["gene_set"] == name)]
        row = test[(test["population"].astype(str) == group) & (test["gene_set"] == name)] if len(test) else test
        if len(row):
            rec = row.iloc[0]
            padj = f"padj {rec['padj']:.2g}" if pd.notna(rec["padj"]) else "not tested"
            stat_text = f"{int(rec['n_pairs'])} pairs, {padj}"
        else:
            stat_text = "not tested"
        ax.set_title("\n".join(textwrap.wrap(f"{short_set_name(name)} in {group}", 34)) + f"\n{stat_text}", fontsize=8)
        ax.set_xticks([0, 1])
        ax.set_xticklabels([ref, trt], fontsize=8)
        ax.set_xlim(-0.35, 1.35)
        ax.tick_params(labelsize=7)
        if part.empty:
            ax.text(0.5, 0.5, "not scored", transform=ax.transAxes, ha="center", va="center", fontsize=8)
            continue
        means = part.groupby(["_pair", "_level"])["mean_score"].mean().unstack("_level").reindex(columns=[ref, trt])
        for donor, values in means.iterrows():
            y = values.to_numpy(dtype=float)
            if np.isfinite(y).all():
                ax.plot(
                    [0, 1],
                    y,
                    marker="o",
                    markersize=4,
                    linewidth=1.2,
                    color=colours.get(donor, "grey"),
                    label=donor or "(no donor)",
                    alpha=0.5 if arm_colours else 1.0,
                )
            else:  # a donor with one timepoint: a hollow point, no line
                xs = [i for i in (0, 1) if np.isfinite(y[i])]
                ax.scatter(xs, y[xs], s=18, facecolors="none", edgecolors=colours.get(donor, "grey"))
        complete = means.dropna()
        if arm_colours:
            for arm, colour in arm_colours.items():
                own = complete[complete.index.map(arm_of).astype(str) == arm]
                if len(own):
                    ax.plot([0, 1], own.mean().to_numpy(), color=colour, linewidth=3, label=f"mean {arm}")
        elif len(complete):
            ax.plot([0, 1], complete.mean().to_numpy(), color="black", linewidth=2.4, alpha=0.7, label="mean")
        ax.axhline(0, color="lightgrey", linewidth=0.6, zorder=0)
    axes[0, 0].set_ylabel("mean module score\n(cells averaged per sample)", fontsize=8)
    if arm_colours:
        handles = [plt.Line2D([], [], color=c, linewidth=3, label=a) for a, c in arm_colours.items()]
        axes[0, 0].legend(handles=handles, frameon=False, fontsize=6, loc="best")
    elif donors and len(donors) <= 20:
        axes[0, 0].legend(frameon=False, fontsize=6, loc="best")
    test_words = "donors' changes compared between arms" if contrast.is_interaction else "paired t-test on donor means"
    fig.suptitle(f"{title}: one line per {pair_by}, {ref} -> {trt}; {test_words}, BH-adjusted", fontsize=9)
    fig.tight_layout()
    save(fig, paths)


#: Footnote of the headline heatmap, whose stars mark calls both tests confirm.
CONFIRMED_FOOTNOTE = (
    "* / ** : GSEA FDR and donor-level set test FDR both < 0.05 / 0.01 in the same direction. "
    "Colour: GSEA NES. Grey hatched: not tested. Framed: population the set is meant for."
)


def confirmed_calls_heatmap(
    gsea: pd.DataFrame, meta: pd.DataFrame, de_summary: pd.DataFrame, paths: Sequence[str | Path], title: str = ""
) -> None:
    """The headline heatmap with stars on confirmed calls; a note when no population was tested.

    A star's level is the larger of the GSEA and donor-level FDRs of a confirmed call, so it
    marks only what both tests say in the same direction.
    """
    if not len(gsea):
        # Fewer than min_pairs complete donor pairs in every population: nothing was tested.
        reason = "; ".join(f"{r.population}: {r.reason}" for r in de_summary.itertuples() if r.reason)
        message_figure(
            "Gene-set enrichment",
            "No population was tested for differential expression "
            f"(see results/de/summary.tsv), so there is no enrichment.\n"
            f"{(reason or 'no population tested')[:300]}",
            paths,
        )
        return
    marked = gsea.assign(fdr=[max(r.fdr, r.donor_fdr) if r.call in ("up", "down") else 1.0 for r in gsea.itertuples()])
    marked.loc[gsea["NES"].isna(), "fdr"] = float("nan")
    extra = {"title": f"Gene-set enrichment (GSEA NES), {title}"} if title else {}
    headline_heatmap(marked, meta, paths, footnote=CONFIRMED_FOOTNOTE, **extra)


def headline_score_lines(
    scores: pd.DataFrame, test: pd.DataFrame, library, settings, paths: Sequence[str | Path]
) -> None:
    """:func:`donor_score_lines` of the configured headline (population, set) pairs that were scored."""
    scored = set(scores["population"])
    headline = [(group, name) for group, name in settings.headline if group in scored and name in library.sets]
    contrast = settings.contrast
    donor_score_lines(
        scores,
        test,
        [name for _, name in headline],
        [group for group, _ in headline],
        contrast,
        paths,
        title=f"Module scores per donor, {contrast.describe()}",
    )
