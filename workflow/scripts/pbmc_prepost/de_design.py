"""The DESeq2 design of one population's fit: paired, unpaired fallback, or the difference of changes.

:func:`choose_design` decides which samples enter, which terms (donor, batch, covariates, the
condition, the arm x time indicator of a two-arm contrast) are estimable, and says so in one
sentence; :mod:`pbmc_prepost.de` fits it.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pbmc_prepost.design import Contrast


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
