"""Did QC remove one population more at one timepoint than at the other?

A filter that takes more of a population after treatment than before (monocytes with a higher
mitochondrial baseline, activated T cells with more UMIs) changes that population's share, and the
composition test would report the filter as a drug effect. Removed barcodes are not in the merged
object, so each gets the cell type whose marker profile in the passing cells makes its own marker
counts most likely (:func:`label_removed_cells`), and each population's removal rate is tested between the contrast levels,
paired by donor, as the composition test tests shares (:func:`removal_test`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from statsmodels.stats.multitest import multipletests

from pbmc_prepost import arms
from pbmc_prepost.composition import paired_pvalue, transform_proportions
from pbmc_prepost.design import Contrast
from pbmc_prepost.pseudobulk import group_indicator
from pbmc_prepost.qc import FAIL_REASONS
from pbmc_prepost.settings import QCBiasSettings

log = logging.getLogger(__name__)

#: Removed barcodes with fewer marker UMIs than this carry no identity evidence: ``unlabelled``.
MIN_MARKER_UMIS = 3
UNLABELLED = "unlabelled"
#: Label levels, as in the composition test.
LEVELS = ("lineage", "cell_type")


def label_removed_cells(
    passing_counts: sp.spmatrix, passing_labels: np.ndarray, removed_counts: sp.spmatrix
) -> np.ndarray:
    """Cell type of each removed barcode: the most likely under the passing cells' marker profiles.

    Each cell type's profile is the share of its passing cells' marker UMIs that each marker
    takes (pooled counts, half a count added per gene); a removed barcode takes the type under
    whose profile its own marker counts are most likely (multinomial), times the type's share of
    the passing cells. Unlike nearest neighbours on normalized values, this uses the few UMIs of a
    damaged or empty-ish barcode as evidence in proportion to their number, and mitochondrial
    reads (not markers) do not dilute it.

    Parameters
    ----------
    passing_counts, removed_counts
        Raw counts of the identity markers (same genes, same order).
    passing_labels
        The annotation's cell type of each passing cell.

    Returns
    -------
    numpy.ndarray
        One label per removed barcode; :data:`UNLABELLED` where it has fewer than
        :data:`MIN_MARKER_UMIS` marker UMIs.
    """
    labels = np.full(removed_counts.shape[0], UNLABELLED, dtype=object)
    evidence = np.asarray(removed_counts.sum(axis=1)).ravel() >= MIN_MARKER_UMIS
    if not evidence.any() or passing_counts.shape[0] == 0:
        return labels
    codes, types = pd.factorize(np.asarray(passing_labels, dtype=str))
    summed = group_indicator(codes, len(types)) @ sp.csr_matrix(passing_counts, dtype=np.float64)
    pooled = np.asarray(summed.todense()) + 0.5
    log_profile = np.log(pooled / pooled.sum(axis=1, keepdims=True))
    log_prior = np.log(np.bincount(codes, minlength=len(types)) / len(codes))
    likelihood = sp.csr_matrix(removed_counts[evidence], dtype=np.float64) @ log_profile.T + log_prior
    labels[evidence] = np.asarray(types)[np.asarray(likelihood).argmax(axis=1)]
    return labels


def removal_table(
    barcodes: pd.DataFrame, sample_meta: pd.DataFrame, contrast: Contrast, arm_column: str | None = None
) -> pd.DataFrame:
    """Cells before QC and cells removed by each filter, per sample and population, at each level.

    Parameters
    ----------
    barcodes
        Every barcode of the merged samples: ``sample``, ``qc_pass``, ``fail_reason`` (``;``-joined)
        and one label column per :data:`LEVELS`.
    sample_meta
        Per sample (index): the contrast and pairing columns.
    arm_column
        The design's arm column (two-arm designs), carried for the contrasts that name arms.

    Returns
    -------
    pandas.DataFrame
        ``level``, ``sample``, the pairing and contrast columns, ``population``,
        ``cells_before_qc``, ``removed`` and one ``removed_<reason>`` per filter (a barcode can
        fail several), ``pct_removed``; every population of a level in every sample (zeros included).
    """
    reasons = barcodes["fail_reason"].fillna("").astype(str)
    failed = {reason: reasons.str.split(";").map(lambda r, reason=reason: reason in r) for reason in FAIL_REASONS}
    frames = []
    for level in LEVELS:
        frame = pd.DataFrame(
            {"sample": barcodes["sample"], "population": barcodes[level], "removed": ~barcodes["qc_pass"].astype(bool)}
            | {f"removed_{reason}": flags for reason, flags in failed.items()}
        )
        grouped = frame.groupby(["sample", "population"])
        table = grouped.size().rename("cells_before_qc").to_frame().join(grouped.sum())
        full = pd.MultiIndex.from_product(
            [sorted(barcodes["sample"].unique()), sorted(barcodes[level].unique())], names=["sample", "population"]
        )
        table = table.reindex(full, fill_value=0).reset_index()
        table.insert(0, "level", level)
        frames.append(table)
    table = pd.concat(frames, ignore_index=True)
    for column in (contrast.column, contrast.pair_by, arm_column or contrast.arm_column):
        if column and column in sample_meta and column not in table:
            table.insert(2, column, table["sample"].map(sample_meta[column]).astype(str))
    counts = [c for c in table.columns if c == "removed" or c.startswith("removed_") or c == "cells_before_qc"]
    table[counts] = table[counts].astype(np.int64)
    table["pct_removed"] = (
        100 * table["removed"] / table["cells_before_qc"].where(table["cells_before_qc"] > 0)
    ).round(2)
    return table


def removal_test(
    table: pd.DataFrame, contrast: Contrast, min_pairs: int, alpha: float = 0.05, min_share_change: float = 0.1
) -> pd.DataFrame:
    """Per level and population: is the share QC removed different between the contrast levels?

    The logit of each sample's removal rate (removed + 0.5 over cells before QC + 1, as the
    composition test transforms shares) is modelled as ``donor + condition`` (OLS), so each donor
    is its own control; Benjamini-Hochberg within each level. ``unlabelled`` barcodes are
    reported, not tested. ``share_change_from_qc`` is how much QC alone moves the population's
    kept count between the levels, ``(1 - removed_treated) / (1 - removed_reference) - 1``
    (other populations removed alike): a population ``differs`` when the test is significant
    and that change is at least ``min_share_change``, so a significant 8 % vs 10 % does not
    flag a population whose share QC moves by 2 %.

    Returns
    -------
    pandas.DataFrame
        ``level``, ``population``, ``n_pairs``, ``pct_removed_<reference>``,
        ``pct_removed_<treated>`` (removed over cells before QC, pooled over the paired samples),
        ``share_change_from_qc``, ``pvalue``, ``padj``, ``differs`` and ``note``.
    """
    ref, trt, pair_by = contrast.reference, contrast.treated, contrast.pair_by
    rows = []
    for (level, population), group in table.groupby(["level", "population"], sort=True):
        group = group[contrast.sample_mask(group)]
        levels_per_donor = group.groupby(pair_by)[contrast.column].nunique()
        donors = set(levels_per_donor.index[levels_per_donor == 2])
        paired = group[group[pair_by].isin(donors)]
        is_trt = (paired[contrast.column] == trt).to_numpy()
        before, removed = paired["cells_before_qc"].to_numpy(float), paired["removed"].to_numpy(float)
        row = {
            "level": level,
            "population": population,
            "n_pairs": int(len(donors)),
            f"pct_removed_{ref}": _pct(removed[~is_trt], before[~is_trt]),
            f"pct_removed_{trt}": _pct(removed[is_trt], before[is_trt]),
            "pvalue": math.nan,
            "note": "",
        }
        if population == UNLABELLED:
            row["note"] = f"barcodes with fewer than {MIN_MARKER_UMIS} marker UMIs: no label, not tested"
        elif len(donors) < max(2, min_pairs):
            row["note"] = f"only {len(donors)} complete {pair_by} pair(s), fewer than min_pairs={min_pairs}: not tested"
        elif removed.sum() == 0:
            row["note"] = "QC removed no cell of this population"
        elif contrast.is_interaction:
            # Difference of changes: each donor's change in logit removal, compared between arms.
            y = paired.assign(logit_removed=transform_proportions(removed, before, "logit"))
            tested = arms.compare_changes(arms.donor_changes(y, contrast, "logit_removed"), contrast, min_pairs)
            row["pvalue"], row["note"] = tested["pvalue"], tested["note"]
        else:
            y = transform_proportions(removed, before, "logit")
            row["pvalue"], row["note"] = paired_pvalue(y, paired[pair_by].to_numpy(), is_trt)
        row["share_change_from_qc"] = _share_change(paired, contrast, is_trt)
        rows.append(row)
    result = pd.DataFrame(rows)
    result["padj"] = np.nan
    for _, members in result[result["pvalue"].notna()].groupby("level"):
        result.loc[members.index, "padj"] = multipletests(members["pvalue"], method="fdr_bh")[1]
    result["differs"] = (result["padj"] < alpha) & (result["share_change_from_qc"].abs() >= min_share_change)
    for row in result[result["differs"]].itertuples():
        log.warning(
            "QC removed %s %s cells at different rates: %.1f %% %s vs %.1f %% %s (padj %.3g)",
            row.level,
            row.population,
            getattr(row, f"pct_removed_{ref}"),
            ref,
            getattr(row, f"pct_removed_{trt}"),
            trt,
            row.padj,
        )
    columns = ["level", "population", "n_pairs", f"pct_removed_{ref}", f"pct_removed_{trt}", "share_change_from_qc"]
    columns += ["pvalue", "padj"]
    return result[[*columns, "differs", "note"]]


def _share_change(paired: pd.DataFrame, contrast: Contrast, is_trt: np.ndarray) -> float:
    """How much QC alone moves the population's kept count between the levels,
    ``(1 - removed_treated) / (1 - removed_reference) - 1``; for a difference of changes, that of
    ``arm`` minus that of ``versus_arm``."""

    before, removed = paired["cells_before_qc"].to_numpy(float), paired["removed"].to_numpy(float)

    def change(rows: np.ndarray) -> float:
        kept_ref = 1 - removed[rows & ~is_trt].sum() / max(before[rows & ~is_trt].sum(), 1)
        kept_trt = 1 - removed[rows & is_trt].sum() / max(before[rows & is_trt].sum(), 1)
        return kept_trt / kept_ref - 1 if kept_ref > 0 else math.nan

    everyone = np.ones(len(paired), bool)
    if not contrast.is_interaction:
        return round(change(everyone), 4)
    arm = paired[contrast.arm_column].astype(str).to_numpy()
    return round(change(arm == contrast.arm) - change(arm == contrast.versus_arm), 4)


def removal_tests(
    table: pd.DataFrame, contrasts: Sequence[Contrast], min_pairs: int, alpha: float, min_share_change: float
) -> pd.DataFrame:
    """:func:`removal_test` of every contrast, ``contrast`` first; the ``pct_removed_<level>``
    columns of all the contrasts' levels (a row fills its own two)."""
    frames = [
        removal_test(table, contrast, min_pairs, alpha, min_share_change).assign(contrast=contrast.name)
        for contrast in contrasts
    ]
    test = pd.concat(frames, ignore_index=True)
    pct = list(dict.fromkeys(c for frame in frames for c in frame.columns if c.startswith("pct_removed_")))
    head = ["contrast", "level", "population", "n_pairs", *pct]
    return test[[*head, *[c for c in test.columns if c not in head]]]


def _pct(removed: np.ndarray, before: np.ndarray) -> float:
    return round(100 * float(removed.sum()) / float(before.sum()), 2) if before.sum() else math.nan


def bias_notes(test: pd.DataFrame, contrast: Contrast) -> dict[str, dict[str, str]]:
    """Level -> population -> note for the composition table, where QC removal differs."""
    notes: dict[str, dict[str, str]] = {}
    ref, trt = contrast.reference, contrast.treated
    if "contrast" in test:
        test = test[test["contrast"] == contrast.name]
    differs = test["differs"].astype(str) == "True"  # as written, or read back from the table
    for row in test[differs].itertuples():
        rates = (
            f"QC removed {getattr(row, f'pct_removed_{ref}'):.1f} % of these cells at '{ref}' and "
            f"{getattr(row, f'pct_removed_{trt}'):.1f} % at '{trt}' (padj {row.padj:.2g}"
        )
        if contrast.is_interaction:
            rates += f"; its change differs between {contrast.arm} and {contrast.versus_arm}"
            moved = "the difference of changes in its share"
        else:
            moved = "its share"
        notes.setdefault(row.level, {})[row.population] = (
            f"{rates}), which alone moves {moved} by {100 * row.share_change_from_qc:+.0f} %: part of the "
            "change may be the filter's (results/qc/removal_test.tsv)"
        )
    return notes


def qc_bias_tables(
    passing: ad.AnnData,
    removed: ad.AnnData,
    annotation: pd.DataFrame,
    lineage_of: dict[str, str],
    settings: QCBiasSettings,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Labels of the removed barcodes, the removal table and its test.

    Parameters
    ----------
    passing
        The annotated cells: raw counts of the identity markers in ``X``; obs ``sample``,
        ``barcode``, ``total_counts``, ``pct_counts_mt``.
    removed
        The barcodes QC removed, the same genes and obs plus ``fail_reason``.
    annotation
        ``results/annotation/cells.tsv.gz`` (``sample``, ``barcode``, ``cell_type``, ``lineage``).
    lineage_of
        Cell type -> lineage (the marker table's).
    settings
        Pairing, ``min_pairs``, FDR and the smallest share change that counts.

    Returns
    -------
    removed_labels, table, test
        Per removed barcode ``sample``, ``barcode``, ``fail_reason``, ``cell_type``, ``lineage``;
        :func:`removal_table`; :func:`removal_test`.
    """
    key = lambda frame: frame["sample"].astype(str) + ":" + frame["barcode"].astype(str)  # noqa: E731
    labels = annotation.set_index(key(annotation))
    passing_keys = key(passing.obs)
    known = passing_keys.isin(labels.index).to_numpy()
    passing = passing[known]
    cell_types = label_removed_cells(passing.X, labels.loc[passing_keys[known], "cell_type"].to_numpy(), removed.X)
    removed_labels = pd.DataFrame(
        {
            "sample": removed.obs["sample"].astype(str).to_numpy(),
            "barcode": removed.obs["barcode"].astype(str).to_numpy(),
            "fail_reason": removed.obs["fail_reason"].astype(str).to_numpy(),
            "cell_type": cell_types,
        }
    )
    removed_labels["lineage"] = removed_labels["cell_type"].map(lineage_of).fillna(UNLABELLED)
    log.info(
        "removed barcodes labelled from their nearest passing cells: %s",
        removed_labels["lineage"].value_counts().to_dict(),
    )
    barcodes = pd.concat(
        [
            annotation[["sample", "barcode", *LEVELS]].assign(qc_pass=True, fail_reason=""),
            removed_labels[["sample", "barcode", *LEVELS]].assign(
                qc_pass=False, fail_reason=removed_labels["fail_reason"]
            ),
        ],
        ignore_index=True,
    )
    study = settings.study
    table = removal_table(barcodes, study.sample_meta(), study.contrast, study.design.arm)
    test = removal_tests(table, study.contrasts, settings.min_pairs, settings.fdr, settings.min_share_change)
    return removed_labels, table, test
