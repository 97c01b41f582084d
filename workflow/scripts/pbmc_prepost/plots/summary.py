"""The one-page study summary: did lymphocytes recover, did the drug act, did cells shift?"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pbmc_prepost.design import Contrast
from pbmc_prepost.genesets import short_set_name
from pbmc_prepost.plots import palette, plt, save
from pbmc_prepost.set_calls import STRESS_SET

T_LINEAGES = ("CD4 T", "CD8 T", "other T")


def t_cell_share(proportions: pd.DataFrame, contrast: Contrast) -> pd.DataFrame:
    """Per sample: donor, condition and the summed share of the T-cell lineages."""
    lineage = proportions[proportions["level"] == "lineage"]
    share = lineage[lineage["population"].isin(T_LINEAGES)].groupby("sample")["proportion"].sum()
    columns = [contrast.pair_by, contrast.column]
    if contrast.arm_column and contrast.arm_column in lineage.columns:
        columns.append(contrast.arm_column)
    meta = lineage.drop_duplicates("sample").set_index("sample")[columns]
    return meta.assign(value=share.reindex(meta.index).fillna(0.0)).reset_index()


def _donor_lines(ax, frame: pd.DataFrame, contrast: Contrast, ylabel: str, title: str) -> int:
    """One line per donor from reference to treated; returns the number of pairs drawn.

    In a two-arm contrast the lines are coloured by arm, with each arm's mean in bold: the
    difference of the two slopes is the difference of changes under test.
    """
    by_arm = bool(contrast.arms) and contrast.arm_column in frame.columns
    if by_arm:
        frame = frame[frame[contrast.arm_column].astype(str).isin(contrast.arms)]
    wide = frame.pivot_table(index=contrast.pair_by, columns=contrast.column, values="value", aggfunc="mean")
    levels = [contrast.reference, contrast.treated]
    wide = wide.reindex(columns=levels).dropna()
    colours = palette(max(len(wide), 1))
    if by_arm:
        arm_colours = dict(zip(contrast.arms, ["#C44E52", "#4C72B0"]))
        arm_of = frame.drop_duplicates(contrast.pair_by).set_index(contrast.pair_by)[contrast.arm_column].astype(str)
        for donor, row in wide.iterrows():
            ax.plot([0, 1], row.to_numpy(), marker="o", color=arm_colours[arm_of[donor]], alpha=0.4, linewidth=1)
        for arm, colour in arm_colours.items():
            own = wide[wide.index.map(arm_of) == arm]
            if len(own):
                ax.plot([0, 1], own.mean().to_numpy(), color=colour, linewidth=3, label=f"{arm} ({len(own)})")
        ax.legend(frameon=False, fontsize=7, loc="best")
    else:
        for i, (donor, row) in enumerate(wide.iterrows()):
            ax.plot([0, 1], row.to_numpy(), marker="o", color=colours[i], label=str(donor))
    ax.set_xticks([0, 1])
    ax.set_xticklabels(levels)
    ax.set_xlim(-0.3, 1.3)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    return len(wide)


def study_summary_figure(
    proportions: pd.DataFrame,
    composition: pd.DataFrame,
    donor_scores: pd.DataFrame,
    score_test: pd.DataFrame,
    gsea: pd.DataFrame,
    panels: Sequence[Sequence[str]],
    contrast: Contrast,
    paths: Sequence[str | Path],
) -> None:
    """One page: T-cell share per donor, module scores per donor for the headline (population,
    set) pairs, and the list of enrichment calls confirmed by both tests, stress control included.
    """
    n_panels = 1 + len(panels) + 1
    ncols = 3
    nrows = int(np.ceil(n_panels / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows))
    axes = np.atleast_1d(axes).ravel()

    share = t_cell_share(proportions, contrast)
    lineage_test = composition[composition["level"] == "lineage"].set_index("population")
    tests = "; ".join(
        f"{c} padj {lineage_test.loc[c, 'padj']:.2g}" for c in ("CD4 T", "CD8 T") if c in lineage_test.index
    )
    pairs = _donor_lines(
        axes[0],
        share,
        contrast,
        "T cells, share of PBMC",
        f"Did lymphocytes recover?\nT-cell share, {{n}} donors ({tests})",
    )
    axes[0].set_title(axes[0].get_title().replace("{n}", str(pairs)), fontsize=9)
    axes[0].text(0.02, 0.02, "relative share: other populations fall with it", transform=axes[0].transAxes, fontsize=7)

    tested = score_test.set_index(["population", "gene_set"])
    for ax, (group, gene_set) in zip(axes[1:], panels):
        frame = donor_scores[(donor_scores["population"] == group) & (donor_scores["gene_set"] == gene_set)]
        frame = frame.rename(columns={"mean_score": "value"})
        padj = tested["padj"].get((group, gene_set), np.nan)
        question = (
            "Did the drug act?"
            if gene_set.startswith("PD_")
            else ("Was handling equal?" if gene_set.startswith("QC_") else "Did cells shift?")
        )
        n = _donor_lines(ax, frame, contrast, "module score (donor mean)", "")
        which = "difference padj" if contrast.is_interaction else "paired padj"
        ax.set_title(f"{question}\n{group}: {short_set_name(gene_set)}\n{n} donors, {which} {padj:.2g}", fontsize=8)

    last = axes[1 + len(panels)]
    last.axis("off")
    confirmed = gsea[gsea["call"].isin(["up", "down"])].sort_values(["population", "gene_set"])
    lines = ["Enrichment calls confirmed by GSEA and the donor-level test (FDR < 0.05):"]
    lines += [f"  {r.population}: {r.gene_set} {r.call} ({r.n_pairs} pairs)" for r in confirmed.itertuples()] or [
        "  none"
    ]
    stress = gsea[gsea["gene_set"] == STRESS_SET]
    flagged = stress[stress["call"] != "ns"]["population"].tolist()
    lines.append("")
    lines.append("Dissociation-stress control: " + (f"CHANGED in {', '.join(flagged)}" if flagged else "no change"))
    last.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=7, family="monospace", transform=last.transAxes)
    for ax in axes[2 + len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"{contrast.describe()}, paired by {contrast.pair_by}: study summary", fontsize=11)
    fig.tight_layout()
    save(fig, paths)
