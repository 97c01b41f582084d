"""Cell-type composition: per-sample proportions and a paired test per population.

Proportions are *relative*: IL-7 expands T cells, so every other population's share falls even
when its absolute number does not. Every table row and every figure says so (figures:
:mod:`pbmc_prepost.plots.composition`).

The unit of the test is the sample, not the cell. The test follows propeller (Phipson et al.
2022, Bioinformatics 38:4720): transform each sample's proportion (logit with propeller's offset,
or arcsin-square-root), then fit ``transformed ~ donor + condition`` per cell type. With one
sample per donor and level this is exactly a paired t-test on the per-donor differences;
replicate samples of a donor and level are handled by the same linear model.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.multitest import multipletests

from pbmc_prepost.design import Contrast, str_values
from pbmc_prepost.settings import CompositionSettings
from pbmc_prepost.tables import tests_table

log = logging.getLogger(__name__)

#: Repeated in every test row and figure: a share can fall without any loss of cells.
RELATIVE_NOTE = "proportions are relative: an expansion of one population lowers the others"
#: Transform name -> label used in the ``test`` column.
TRANSFORMS = {"logit": "logit", "asin_sqrt": "arcsin-sqrt"}
#: Pseudo-proportion in ``log2_ratio`` so that a population absent at one level gives a finite value.
PSEUDO_PROPORTION = 1e-6
UNPAIRED_TEST = "unpaired fallback (no donor pairs)"


def cell_counts(obs: pd.DataFrame, group_col: str, sample_meta: pd.DataFrame, contrast: Contrast) -> pd.DataFrame:
    """Count cells per sample and group, with zero counts for groups absent from a sample.

    Parameters
    ----------
    obs
        One row per cell with a ``sample`` column and ``group_col`` (the cell-type label).
    group_col
        Column of ``obs`` holding the label to count (e.g. lineage or cell type).
    sample_meta
        Indexed by sample id, with ``contrast.column`` and (optionally) ``contrast.pair_by``;
        the validated sample sheet (:attr:`SheetReport.samples`) fits. Every sample of ``obs``
        must be listed; a listed sample without cells gets ``n_cells`` 0 and proportion NaN.
    contrast
        Names the condition column and the pairing column.

    Returns
    -------
    pandas.DataFrame
        Columns ``sample``, ``<pair_by>`` ('' when the sheet has none), ``<contrast.column>``,
        ``population`` (the ``group_col`` label as str), ``n_cells``, ``proportion`` (``n_cells``
        over the sample's cells). One row per sample x label seen anywhere in ``obs``, sorted
        by sample (``sample_meta`` order) then ``population``.

    Raises
    ------
    ValueError
        Missing columns, unlabelled cells, duplicated sample ids, or cells of a sample that
        ``sample_meta`` does not list.
    """
    for column in ("sample", group_col):
        if column not in obs.columns:
            raise ValueError(f"obs has no column '{column}' (columns: {', '.join(map(str, obs.columns))})")
    if contrast.column not in sample_meta.columns:
        raise ValueError(f"sample_meta has no contrast column '{contrast.column}'")
    meta_ids = pd.Index(sample_meta.index.astype(str))
    if meta_ids.has_duplicates:
        raise ValueError(f"sample_meta lists sample(s) twice: {sorted(set(meta_ids[meta_ids.duplicated()]))}")
    # An unlabelled cell would count in the sample's total but in no group: refuse it.
    n_missing = int(obs[group_col].isna().sum())
    if n_missing:
        raise ValueError(f"{n_missing} cell(s) have no '{group_col}' label; label or drop them first")
    samples = str_values(obs["sample"])
    labels = obs[group_col].astype(str)
    unknown = sorted(set(samples) - set(meta_ids))
    if unknown:
        raise ValueError(f"obs has cells of sample(s) not in sample_meta: {', '.join(unknown)}")

    populations = sorted(set(labels))
    wide = (
        pd.DataFrame({"sample": samples.to_numpy(), "population": labels.to_numpy()})
        .groupby(["sample", "population"])
        .size()
        .unstack(fill_value=0)
        .reindex(index=meta_ids, columns=populations, fill_value=0)
    )
    counts = wide.to_numpy(dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        proportions = np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)

    pair = (
        str_values(sample_meta[contrast.pair_by])
        if contrast.pair_by in sample_meta.columns
        else pd.Series("", index=sample_meta.index)
    )
    level = str_values(sample_meta[contrast.column])
    n_types = len(populations)
    return pd.DataFrame(
        {
            "sample": np.repeat(meta_ids.to_numpy(dtype=object), n_types).astype(str),
            contrast.pair_by: np.repeat(pair.to_numpy(dtype=object), n_types).astype(str),
            contrast.column: np.repeat(level.to_numpy(dtype=object), n_types).astype(str),
            "population": np.tile(np.array(populations, dtype=object), len(meta_ids)).astype(str),
            "n_cells": counts.ravel(),
            "proportion": proportions.ravel(),
        }
    )


def transform_proportions(n_cells: np.ndarray, totals: np.ndarray, transform: str = "logit") -> np.ndarray:
    """Variance-stabilise proportions as propeller does.

    Parameters
    ----------
    n_cells, totals
        Cells of the type and cells of the sample (broadcastable arrays).
    transform
        ``"logit"``: ``log(p' / (1 - p'))`` with ``p' = (n_cells + 0.5) / (totals + 1)`` (the
        offset keeps zero counts finite); ``"asin_sqrt"``: ``arcsin(sqrt(n_cells / totals))``.

    Returns
    -------
    numpy.ndarray
        Transformed values.
    """
    n_cells = np.asarray(n_cells, dtype=float)
    totals = np.asarray(totals, dtype=float)
    if transform == "logit":
        p = (n_cells + 0.5) / (totals + 1.0)
        return np.log(p / (1.0 - p))
    if transform == "asin_sqrt":
        return np.arcsin(np.sqrt(n_cells / totals))
    raise ValueError(f"unknown transform {transform!r}; choose from {', '.join(TRANSFORMS)}")


def _sample_table(props: pd.DataFrame, contrast: Contrast) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate ``props``; return (per-sample donor/level/total, counts samples x cell types)."""
    required = ["sample", contrast.column, "population", "n_cells"]
    missing = [c for c in required if c not in props.columns]
    if missing:
        raise ValueError(f"props lacks column(s) {', '.join(missing)}; pass the output of cell_counts")
    table = props.copy()
    table["sample"] = str_values(table["sample"])
    table["population"] = str_values(table["population"])
    table["_pair"] = str_values(table[contrast.pair_by]) if contrast.pair_by in table.columns else ""
    table["_level"] = str_values(table[contrast.column])
    if table.duplicated(["sample", "population"]).any():
        raise ValueError("props has several rows for one sample and cell type")
    per_sample = table.groupby("sample", sort=False).agg(
        pair=("_pair", "first"),
        level=("_level", "first"),
        total=("n_cells", "sum"),
        n_pair=("_pair", "nunique"),
        n_level=("_level", "nunique"),
    )
    if (per_sample["n_pair"] > 1).any() or (per_sample["n_level"] > 1).any():
        raise ValueError(f"props gives a sample more than one {contrast.pair_by} or {contrast.column}")
    # Totals are the sum over the sample's rows, so a table with cell types removed would give
    # wrong proportions silently; the stored proportions reveal it.
    if "proportion" in table.columns:
        total = table["sample"].map(per_sample["total"]).to_numpy(dtype=float)
        expected = np.divide(
            table["n_cells"].to_numpy(dtype=float), total, out=np.full(len(table), np.nan), where=total > 0
        )
        stored = table["proportion"].to_numpy(dtype=float)
        bad = (total > 0) & ~np.isclose(expected, stored, rtol=1e-6, atol=1e-9)
        if bad.any():
            raise ValueError(
                "props' proportions differ from n_cells / the sample's summed n_cells: "
                "pass the full cell_counts table (all cell types of every sample)"
            )
    counts = (
        table.pivot(index="sample", columns="population", values="n_cells")
        .reindex(index=per_sample.index, columns=sorted(table["population"].unique()))
        .fillna(0)
    )
    return per_sample[["pair", "level", "total"]], counts


def paired_pvalue(y: np.ndarray, donors: np.ndarray, treated: np.ndarray) -> tuple[float, str]:
    """p-value of the condition term of ``y ~ donor + condition`` (OLS); '' or a reason for NaN."""
    levels = sorted(set(donors))
    design = np.column_stack(
        [np.ones(len(y))] + [(donors == d).astype(float) for d in levels[1:]] + [treated.astype(float)]
    )
    df_resid = len(y) - np.linalg.matrix_rank(design)
    if df_resid < 1:
        return math.nan, "no residual degrees of freedom (one pair): not tested"
    fit = sm.OLS(y, design).fit()
    # A perfectly constant change in every donor has zero residual variance: t is undefined.
    if fit.ssr <= 1e-20 * max(1.0, float(np.sum((y - y.mean()) ** 2))):
        return math.nan, "every donor changes by exactly the same amount (zero residual variance): not tested"
    return float(fit.pvalues[-1]), ""


def paired_composition_test(
    props: pd.DataFrame, contrast: Contrast, transform: str = "logit", min_pairs: int = 3
) -> pd.DataFrame:
    """Paired, propeller-style test of each cell type's proportion between the contrast levels.

    Parameters
    ----------
    props
        Output of :func:`cell_counts` (all cell types of every sample; totals are the summed
        ``n_cells`` of a sample). Samples of other contrast levels and samples without cells are
        ignored.
    contrast
        Reference and treated levels and the pairing column.
    transform
        ``"logit"`` (propeller's default: counts + 0.5, totals + 1) or ``"asin_sqrt"``.
    min_pairs
        Fewest donors with both levels for a p-value; below it the p-value is NaN and the note
        says why. In the unpaired fallback it is the fewest samples per level (at least 2).

    Returns
    -------
    pandas.DataFrame
        Columns ``population``, ``n_pairs``, ``mean_<reference>``, ``mean_<treated>`` (mean
        proportion over the tested samples), ``log2_ratio`` (log2 of mean treated over mean
        reference, each + 1e-6), ``pvalue`` (condition term of ``transformed ~ donor +
        condition``, OLS), ``padj`` (Benjamini-Hochberg over the tested cell types), ``test``,
        ``note`` (always states that proportions are relative). When no donor has both levels,
        an unpaired Welch t-test on the transformed proportions is used instead, ``test`` is
        ``"unpaired fallback (no donor pairs)"`` and ``n_pairs`` is 0. Sorted by pvalue (NaN
        last) then population.
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; choose from {', '.join(TRANSFORMS)}")
    ref, trt, pair_by = contrast.reference, contrast.treated, contrast.pair_by
    mean_ref, mean_trt = f"mean_{ref}", f"mean_{trt}"
    columns = ["population", "n_pairs", mean_ref, mean_trt, "log2_ratio", "pvalue", "padj", "test", "note"]
    samples, counts = _sample_table(props, contrast)
    in_contrast = samples["level"].isin([ref, trt])
    empty = samples.index[in_contrast & (samples["total"] <= 0)]
    keep = in_contrast & (samples["total"] > 0)
    samples, counts = samples[keep], counts.loc[keep]

    in_ref = set(samples.loc[(samples["level"] == ref) & (samples["pair"] != ""), "pair"])
    in_trt = set(samples.loc[(samples["level"] == trt) & (samples["pair"] != ""), "pair"])
    paired_donors = sorted(in_ref & in_trt)
    paired = bool(paired_donors)
    common_notes: list[str] = []
    if len(empty):
        common_notes.append(f"sample(s) without cells ignored: {', '.join(empty)}")
    if paired:
        # Samples of donors with one level carry no information on the within-donor change.
        unpaired = samples.index[~samples["pair"].isin(paired_donors)]
        if len(unpaired):
            common_notes.append(f"{len(unpaired)} sample(s) without a {pair_by} pair excluded: {', '.join(unpaired)}")
        samples = samples[samples["pair"].isin(paired_donors)]
        counts = counts.loc[samples.index]
        test_label = f"paired {TRANSFORMS[transform]} t-test, {pair_by} as block"
    else:
        common_notes.append(
            f"no {pair_by} has both a '{ref}' and a '{trt}' sample: unpaired Welch "
            f"t-test on {TRANSFORMS[transform]} proportions (less powerful)"
        )
        test_label = UNPAIRED_TEST

    totals = samples["total"].to_numpy(dtype=float)
    is_trt = (samples["level"] == trt).to_numpy()
    donors = samples["pair"].to_numpy()
    n_ref, n_trt = int((~is_trt).sum()), int(is_trt.sum())
    min_per_level = max(2, min_pairs)
    rows = []
    for population in counts.columns:
        n = counts[population].to_numpy(dtype=float)
        prop = n / totals
        m_ref = float(prop[~is_trt].mean()) if n_ref else math.nan
        m_trt = float(prop[is_trt].mean()) if n_trt else math.nan
        notes = list(common_notes)
        pvalue = math.nan
        y = transform_proportions(n, totals, transform)
        if paired and len(paired_donors) < min_pairs:
            notes.append(
                f"only {len(paired_donors)} complete {pair_by} pair(s), fewer than min_pairs={min_pairs}: not tested"
            )
        elif not paired and min(n_ref, n_trt) < min_per_level:
            notes.append(
                f"{n_ref} '{ref}' and {n_trt} '{trt}' sample(s), fewer than {min_per_level} per level: not tested"
            )
        elif n.sum() == 0:
            notes.append("no cells of this type in the compared samples: not tested")
        elif paired:
            pvalue, why = paired_pvalue(y, donors, is_trt)
            if why:
                notes.append(why)
        else:
            result = stats.ttest_ind(y[is_trt], y[~is_trt], equal_var=False)
            pvalue = float(result.pvalue)
            if not np.isfinite(pvalue):
                pvalue = math.nan
                notes.append("no variation within the levels: Welch t-test undefined")
        notes.append(RELATIVE_NOTE)
        rows.append(
            {
                "population": population,
                "n_pairs": len(paired_donors),
                mean_ref: m_ref,
                mean_trt: m_trt,
                "log2_ratio": float(np.log2((m_trt + PSEUDO_PROPORTION) / (m_ref + PSEUDO_PROPORTION))),
                "pvalue": pvalue,
                "padj": math.nan,
                "test": test_label,
                "note": "; ".join(notes),
            }
        )
    result = pd.DataFrame(rows, columns=columns)
    result["n_pairs"] = result["n_pairs"].astype(np.int64)
    for column in (mean_ref, mean_trt, "log2_ratio", "pvalue", "padj"):
        result[column] = result[column].astype(float)
    tested = result["pvalue"].notna().to_numpy()
    if tested.any():
        result.loc[tested, "padj"] = multipletests(result.loc[tested, "pvalue"], method="fdr_bh")[1]
    return result.sort_values(["pvalue", "population"], na_position="last", kind="mergesort").reset_index(drop=True)


def between_arm_composition_test(
    props: pd.DataFrame,
    contrast: Contrast,
    sample_meta: pd.DataFrame,
    transform: str = "logit",
    min_pairs: int = 3,
) -> pd.DataFrame:
    """Difference of changes of each population's share between two arms.

    Each donor's change in transformed proportion (treated minus reference) is compared between
    ``contrast.arm`` and ``contrast.versus_arm`` (:func:`pbmc_prepost.arms.compare_changes`, with
    the donor-level covariates); Benjamini-Hochberg over the populations.

    Parameters
    ----------
    props
        :func:`cell_counts` of every sample.
    contrast
        A two-arm contrast.
    sample_meta
        Indexed by sample: the arm column and the covariates.
    transform, min_pairs
        As :func:`paired_composition_test` (``min_pairs`` per arm).

    Returns
    -------
    pandas.DataFrame
        The columns of :func:`paired_composition_test` (``mean_<level>`` over both arms' donors,
        ``log2_ratio`` the arm's log2 ratio of mean proportions minus the control arm's) plus
        ``change_arm``, ``change_versus_arm`` (mean change of the transformed share per arm) and
        ``difference`` (their difference, adjusted for covariates).
    """
    from pbmc_prepost import arms

    ref, trt = contrast.reference, contrast.treated
    mean_ref, mean_trt = f"mean_{ref}", f"mean_{trt}"
    table = props[props["n_cells"].groupby(props["sample"]).transform("sum") > 0].copy()
    table[contrast.arm_column] = table["sample"].map(sample_meta[contrast.arm_column].astype(str))
    table = table[contrast.sample_mask(table)]
    totals = table.groupby("sample")["n_cells"].transform("sum").to_numpy(dtype=float)
    table["y"] = transform_proportions(table["n_cells"].to_numpy(dtype=float), totals, transform)
    covariates = arms.donor_covariates(sample_meta, contrast)
    rows = []
    for population, part in table.groupby("population", sort=True):
        changes = arms.donor_changes(part, contrast, "y")
        result = arms.compare_changes(changes, contrast, min_pairs, covariates)
        donors = changes.index
        used = part[part[contrast.pair_by].astype(str).isin(donors)]
        by = used.groupby([contrast.arm_column, contrast.column])["proportion"].mean()

        def ratio(arm: str, by: pd.Series = by) -> float:
            treated = by.get((arm, trt), np.nan) + PSEUDO_PROPORTION
            return float(np.log2(treated / (by.get((arm, ref), np.nan) + PSEUDO_PROPORTION)))

        notes = [result["note"]]
        if part["n_cells"].sum() == 0:
            notes.append("no cells of this type in the compared samples")
            result["pvalue"] = math.nan
        notes.append(RELATIVE_NOTE)
        rows.append(
            {
                "population": population,
                "n_pairs": len(donors),
                mean_ref: float(used.loc[used[contrast.column] == ref, "proportion"].mean()),
                mean_trt: float(used.loc[used[contrast.column] == trt, "proportion"].mean()),
                "log2_ratio": ratio(contrast.arm) - ratio(contrast.versus_arm),
                "pvalue": result["pvalue"],
                "padj": math.nan,
                "test": (
                    f"difference of changes: {TRANSFORMS[transform]} share, donors' changes "
                    f"{contrast.arm} vs {contrast.versus_arm}"
                ),
                "note": "; ".join(n for n in notes if n),
                "change_arm": result["change_arm"],
                "change_versus_arm": result["change_versus_arm"],
                "difference": result["difference"],
            }
        )
    result = tests_table(rows)
    if result.empty:
        return result
    return result.sort_values(["pvalue", "population"], na_position="last", kind="mergesort").reset_index(drop=True)


def contrast_composition_test(
    props: pd.DataFrame, contrast: Contrast, sample_meta: pd.DataFrame, transform: str, min_pairs: int
) -> pd.DataFrame:
    """The composition test of one contrast on its own samples: paired within an arm (or over every
    donor), or the difference of changes between two arms."""
    if contrast.is_interaction:
        return between_arm_composition_test(props, contrast, sample_meta, transform, min_pairs)
    samples = sample_meta.index[contrast.sample_mask(sample_meta)] if contrast.arms else sample_meta.index
    own = props[props["sample"].isin(samples)] if contrast.arms else props
    test = paired_composition_test(own, contrast, transform, min_pairs)
    if contrast.arm is not None:
        test["note"] = [f"donors of arm {contrast.arm} only; {note}" for note in test["note"]]
    return test


#: Annotation levels whose composition is tested: lineages, then subsets.
LEVELS = ("lineage", "cell_type")


def composition_tables(
    cells: pd.DataFrame,
    settings: CompositionSettings,
    *population_notes: dict[str, dict[str, str]],
    contrast_notes: dict[str, dict[str, dict[str, str]]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Proportions and the tests of every contrast at every level of :data:`LEVELS`.

    Parameters
    ----------
    cells
        One row per annotated cell: ``sample`` and one column per level.
    settings
        Transform, ``min_pairs`` and the study (contrasts and sample metadata).
    population_notes
        Level -> population -> note, appended to the population's ``note``: a flagged annotation
        (:func:`pbmc_prepost.annotation_checks.population_notes`), a QC removal rate that differs
        between the levels (:func:`pbmc_prepost.qc_bias.bias_notes`), for every contrast.
    contrast_notes
        Contrast name -> level -> population -> note, for that contrast's rows only (the QC
        removal test of each contrast).

    Returns
    -------
    proportions, tests
        :func:`cell_counts` of every level stacked with a ``level`` column first (plus the arm
        column when the design has one); the :func:`contrast_composition_test` of every contrast
        and level stacked, with ``contrast`` and ``level`` first.
    """
    study, meta = settings.study, settings.study.sample_meta()
    design = study.design
    proportions, tests = [], []
    for level in LEVELS:
        props = cell_counts(cells, level, meta, study.contrast)
        for contrast in study.contrasts:
            test = contrast_composition_test(props, contrast, meta, settings.transform, settings.min_pairs)
            for notes in [*population_notes, (contrast_notes or {}).get(contrast.name, {})]:
                extra = notes.get(level, {})
                test["note"] = [
                    f"{note}; {extra[p]}" if p in extra else note for p, note in zip(test["population"], test["note"])
                ]
            log.info("%s, %s composition:\n%s", contrast.name, level, test.to_string(index=False))
            tests.append(test.assign(level=level, contrast=contrast.name))
        if design.arm and design.arm in meta.columns:
            props[design.arm] = props["sample"].map(meta[design.arm].astype(str))
        proportions.append(props.assign(level=level))

    def first(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
        frame = pd.concat(frames, ignore_index=True)
        return frame[[*columns, *[c for c in frame.columns if c not in columns]]]

    tests = first(tests, ["contrast", "level"])
    order = {name: i for i, name in enumerate(design.names)}
    tests = tests.iloc[np.argsort(tests["contrast"].map(order).to_numpy(), kind="stable")].reset_index(drop=True)
    return first(proportions, ["level"]), tests
