"""The donor-level set test and the headline call: a set is called when gene-permutation GSEA and
a test with donors as the unit agree, at an FDR controlled over every population and contrast of
the run within the set's category (:func:`confirm_calls`)."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from pbmc_prepost import arms
from pbmc_prepost.design import Contrast
from pbmc_prepost.genesets import GeneSetLibrary

#: The artefact control whose call every row of the same contrast and population carries.
STRESS_SET = "QC_DISSOCIATION_EXVIVO_STRESS"
DONOR_SET_COLUMNS = ["gene_set", "n_pairs", "n_genes", "donor_shift", "donor_t", "donor_pvalue", "donor_fdr"]


def paired_set_test(
    pb_group: ad.AnnData, tested_genes: Sequence[str], library: GeneSetLibrary, contrast: Contrast, min_size: int
) -> pd.DataFrame:
    """Donor-level competitive test of every set in one population's pseudobulks.

    Gene-permutation GSEA treats genes as independent, so a set whose genes move together from
    sample to sample (handling stress, interferon tone, a few cycling cells) looks enriched even
    when only a handful of donors happened to shift the same way (Wu & Smyth 2012). Here the donor
    is the unit: per donor with both samples, the set's mean log2-CPM change minus that of all
    other tested genes (competitive, so global shifts cancel) is one observation, and a one-sample
    t-test across donors asks whether the set moved. Inter-gene correlation cannot inflate it.

    Parameters
    ----------
    pb_group
        Pseudobulks of one population (raw summed counts in ``X``; obs with the contrast and
        pairing columns).
    tested_genes
        Genes tested by the DE of this population (the ranked universe of the GSEA).
    library
        Gene sets.
    contrast
        Levels and pairing column.
    min_size
        Sets with fewer tested members get NaN statistics.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`DONOR_SET_COLUMNS`; ``donor_shift`` in log2 units (treated minus
        reference); ``donor_fdr`` is left NaN here: :func:`confirm_calls` adjusts over every
        population and contrast of the run at once.
    """
    X = pb_group.X.toarray() if hasattr(pb_group.X, "toarray") else np.asarray(pb_group.X, dtype=float)
    library_size = np.maximum(X.sum(axis=1), 1.0)
    genes = [g for g in dict.fromkeys(tested_genes) if g in pb_group.var_names]
    logcpm = pd.DataFrame(
        np.log2(X[:, pb_group.var_names.get_indexer(genes)] / library_size[:, None] * 1e6 + 1.0),
        index=pb_group.obs_names,
        columns=genes,
    )
    obs = pb_group.obs
    level = obs[contrast.column].astype(str)
    donor = obs[contrast.pair_by].astype(str) if contrast.pair_by in obs else pd.Series("", index=obs.index)
    post = logcpm[(level == contrast.treated).to_numpy()].groupby(donor[level == contrast.treated].to_numpy()).mean()
    pre = logcpm[(level == contrast.reference).to_numpy()].groupby(donor[level == contrast.reference].to_numpy()).mean()
    donors = sorted(set(post.index) & set(pre.index) - {""})
    change = post.loc[donors] - pre.loc[donors]
    arm_of = pd.Series(dtype=str)
    if contrast.is_interaction:
        arm_of = obs.groupby(donor.to_numpy())[contrast.arm_column].first().astype(str)
    rows = []
    for name, members in library.sets.items():
        inside = [g for g in members if g in change.columns]
        row = {
            "gene_set": name,
            "n_pairs": len(donors),
            "n_genes": len(inside),
            "donor_shift": np.nan,
            "donor_t": np.nan,
            "donor_pvalue": np.nan,
        }
        if len(inside) >= min_size and len(donors) >= 2:
            outside = change.columns.difference(inside)
            shift = change[inside].mean(axis=1) - change[outside].mean(axis=1)
            if contrast.is_interaction:
                # Difference of changes: the donors' shifts compared between the two arms.
                shifts = pd.DataFrame({"arm": arm_of.reindex(shift.index).to_numpy(), "change": shift.to_numpy()})
                result = arms.compare_changes(shifts.set_index(shift.index), contrast, 2)
                row["donor_shift"], row["donor_t"] = result["difference"], result["t"]
                row["donor_pvalue"] = result["pvalue"]
            else:
                row["donor_shift"] = float(shift.mean())
                if shift.std(ddof=1) > 0:
                    result = stats.ttest_1samp(shift.to_numpy(), 0.0)
                    row["donor_t"], row["donor_pvalue"] = float(result.statistic), float(result.pvalue)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["donor_fdr"] = np.nan
    return table[DONOR_SET_COLUMNS]


def donor_fdr_by_family(gsea: pd.DataFrame, library: GeneSetLibrary) -> pd.Series:
    """Benjamini-Hochberg of the donor-level p-values within each set category (positive
    controls, hypotheses, context, artefact controls, user sets: different questions, families
    fixed in advance as in Heumos et al. 2023), over every row given: every population and
    contrast of the run. A reader scans the headline heatmap across all of them at once, and a
    sample-level shift (interferon tone, handling stress) reaches every population of a sample
    and every contrast it is in: a family per population let such a chance shift through on null
    data, in one population after another."""
    family = gsea["gene_set"].map(library.meta["category"]).fillna("user")
    fdr = pd.Series(np.nan, index=gsea.index)
    tested = gsea["donor_pvalue"].notna()
    for _, members in gsea[tested].groupby(family[tested]):
        fdr.loc[members.index] = multipletests(members["donor_pvalue"], method="fdr_bh")[1]
    return fdr


def confirm_calls(gsea: pd.DataFrame, ora: pd.DataFrame, library: GeneSetLibrary, alpha: float):
    """``donor_fdr`` (:func:`donor_fdr_by_family`) and ``call`` (:func:`confirmed_call`; never a call
    where ``ambient_note`` says the soup moved the set) of the run's GSEA rows, and on those and the
    ORA rows ``stress_control`` (the stress set's call in the same contrast and population), in
    place of their placeholders."""
    gsea, ora = gsea.copy(), ora.copy()
    gsea["donor_fdr"] = donor_fdr_by_family(gsea, library)
    gsea["call"] = [confirmed_call(r.fdr, r.NES, r.donor_fdr, r.donor_shift, alpha) for r in gsea.itertuples()]
    gsea.loc[gsea["ambient_note"] != "", "call"] = "ns"
    stress = gsea[gsea["gene_set"] == STRESS_SET].set_index(["contrast", "population"])["call"]
    for frame in (gsea, ora):
        rows = pd.MultiIndex.from_frame(frame[["contrast", "population"]])
        frame["stress_control"] = stress.reindex(rows).fillna("not tested").to_numpy()
    return gsea, ora


def confirmed_call(gsea_fdr: float, nes: float, donor_fdr: float, donor_shift: float, alpha: float) -> str:
    """'up'/'down' when GSEA and the donor-level test both reach ``alpha`` in the same direction."""
    if not (gsea_fdr < alpha and donor_fdr < alpha):
        return "ns"
    if np.sign(nes) != np.sign(donor_shift):
        return "discordant"
    return "up" if nes > 0 else "down"
