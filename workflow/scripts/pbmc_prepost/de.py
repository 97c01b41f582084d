"""Condition DE per population: paired DESeq2 on pseudobulks, donor in the design.

pyDESeq2 (Muzellec et al. 2023) tests ``treated`` against ``reference`` on the pseudobulks of one
population (:mod:`pbmc_prepost.pseudobulk`) with the donor as a blocking factor
(``~donor + timepoint``), so every donor is its own control (Squair et al. 2021; Crowell et al.
2020). Genes are filtered with edgeR's ``filterByExpr`` rule (decoupler). When no donor has both
timepoints the design falls back to an unpaired one and says so in the design note; a batch
enters only where it is estimable.

Callers need per-pseudobulk ``obs`` columns: ``n_cells``, ``total_counts``, the contrast column,
optionally the pairing column and a batch column.
"""

from __future__ import annotations

import keyword
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from pbmc_prepost.design import Contrast, safe_names
from pbmc_prepost.pseudobulk import pseudobulk_for_contrast
from pbmc_prepost.settings import DESettings

log = logging.getLogger(__name__)

#: Columns of every per-population results table, in this order.
RESULT_COLUMNS = ["gene", "baseMean", "log2FoldChange", "lfcSE", "stat", "pvalue", "padj"]
#: Columns of the per-population summary table (``note`` is the human-readable design sentence).
SUMMARY_COLUMNS = (
    "population n_pairs n_samples n_cells n_genes_tested n_up n_down design paired status reason note".split()
)


@dataclass
class DesignChoice:
    """The design chosen for one group's fit.

    Attributes
    ----------
    formula
        Formula over the *clean* column names of :meth:`metadata` (e.g. ``"~donor + timepoint"``).
    paired
        Donor is in the design.
    n_pairs
        Donors with both contrast levels among the kept samples (0 when unpaired).
    covariates
        Original obs column names in the design besides the contrast column (e.g. ``["donor"]``).
    note
        One human sentence describing the design and everything left out.
    samples
        Index labels of the meta rows used in the fit.
    excluded_donors
        Donors dropped from the paired fit because they lack one of the two levels.
    columns
        Clean column name -> original column name, for every column in the formula.
    df_residual
        Samples minus rank of the design matrix.
    tested
        (clean column, treated level, reference level) of the coefficient tested.
    derived
        Clean name -> values (indexed like the rows) of columns built here, not read from obs: the
        arm x time indicator of a difference of changes.
    numeric
        Clean names of covariates entered as numbers (one slope), not as factors.
    """

    formula: str
    paired: bool
    n_pairs: int
    covariates: list[str]
    note: str
    samples: list[str] = field(default_factory=list)
    excluded_donors: list[str] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)
    df_residual: int = 0
    tested: tuple[str, str, str] = ("", "", "")
    derived: dict[str, pd.Series] = field(default_factory=dict)
    numeric: set[str] = field(default_factory=set)

    def metadata(self, meta: pd.DataFrame) -> pd.DataFrame:
        """Metadata for pyDESeq2: the used rows, the formula's columns under clean names, as str.

        Parameters
        ----------
        meta
            The frame given to :func:`choose_design` (or a superset of its rows).

        Returns
        -------
        pandas.DataFrame
            Index = :attr:`samples`; one str column per clean name in :attr:`columns`.
        """
        rows = meta.loc[self.samples]

        def values(clean: str, orig: str) -> np.ndarray:
            if clean in self.derived:
                return self.derived[clean].loc[rows.index].to_numpy()
            if clean in self.numeric:
                return pd.to_numeric(rows[orig]).to_numpy(dtype=float)
            # str otherwise: numeric-looking batches/donors must stay factors, not covariates.
            return rows[orig].astype(str).str.strip().to_numpy()

        return pd.DataFrame(
            {clean: values(clean, orig) for clean, orig in self.columns.items()},
            index=pd.Index(rows.index.astype(str)),
        )


def _identifier(name: str, taken: set[str]) -> str:
    """A formula-safe identifier for a column name, distinct from ``taken``."""
    clean = re.sub(r"\W+", "_", str(name)).strip("_") or "column"
    if clean[0].isdigit() or keyword.iskeyword(clean) or clean in {"C", "I", "Q"}:
        clean = f"v_{clean}"  # formulaic reserves C(), I() and Q()
    candidate, i = clean, 2
    while candidate in taken:
        candidate, i = f"{clean}_{i}", i + 1
    taken.add(candidate)
    return candidate


def _dummy_design(frame: pd.DataFrame, columns: Sequence[str], numeric: Sequence[str] = ()) -> np.ndarray:
    """Intercept + treatment-coded dummies of the given factor columns (``numeric`` ones as numbers)."""
    parts = [np.ones((len(frame), 1))]
    for column in columns:
        if column in numeric:
            parts.append(pd.to_numeric(frame[column]).to_numpy(dtype=float)[:, None])
            continue
        dummies = pd.get_dummies(frame[column].astype(str), drop_first=True, dtype=float)
        parts.append(dummies.to_numpy())
    return np.hstack(parts)


def _is_numeric(values: pd.Series) -> bool:
    """A covariate entered as a number: every value parses, and more than two distinct values."""
    parsed = pd.to_numeric(values, errors="coerce")
    return bool(parsed.notna().all() and parsed.nunique() > 2)


#: Values of the arm x time indicator of a difference of changes.
INTERACTION_LEVELS = ("no", "yes")


def _determined_by(frame: pd.DataFrame, target: str, by: str) -> bool:
    """True when ``target`` takes one value within every level of ``by`` (nested in it)."""
    return bool((frame.groupby(by)[target].nunique() <= 1).all())


def choose_design(meta: pd.DataFrame, contrast: Contrast, batch_col: str | None, use_batch: bool) -> DesignChoice:
    """Choose the DESeq2 design for one group's pseudobulks.

    Paired (``~donor + timepoint``) when at least one donor has both levels; donors with one
    level only are dropped from the paired fit (named in the note). Otherwise the unpaired
    fallback ``~timepoint``. Batch is added when it has more than one level among the used
    samples and the design with it stays full rank with at least one residual degree of freedom.

    Parameters
    ----------
    meta
        One row per pseudobulk: the contrast column, optionally the pairing and batch columns.
        Rows of other contrast levels are ignored.
    contrast
        Which levels are compared and the pairing column.
    batch_col
        Batch column (None or missing: no batch).
    use_batch
        Whether batch may be added at all.

    Returns
    -------
    DesignChoice
        Formula over clean column names, sample rows to use, and a note.
    """
    if contrast.column not in meta.columns:
        raise ValueError(f"choose_design: contrast column '{contrast.column}' missing from the metadata")
    if contrast.arms and contrast.arm_column not in meta.columns:
        raise ValueError(f"choose_design: arm column '{contrast.arm_column}' missing from the metadata")
    frame = meta.loc[contrast.sample_mask(meta)].copy()
    frame[contrast.column] = frame[contrast.column].astype(str)
    taken: set[str] = set()
    cond = _identifier(contrast.column, taken)
    pair_values = None
    if contrast.pair_by and contrast.pair_by in frame.columns:
        pair_values = frame[contrast.pair_by].astype("string").fillna("").str.strip()
    notes: list[str] = []
    excluded: list[str] = []
    paired = False
    n_pairs = 0
    if pair_values is not None and (pair_values != "").any():
        has = frame.assign(_donor=pair_values).loc[lambda f: f["_donor"] != ""]
        per_donor = has.groupby("_donor")[contrast.column].nunique()
        complete = sorted(per_donor.index[per_donor == 2])
        if complete:
            paired = True
            n_pairs = len(complete)
            excluded = sorted(per_donor.index[per_donor < 2])
            no_donor = int((pair_values == "").sum())
            frame = frame.loc[pair_values.isin(complete)].copy()
            frame[contrast.pair_by] = pair_values.loc[frame.index]
            if excluded:
                notes.append(
                    f"{contrast.pair_by} without both {contrast.reference} and {contrast.treated} "
                    f"excluded: {', '.join(excluded)}"
                )
            if no_donor:
                notes.append(f"{no_donor} sample(s) without a {contrast.pair_by} excluded")
            why_unpaired = ""
        else:
            why_unpaired = f"no {contrast.pair_by} has both {contrast.reference} and {contrast.treated} samples"
    elif pair_values is None:
        why_unpaired = f"pairing column '{contrast.pair_by}' missing"
    else:
        why_unpaired = f"pairing column '{contrast.pair_by}' is empty"

    columns: dict[str, str] = {}
    terms: list[str] = []
    if paired:
        donor = _identifier(contrast.pair_by, taken)
        columns[donor] = contrast.pair_by
        terms.append(donor)
    used = [orig for orig in columns.values()] + [contrast.column]
    numeric: set[str] = set()

    # Batch and covariates only where estimable: one nested in donor (or condition) adds nothing
    # but rank loss; a donor-level covariate in a paired model is absorbed by the donor term.
    candidates = [(batch_col, "batch")] if batch_col and use_batch else []
    candidates += [(c, "covariate") for c in contrast.covariates if c != batch_col]
    for column, kind in candidates:
        if column not in frame.columns:
            if kind == "covariate":
                notes.append(f"covariate {column} not added (not in the metadata)")
            continue
        is_number = kind == "covariate" and _is_numeric(frame[column])
        if not is_number:
            frame[column] = frame[column].astype(str)
        n_levels = frame[column].nunique()
        if n_levels < 2:
            notes.append(f"{column} not added (one level)")
            continue
        X = _dummy_design(frame, [*used, column], numeric=[*numeric, column] if is_number else sorted(numeric))
        rank = np.linalg.matrix_rank(X)
        if rank < X.shape[1]:
            if paired and _determined_by(frame, column, contrast.pair_by):
                why = (
                    f"absorbed by {contrast.pair_by}: constant within every donor"
                    if kind == "covariate"
                    else f"collinear with {contrast.pair_by}"
                )
            elif _determined_by(frame, column, contrast.column):
                why = f"collinear with {contrast.column}"
            else:
                why = "design would be rank deficient"
            notes.append(f"{column} not added ({why})")
        elif len(frame) - rank < 1:
            notes.append(f"{column} not added (no residual degrees of freedom left)")
        else:
            clean = _identifier(column, taken)
            columns[clean] = column
            terms.append(clean)
            used.append(column)
            if is_number:
                numeric.add(clean)
                numeric.add(column)
                notes.append(f"{column} added (numeric)")
            else:
                notes.append(f"{column} added ({n_levels} levels)")
    if batch_col and not use_batch and batch_col in frame.columns and frame[batch_col].nunique() > 1:
        notes.append(f"{batch_col} not used (use_batch is off)")
    columns[cond] = contrast.column
    terms.append(cond)
    derived: dict[str, pd.Series] = {}
    tested = (cond, contrast.treated, contrast.reference)
    per_arm = ""
    if contrast.is_interaction:
        # Difference of changes: ~donor + time + time:arm. The donor term absorbs the arm main
        # effect; the indicator (treated level in `arm`) is the extra change under `arm`.
        arm_values = frame[contrast.arm_column].astype(str) if contrast.arm_column in frame else None
        if arm_values is None:
            raise ValueError(f"choose_design: arm column '{contrast.arm_column}' missing from the metadata")
        ixn = _identifier(f"{contrast.column}_x_{contrast.arm_column}", taken)
        derived[ixn] = pd.Series(
            np.where(
                (frame[contrast.column] == contrast.treated) & (arm_values == contrast.arm), *INTERACTION_LEVELS[::-1]
            ),
            index=frame.index,
        )
        frame[ixn] = derived[ixn]
        columns[ixn] = ixn
        terms.append(ixn)
        tested = (ixn, INTERACTION_LEVELS[1], INTERACTION_LEVELS[0])
        if paired:
            donors_arm = frame.drop_duplicates(contrast.pair_by).set_index(contrast.pair_by)[contrast.arm_column]
            counts_arm = donors_arm.astype(str).value_counts()
            per_arm = " + ".join(f"{int(counts_arm.get(a, 0))} {a}" for a in contrast.arms)
    formula = "~" + " + ".join(terms)
    design_cols = [columns[t] if t not in derived else t for t in terms]
    X = _dummy_design(frame, design_cols, numeric=sorted(numeric)) if len(frame) else np.ones((0, 1))
    df_residual = int(len(frame) - (np.linalg.matrix_rank(X) if len(frame) else 0))
    covariates = [columns[t] for t in terms if columns[t] != contrast.column and t not in derived]

    counts = frame[contrast.column].value_counts()
    n_ref, n_trt = int(counts.get(contrast.reference, 0)), int(counts.get(contrast.treated, 0))
    plural = "s" if n_pairs != 1 else ""
    if paired and contrast.is_interaction:
        head = (
            f"difference of changes: {formula}, testing {tested[0]} = ({contrast.treated} - {contrast.reference} "
            f"in {contrast.arm}) - ({contrast.treated} - {contrast.reference} in {contrast.versus_arm}) on "
            f"{n_pairs} {contrast.pair_by} pair{plural} ({per_arm})"
        )
    elif paired:
        head = f"paired: {formula} on {n_pairs} {contrast.pair_by} pair{plural}"
    else:
        head = (
            f"unpaired fallback: {why_unpaired}; {formula} on {n_ref} {contrast.reference} vs "
            f"{n_trt} {contrast.treated} samples"
        )
    if contrast.arm is not None and not contrast.is_interaction:
        head += f" of arm {contrast.arm}"
    renamed = [f"'{orig}' as {clean}" for clean, orig in columns.items() if clean != orig and clean not in derived]
    if renamed:
        notes.append(f"columns renamed for the formula: {', '.join(renamed)}")
    note = "; ".join([head, *notes])
    return DesignChoice(
        formula=formula,
        paired=paired,
        n_pairs=n_pairs,
        covariates=covariates,
        note=note,
        samples=list(frame.index),
        excluded_donors=excluded,
        columns=columns,
        df_residual=df_residual,
        tested=tested,
        derived=derived,
        numeric={c for c in numeric if c in columns},
    )


def _filter_by_expr(counts: pd.DataFrame, groups: pd.Series, settings: DESettings) -> list[str]:
    """Genes kept by edgeR's filterByExpr (decoupler's implementation), group = condition."""
    import decoupler as dc

    data = ad.AnnData(
        X=counts.to_numpy(dtype=np.float64),
        obs=pd.DataFrame({"group": groups.to_numpy()}, index=counts.index),
        var=pd.DataFrame(index=counts.columns),
    )
    genes = dc.pp.filter_by_expr(
        data,
        group="group",
        min_count=settings.filter_min_count,
        min_total_count=settings.filter_min_total_count,
        large_n=settings.filter_large_n,
        min_prop=settings.filter_min_prop,
        inplace=False,
    )
    return list(genes)


def _group_label(pb_group: ad.AnnData, level: str) -> str:
    if level in pb_group.obs.columns:
        values = pb_group.obs[level].astype(str).unique()
        if len(values) == 1:
            return str(values[0])
        if len(values) > 1:
            raise ValueError(f"fit_population: pseudobulks of several populations given ({sorted(values)[:5]})")
    return "all"


def _pairs_per_arm(meta: pd.DataFrame, contrast: Contrast) -> dict[str, int]:
    """Donors with both levels, per arm of a two-arm contrast."""
    levels = meta.groupby(meta[contrast.pair_by].astype(str))[contrast.column].nunique()
    complete = levels.index[levels == 2]
    arm_of = meta.groupby(meta[contrast.pair_by].astype(str))[contrast.arm_column].first().astype(str)
    return {arm: int((arm_of.loc[complete] == arm).sum()) for arm in contrast.arms}


def _summary(label: str, **values) -> dict:
    row = {
        "population": label,
        "n_pairs": 0,
        "n_samples": 0,
        "n_cells": 0,
        "n_genes_tested": 0,
        "n_up": 0,
        "n_down": 0,
        "design": "",
        "paired": False,
        "status": "skipped",
        "reason": "",
        "note": "",
    }
    row.update(values)
    return row


def fit_population(
    pb_group: ad.AnnData, settings: DESettings, batch_col: str | None = "batch"
) -> tuple[pd.DataFrame | None, dict]:
    """Pseudobulk DE of one population, treated vs reference, with pyDESeq2.

    Steps: drop pseudobulks below ``min_cells``/``min_counts``; keep the two contrast levels;
    :func:`choose_design`; skip when complete pairs < ``min_pairs`` (unpaired fallback: either
    level has < ``min_pairs`` samples); filterByExpr with the condition as group; DESeq2 Wald
    test of ``treated`` vs ``reference``.

    Parameters
    ----------
    pb_group
        Pseudobulks of one population (:func:`pbmc_prepost.pseudobulk.pseudobulk`): X = summed
        counts, obs with ``n_cells``, ``total_counts``, the contrast column, optionally
        pairing/batch columns.
    settings
        DE settings: the contrast (levels and pairing column); ``level`` names the obs column
        holding the population label.
    batch_col
        Batch column (None: no batch).

    Returns
    -------
    tuple
        (results table or None when skipped, summary dict). The table has columns
        :data:`RESULT_COLUMNS`, sorted by pvalue (NaN last); NaN padj (independent filtering,
        Cooks outliers) stays NaN. The summary has the keys of :data:`SUMMARY_COLUMNS`:
        ``design`` is the formula, ``note`` the design sentence, ``reason`` why it was skipped.
    """
    label = _group_label(pb_group, settings.level)
    contrast = settings.contrast
    obs = pb_group.obs
    for column in ("n_cells", "total_counts", contrast.column):
        if column not in obs.columns:
            raise ValueError(f"fit_population: pseudobulk obs lacks '{column}' (build it with pseudobulk())")
    in_contrast = contrast.sample_mask(obs)
    big_cells = (obs["n_cells"] >= settings.min_cells).to_numpy()
    big = big_cells & (obs["total_counts"] >= settings.min_counts).to_numpy()
    if not (in_contrast & big_cells).any():
        reason = f"no pseudobulk with >= {settings.min_cells} cells"
        return None, _summary(label, reason=reason, note=reason)
    if not (in_contrast & big).any():
        reason = f"no pseudobulk with >= {settings.min_cells} cells and >= {settings.min_counts} counts"
        return None, _summary(label, reason=reason, note=reason)
    kept = pb_group[in_contrast & big]
    design = choose_design(kept.obs, contrast, batch_col, settings.use_batch)
    used = kept[design.samples]
    meta = used.obs
    n_by_level = meta[contrast.column].astype(str).value_counts()
    n_ref = int(n_by_level.get(contrast.reference, 0))
    n_trt = int(n_by_level.get(contrast.treated, 0))
    base = dict(
        n_pairs=design.n_pairs,
        n_samples=used.n_obs,
        n_cells=int(meta["n_cells"].sum()),
        design=design.formula,
        paired=design.paired,
        note=design.note,
    )
    if contrast.is_interaction:
        pairs_per_arm = _pairs_per_arm(meta, contrast) if design.paired else dict.fromkeys(contrast.arms, 0)
        if min(pairs_per_arm.values()) < settings.min_pairs:
            text = ", ".join(f"{n} {arm}" for arm, n in pairs_per_arm.items())
            reason = f"complete {contrast.pair_by} pairs per arm ({text}) < min_pairs {settings.min_pairs}"
            return None, _summary(label, reason=reason, **base)
    if design.paired and design.n_pairs < settings.min_pairs:
        reason = f"{design.n_pairs} complete {contrast.pair_by} pairs < min_pairs {settings.min_pairs}"
        return None, _summary(label, reason=reason, **base)
    if not design.paired and (min(n_ref, n_trt) < max(settings.min_pairs, 1)):
        reason = (
            f"unpaired: {n_ref} {contrast.reference} / {n_trt} {contrast.treated} samples "
            f"< min_pairs {settings.min_pairs}"
        )
        return None, _summary(label, reason=reason, **base)
    if design.df_residual < 1:
        return None, _summary(label, reason=f"no residual degrees of freedom for {design.formula}", **base)

    metadata = design.metadata(kept.obs)
    # pyDESeq2 wants integers; sums of integer counts are integers, rounding only guards floats.
    counts = pd.DataFrame(
        np.rint(np.asarray(used.X, dtype=np.float64)).astype(np.int64),
        index=metadata.index,
        columns=used.var_names.astype(str),
    )
    cond = next(clean for clean, orig in design.columns.items() if orig == contrast.column)
    groups = metadata[cond]
    if contrast.is_interaction:  # filterByExpr's smallest group: one arm at one timepoint
        groups = groups + "_" + meta[contrast.arm_column].astype(str).to_numpy()
    genes = _filter_by_expr(counts, groups, settings)
    if not genes:
        return None, _summary(label, reason="no gene passes filterByExpr", **base)
    counts = counts[genes]

    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.default_inference import DefaultInference
    from pydeseq2.ds import DeseqStats

    np.random.seed(settings.seed)  # noqa: NPY002 (pyDESeq2 draws from numpy's global generator)
    inference = DefaultInference(n_cpus=settings.n_cpus)
    dds = DeseqDataSet(
        counts=counts, metadata=metadata, design=design.formula, refit_cooks=True, inference=inference, quiet=True
    )
    dds.deseq2()
    stats = DeseqStats(
        dds,
        contrast=list(design.tested),
        alpha=settings.alpha,
        inference=inference,
        quiet=True,
    )
    stats.summary()
    table = stats.results_df.copy()
    table.insert(0, "gene", table.index.astype(str))
    table = table[RESULT_COLUMNS].sort_values(["pvalue", "gene"], na_position="last", kind="mergesort")
    table = table.reset_index(drop=True)
    significant = table["padj"] < settings.alpha
    summary = _summary(
        label,
        status="tested",
        n_genes_tested=len(genes),
        n_up=int((significant & (table["log2FoldChange"] > 0)).sum()),
        n_down=int((significant & (table["log2FoldChange"] < 0)).sum()),
        **base,
    )
    return table, summary


def fit_all_populations(
    adata: ad.AnnData, settings: DESettings, sample_col: str = "sample", batch_col: str | None = "batch"
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Pseudobulk DE of every population at ``settings.level``.

    Parameters
    ----------
    adata
        Annotated cells: raw counts in ``layers["counts"]``; obs with ``sample_col``,
        ``settings.level``, the contrast column and, if present, the pairing and batch columns.
    settings
        DE settings (the contrast's pairing column missing from obs -> unpaired fallback).
    sample_col
        obs column naming the sample.
    batch_col
        obs column with the batch (None or missing: no batch).

    Returns
    -------
    tuple
        ({population: results table} for tested populations, summary DataFrame with one row per
        population in sorted label order and columns :data:`SUMMARY_COLUMNS`).
    """
    pb = pseudobulk_for_contrast(adata, settings, sample_col=sample_col, batch_col=batch_col)
    batch = batch_col if batch_col and batch_col in pb.obs.columns else None
    tables: dict[str, pd.DataFrame] = {}
    rows = []
    labels = sorted(adata.obs[settings.level].astype(str).unique())
    group_of = pb.obs[settings.level].astype(str).to_numpy()
    for label in labels:
        table, summary = fit_population(pb[group_of == label].copy(), settings, batch_col=batch)
        summary["population"] = label
        rows.append(summary)
        if table is not None:
            tables[label] = table
        log.info("%s: %s %s", label, summary["status"], summary["reason"] or summary["note"])
    return tables, pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def fit_population_table(
    pb_group: ad.AnnData, label: str, settings: DESettings, batch_col: str | None = "batch"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`fit_population` as the workflow writes it: the results table (empty, with its
    columns, when the population was skipped) and a one-row summary naming contrast, population
    and level."""
    table, summary = fit_population(pb_group, settings, batch_col=batch_col)
    summary.update(population=label, level=settings.level)
    frame = pd.DataFrame([summary])
    frame.insert(0, "contrast", settings.contrast.name)
    return (table if table is not None else pd.DataFrame(columns=RESULT_COLUMNS)), frame


def contrast_pseudobulks(pb_group: ad.AnnData, contrast: Contrast) -> ad.AnnData:
    """The pseudobulks a contrast uses: its two levels, and its arms when it names any."""
    return pb_group[contrast.sample_mask(pb_group.obs)].copy()


def combine_summaries(
    paths: Sequence[str | Path], annotation_notes: dict[str, str] | None = None, contrasts: Sequence[str] = ()
) -> pd.DataFrame:
    """The per-population summaries of one run in one table, ``contrast`` and ``level`` first,
    contrasts in config order, populations sorted; the note of a population whose annotation is
    flagged says so."""
    summary = pd.concat([pd.read_csv(path, sep="\t", keep_default_na=False) for path in paths], ignore_index=True)
    order = {name: i for i, name in enumerate(contrasts)}
    summary = summary.assign(_order=summary["contrast"].map(order).fillna(len(order)))
    summary = summary.sort_values(["_order", "population"], kind="mergesort").drop(columns="_order")
    notes = annotation_notes or {}
    summary["note"] = [
        f"{note}; {notes[p]}" if p in notes else note for p, note in zip(summary["population"], summary["note"])
    ]
    return summary[["contrast", "level", *[c for c in SUMMARY_COLUMNS if c in summary.columns]]].reset_index(drop=True)


def read_population_tables(summary: pd.DataFrame, paths: Sequence[str | Path]) -> dict[tuple[str, str], pd.DataFrame]:
    """The DE tables of the tested (contrast, population) rows of ``summary``, found among ``paths``
    (``results/de/<contrast>/<population>.tsv``) by contrast folder and safe name."""
    names = safe_names(summary["population"])
    path_of = {(Path(path).parent.name, Path(path).stem): path for path in paths}
    tested = summary.loc[summary["status"] == "tested", ["contrast", "population"]]
    return {
        (name, label): pd.read_csv(path_of[(name, names[label])], sep="\t")
        for name, label in tested.itertuples(index=False)
    }
