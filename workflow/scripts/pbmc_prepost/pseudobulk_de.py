"""Condition DE per cell group: pseudobulk counts per sample, paired DESeq2 with donor in the design.

Cells of one sample are not independent replicates, so the unit of replication is the sample:
raw counts are summed per sample x group (lineage or subset), small pseudobulks are dropped,
genes are filtered with edgeR's ``filterByExpr`` rule, and pyDESeq2 tests ``treated`` against
``reference`` with the donor as a blocking factor (``~donor + timepoint``), so every donor is its
own control (Squair et al. 2021; Crowell et al. 2020). When no donor has both timepoints the
module falls back to an unpaired design and says so in the design note.

Callers need per-cell ``obs`` columns: the sample column (default ``sample``), the group column
(``DESettings.level``), the contrast column, optionally the pairing column and a batch column;
raw integer counts in ``layers["counts"]``.
"""

from __future__ import annotations

import hashlib
import keyword
import logging
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from pbmc_prepost import plots
from pbmc_prepost.samplesheet import Contrast

log = logging.getLogger(__name__)

__all__ = [
    "RESULT_COLUMNS",
    "SUMMARY_COLUMNS",
    "DESettings",
    "DesignChoice",
    "choose_design",
    "de_all_groups",
    "de_one_group",
    "normalized_pseudobulk",
    "paired_genes_figure",
    "pseudobulk",
    "pseudobulk_for_contrast",
    "safe_name",
    "safe_names",
    "volcano_figure",
]

#: Columns of every per-group results table, in this order.
RESULT_COLUMNS = ["gene", "baseMean", "log2FoldChange", "lfcSE", "stat", "pvalue", "padj"]
#: Columns of the per-group summary table (``note`` is the human-readable design sentence).
SUMMARY_COLUMNS = ["cell_type", "n_pairs", "n_samples", "n_cells", "n_genes_tested", "n_up", "n_down",
                   "design", "paired", "status", "reason", "note"]
# decoupler densifies each sample x group block of cells; above this many bytes per block the
# sparse indicator product is used instead (same sums, bounded memory).
_MAX_DENSE_BLOCK_BYTES = 1_000_000_000
# Above this many stored counts the blockwise indicator product sums with no copy of the whole
# matrix (decoupler's pseudobulk held about two extra copies: 4.5 GB at 100k cells).
_MAX_DECOUPLER_NNZ = 50_000_000
# Cells per block of the indicator product: a float64 copy of one block at a time.
_SUM_BLOCK_CELLS = 20_000


@dataclass
class DESettings:
    """Settings of the pseudobulk DE (config section ``de``).

    Attributes
    ----------
    level
        obs column defining the groups tested separately (``lineage`` or ``cell_type``).
    min_cells, min_counts
        Pseudobulks (sample x group) with fewer cells or fewer total counts are dropped.
    min_pairs
        Groups with fewer complete donor pairs (unpaired fallback: fewer samples in either
        level) are skipped with a reason.
    filter_min_count, filter_min_total_count, filter_large_n, filter_min_prop
        edgeR ``filterByExpr`` parameters (its defaults).
    alpha
        padj cut-off for ``n_up``/``n_down`` and DESeq2's independent filtering.
    use_batch
        Add the batch column to the design where it is estimable (not collinear).
    n_cpus
        pyDESeq2 inference processes (1 avoids joblib worker start-up).
    seed
        Seeds numpy's global generator before each fit (pyDESeq2 itself is deterministic).
    """

    level: str = "lineage"
    min_cells: int = 10
    min_counts: int = 1000
    min_pairs: int = 3
    filter_min_count: int = 10
    filter_min_total_count: int = 15
    filter_large_n: int = 10
    filter_min_prop: float = 0.7
    alpha: float = 0.05
    use_batch: bool = True
    n_cpus: int = 1
    seed: int = 0


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
        # str everywhere: numeric-looking batches/donors must stay factors, not covariates.
        return pd.DataFrame({clean: rows[orig].astype(str).str.strip().to_numpy()
                             for clean, orig in self.columns.items()},
                            index=pd.Index(rows.index.astype(str)))


# ---------------------------------------------------------------------------------------------
# names


def safe_name(label: str) -> str:
    """File-name-safe version of a group label.

    Runs of characters outside ``[A-Za-z0-9._-]`` become one ``_``; leading/trailing ``_`` are
    stripped: ``'CD4 T' -> 'CD4_T'``, ``'gd T' -> 'gd_T'``, ``'NK CD56bright' -> 'NK_CD56bright'``.
    A label with nothing usable becomes ``group_<hash>``. The mapping is stable (depends on the
    label only); use :func:`safe_names` to make a whole set unique.

    Parameters
    ----------
    label
        Group label (any str).

    Returns
    -------
    str
        The safe name.
    """
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(label)).strip("_")
    if not name or set(name) <= {"."}:
        name = f"group_{_short_hash(str(label))}"
    return name


def safe_names(labels: Iterable[str]) -> dict[str, str]:
    """Unique file-name-safe names for a set of labels.

    Labels whose :func:`safe_name` collides (``'CD4 T'`` and ``'CD4+ T'``) get a stable
    ``-<hash>`` suffix from their own text; a label that is already safe keeps its name.

    Parameters
    ----------
    labels
        Group labels.

    Returns
    -------
    dict
        label -> unique safe name.
    """
    labels = list(dict.fromkeys(str(x) for x in labels))
    base = {lab: safe_name(lab) for lab in labels}
    counts = pd.Series(list(base.values())).value_counts()
    out = {}
    for lab in labels:
        name = base[lab]
        if counts[name] > 1 and lab != name:
            name = f"{name}-{_short_hash(lab)}"
        out[lab] = name
    return out


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:6]


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


# ---------------------------------------------------------------------------------------------
# pseudobulk


def pseudobulk(adata: ad.AnnData, group_col: str, sample_col: str = "sample", layer: str | None = "counts",
               meta_columns: Sequence[str] = ()) -> ad.AnnData:
    """Sum raw counts per sample x group.

    Uses decoupler's ``dc.pp.pseudobulk(mode="sum")``; falls back to an exact sparse
    indicator-matrix product, summed over blocks of cells, when decoupler refuses the data
    (non-integer counts), would densify a block larger than ~1 GB, or the matrix is large enough
    (more than ~50 million stored counts) for decoupler's working copies to dominate the job's
    memory.

    Parameters
    ----------
    adata
        Cells; ``obs`` holds ``sample_col``, ``group_col`` and ``meta_columns``.
    group_col
        obs column defining groups (lineage, cell_type ...).
    sample_col
        obs column naming the sample.
    layer
        Layer with raw counts (None: ``X``).
    meta_columns
        Sample-level obs columns to carry over; each must be constant within a sample.

    Returns
    -------
    anndata.AnnData
        One row per non-empty sample x group (index ``<sample>_<group>``), X = summed counts
        (dense float64), var as in ``adata``. obs: ``sample_col``, ``group_col``, the meta
        columns (str), ``n_cells`` and ``total_counts``.

    Raises
    ------
    ValueError
        A column or the layer is missing, or a meta column varies within a sample.
    """
    meta_columns = [c for c in dict.fromkeys(meta_columns) if c not in (sample_col, group_col)]
    missing = [c for c in (sample_col, group_col, *meta_columns) if c not in adata.obs.columns]
    if missing:
        raise ValueError(f"pseudobulk: obs column(s) {missing} missing; obs has {list(adata.obs.columns)}")
    if not adata.var_names.is_unique:
        raise ValueError("pseudobulk: var_names are not unique; run adata.var_names_make_unique() first")
    if layer is not None and layer not in adata.layers:
        raise ValueError(f"pseudobulk: layer '{layer}' with raw counts missing; layers: {list(adata.layers)}")
    obs = pd.DataFrame({c: adata.obs[c].astype(str).to_numpy() for c in (sample_col, group_col, *meta_columns)},
                       index=adata.obs_names.astype(str))
    for column in meta_columns:
        varying = obs.groupby(sample_col)[column].nunique()
        if (varying > 1).any():
            raise ValueError(f"pseudobulk: column '{column}' is not constant within sample(s) "
                             f"{sorted(varying.index[varying > 1])[:5]}")
    counts = adata.layers[layer] if layer is not None else adata.X
    counts = sp.csr_matrix(counts)  # decoupler tests isinstance(csr_matrix), not csr_array
    block = obs.groupby([sample_col, group_col]).size().max() if len(obs) else 0
    summed = None
    if (block * adata.n_vars * counts.dtype.itemsize <= _MAX_DENSE_BLOCK_BYTES and counts.nnz <= _MAX_DECOUPLER_NNZ
            and len(obs)):
        summed = _pseudobulk_decoupler(counts, obs, adata.var_names, sample_col, group_col)
    if summed is None:
        summed = _pseudobulk_indicator(counts, obs, sample_col, group_col)
    keys, X = summed
    # Same row order whichever path summed: group, then sample.
    order = sorted(range(len(keys)), key=lambda i: (keys[i][1], keys[i][0]))
    keys, X = [keys[i] for i in order], X[order]
    n_cells = obs.groupby([sample_col, group_col]).size()
    samples = [k[0] for k in keys]
    groups = [k[1] for k in keys]
    first = obs.drop_duplicates(sample_col).set_index(sample_col)
    new_obs = pd.DataFrame({sample_col: samples, group_col: groups}, index=[f"{s}_{g}" for s, g in keys])
    for column in meta_columns:
        new_obs[column] = first.loc[samples, column].to_numpy()
    new_obs["n_cells"] = np.array([n_cells.get(k, 0) for k in keys], dtype=int)
    new_obs["total_counts"] = X.sum(axis=1)
    keep = new_obs["n_cells"].to_numpy() > 0  # combinations with no cell are not pseudobulks
    out = ad.AnnData(X=X[keep], obs=new_obs.loc[keep], var=adata.var.copy())
    out.obs_names_make_unique()
    return out


def _pseudobulk_decoupler(counts: sp.csr_matrix, obs: pd.DataFrame, var_names: pd.Index, sample_col: str,
                          group_col: str) -> tuple[list[tuple[str, str]], np.ndarray] | None:
    """decoupler's sums as (keys, dense matrix), or None when decoupler cannot do it."""
    import decoupler as dc

    # Slim object: only the two key columns, so decoupler neither scans nor copies per-cell junk.
    slim = ad.AnnData(X=counts, obs=obs[[sample_col, group_col]].copy(),
                      var=pd.DataFrame(index=pd.Index(var_names.astype(str))))
    try:
        pdata = dc.pp.pseudobulk(slim, sample_col=sample_col, groups_col=group_col, layer=None, mode="sum",
                                 empty=False)
    except (AssertionError, ValueError, TypeError) as error:
        log.info("decoupler pseudobulk not usable (%s); using the indicator product", str(error).splitlines()[0])
        return None
    keys = list(zip(pdata.obs[sample_col].astype(str), pdata.obs[group_col].astype(str)))
    X = np.asarray(pdata.X, dtype=np.float64)
    if list(pdata.var_names) != list(slim.var_names):
        return None
    return keys, X


def _pseudobulk_indicator(counts: sp.csr_matrix, obs: pd.DataFrame, sample_col: str,
                          group_col: str) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Exact sums as a (pseudobulk x cell) 0/1 matrix times the (cell x gene) counts.

    Summed over blocks of cells, so only one block at a time is copied to float64.
    """
    key = pd.MultiIndex.from_arrays([obs[sample_col], obs[group_col]])
    codes, uniques = pd.factorize(key, sort=True)
    indicator = sp.csc_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))),
                              shape=(len(uniques), len(codes)))
    X = np.zeros((len(uniques), counts.shape[1]))
    for start in range(0, counts.shape[0], _SUM_BLOCK_CELLS):
        stop = min(start + _SUM_BLOCK_CELLS, counts.shape[0])
        X += (indicator[:, start:stop] @ counts[start:stop].astype(np.float64)).toarray()
    return [tuple(map(str, u)) for u in uniques], X


def pseudobulk_for_contrast(adata: ad.AnnData, contrast: Contrast, settings: DESettings, sample_col: str = "sample",
                            batch_col: str | None = "batch") -> ad.AnnData:
    """Pseudobulk at ``settings.level`` carrying the contrast, pairing and batch columns.

    The same object :func:`de_all_groups` fits; subset it to one group for
    :func:`normalized_pseudobulk` or :func:`de_one_group`.

    Parameters
    ----------
    adata
        Annotated cells with raw counts in ``layers["counts"]``.
    contrast
        Its ``column`` is required in obs; ``pair_by`` is carried when present.
    settings
        ``settings.level`` is the group column.
    sample_col
        obs column naming the sample.
    batch_col
        Carried when given and present in obs.

    Returns
    -------
    anndata.AnnData
        See :func:`pseudobulk`.
    """
    meta = [contrast.column]
    meta += [c for c in (contrast.pair_by, batch_col) if c and c in adata.obs.columns]
    return pseudobulk(adata, settings.level, sample_col=sample_col, layer="counts", meta_columns=meta)


# ---------------------------------------------------------------------------------------------
# design


def _dummy_design(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Intercept + treatment-coded dummies of the given factor columns."""
    parts = [np.ones((len(frame), 1))]
    for column in columns:
        dummies = pd.get_dummies(frame[column].astype(str), drop_first=True, dtype=float)
        parts.append(dummies.to_numpy())
    return np.hstack(parts)


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
    levels = (contrast.reference, contrast.treated)
    frame = meta.loc[meta[contrast.column].astype(str).isin(levels)].copy()
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
                notes.append(f"{contrast.pair_by} without both {contrast.reference} and {contrast.treated} "
                             f"excluded: {', '.join(excluded)}")
            if no_donor:
                notes.append(f"{no_donor} sample(s) without a {contrast.pair_by} excluded")
            why_unpaired = ""
        else:
            why_unpaired = (f"no {contrast.pair_by} has both {contrast.reference} and {contrast.treated} samples")
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

    # Batch only where estimable: a batch nested in donor (or condition) adds nothing but rank loss.
    if batch_col and use_batch and batch_col in frame.columns:
        frame[batch_col] = frame[batch_col].astype(str)
        n_batches = frame[batch_col].nunique()
        if n_batches < 2:
            notes.append(f"{batch_col} not added (one level)")
        else:
            X = _dummy_design(frame, used + [batch_col])
            rank = np.linalg.matrix_rank(X)
            if rank < X.shape[1]:
                if paired and _determined_by(frame, batch_col, contrast.pair_by):
                    why = f"collinear with {contrast.pair_by}"
                elif _determined_by(frame, batch_col, contrast.column):
                    why = f"collinear with {contrast.column}"
                else:
                    why = "design would be rank deficient"
                notes.append(f"{batch_col} not added ({why})")
            elif len(frame) - rank < 1:
                notes.append(f"{batch_col} not added (no residual degrees of freedom left)")
            else:
                clean = _identifier(batch_col, taken)
                columns[clean] = batch_col
                terms.append(clean)
                notes.append(f"{batch_col} added ({n_batches} levels)")
    elif batch_col and not use_batch and batch_col in frame.columns and frame[batch_col].nunique() > 1:
        notes.append(f"{batch_col} not used (use_batch is off)")
    columns[cond] = contrast.column
    terms.append(cond)
    formula = "~" + " + ".join(terms)
    design_cols = [columns[t] for t in terms]
    X = _dummy_design(frame, design_cols) if len(frame) else np.ones((0, 1))
    df_residual = int(len(frame) - (np.linalg.matrix_rank(X) if len(frame) else 0))
    covariates = [columns[t] for t in terms if columns[t] != contrast.column]

    counts = frame[contrast.column].value_counts()
    n_ref, n_trt = int(counts.get(contrast.reference, 0)), int(counts.get(contrast.treated, 0))
    if paired:
        head = f"paired: {formula} on {n_pairs} {contrast.pair_by} pair{'s' if n_pairs != 1 else ''}"
    else:
        head = (f"unpaired fallback: {why_unpaired}; {formula} on {n_ref} {contrast.reference} vs "
                f"{n_trt} {contrast.treated} samples")
    renamed = [f"'{orig}' as {clean}" for clean, orig in columns.items() if clean != orig]
    if renamed:
        notes.append(f"columns renamed for the formula: {', '.join(renamed)}")
    note = "; ".join([head, *notes])
    return DesignChoice(formula=formula, paired=paired, n_pairs=n_pairs, covariates=covariates, note=note,
                        samples=list(frame.index), excluded_donors=excluded, columns=columns,
                        df_residual=df_residual)


# ---------------------------------------------------------------------------------------------
# DE


def _filter_by_expr(counts: pd.DataFrame, groups: pd.Series, settings: DESettings) -> list[str]:
    """Genes kept by edgeR's filterByExpr (decoupler's implementation), group = condition."""
    import decoupler as dc

    data = ad.AnnData(X=counts.to_numpy(dtype=np.float64), obs=pd.DataFrame({"group": groups.to_numpy()},
                                                                            index=counts.index),
                      var=pd.DataFrame(index=counts.columns))
    genes = dc.pp.filter_by_expr(data, group="group", min_count=settings.filter_min_count,
                                 min_total_count=settings.filter_min_total_count, large_n=settings.filter_large_n,
                                 min_prop=settings.filter_min_prop, inplace=False)
    return list(genes)


def _group_label(pb_group: ad.AnnData, level: str) -> str:
    if level in pb_group.obs.columns:
        values = pb_group.obs[level].astype(str).unique()
        if len(values) == 1:
            return str(values[0])
        if len(values) > 1:
            raise ValueError(f"de_one_group: pseudobulks of several groups given ({sorted(values)[:5]})")
    return "all"


def _summary(label: str, **values) -> dict:
    row = {"cell_type": label, "n_pairs": 0, "n_samples": 0, "n_cells": 0, "n_genes_tested": 0, "n_up": 0,
           "n_down": 0, "design": "", "paired": False, "status": "skipped", "reason": "", "note": ""}
    row.update(values)
    return row


def de_one_group(pb_group: ad.AnnData, contrast: Contrast, settings: DESettings,
                 batch_col: str | None = "batch") -> tuple[pd.DataFrame | None, dict]:
    """Pseudobulk DE of one group, treated vs reference, with pyDESeq2.

    Steps: drop pseudobulks below ``min_cells``/``min_counts``; keep the two contrast levels;
    :func:`choose_design`; skip when complete pairs < ``min_pairs`` (unpaired fallback: either
    level has < ``min_pairs`` samples); filterByExpr with the condition as group; DESeq2 Wald
    test of ``treated`` vs ``reference``.

    Parameters
    ----------
    pb_group
        Pseudobulks of one group (from :func:`pseudobulk`): X = summed counts, obs with
        ``n_cells``, ``total_counts``, the contrast column, optionally pairing/batch columns.
    contrast
        Levels compared and the pairing column.
    settings
        DE settings; ``settings.level`` names the obs column holding the group label.
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
    obs = pb_group.obs
    for column in ("n_cells", "total_counts", contrast.column):
        if column not in obs.columns:
            raise ValueError(f"de_one_group: pseudobulk obs lacks '{column}' (build it with pseudobulk())")
    in_contrast = obs[contrast.column].astype(str).isin([contrast.reference, contrast.treated]).to_numpy()
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
    base = dict(n_pairs=design.n_pairs, n_samples=used.n_obs, n_cells=int(meta["n_cells"].sum()),
                design=design.formula, paired=design.paired, note=design.note)
    if design.paired and design.n_pairs < settings.min_pairs:
        reason = f"{design.n_pairs} complete {contrast.pair_by} pairs < min_pairs {settings.min_pairs}"
        return None, _summary(label, reason=reason, **base)
    if not design.paired and (min(n_ref, n_trt) < max(settings.min_pairs, 1)):
        reason = (f"unpaired: {n_ref} {contrast.reference} / {n_trt} {contrast.treated} samples "
                  f"< min_pairs {settings.min_pairs}")
        return None, _summary(label, reason=reason, **base)
    if design.df_residual < 1:
        return None, _summary(label, reason=f"no residual degrees of freedom for {design.formula}", **base)

    metadata = design.metadata(kept.obs)
    # pyDESeq2 wants integers; sums of integer counts are integers, rounding only guards floats.
    counts = pd.DataFrame(np.rint(np.asarray(used.X, dtype=np.float64)).astype(np.int64),
                          index=metadata.index, columns=used.var_names.astype(str))
    cond = next(clean for clean, orig in design.columns.items() if orig == contrast.column)
    genes = _filter_by_expr(counts, metadata[cond], settings)
    if not genes:
        return None, _summary(label, reason="no gene passes filterByExpr", **base)
    counts = counts[genes]

    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.default_inference import DefaultInference
    from pydeseq2.ds import DeseqStats

    np.random.seed(settings.seed)
    inference = DefaultInference(n_cpus=settings.n_cpus)
    dds = DeseqDataSet(counts=counts, metadata=metadata, design=design.formula, refit_cooks=True,
                       inference=inference, quiet=True)
    dds.deseq2()
    stats = DeseqStats(dds, contrast=[cond, contrast.treated, contrast.reference], alpha=settings.alpha,
                       inference=inference, quiet=True)
    stats.summary()
    table = stats.results_df.copy()
    table.insert(0, "gene", table.index.astype(str))
    table = table[RESULT_COLUMNS].sort_values(["pvalue", "gene"], na_position="last", kind="mergesort")
    table = table.reset_index(drop=True)
    significant = table["padj"] < settings.alpha
    summary = _summary(label, status="tested", n_genes_tested=len(genes),
                       n_up=int((significant & (table["log2FoldChange"] > 0)).sum()),
                       n_down=int((significant & (table["log2FoldChange"] < 0)).sum()), **base)
    return table, summary


def de_all_groups(adata: ad.AnnData, contrast: Contrast, settings: DESettings, sample_col: str = "sample",
                  batch_col: str | None = "batch") -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Pseudobulk DE of every group at ``settings.level``.

    Parameters
    ----------
    adata
        Annotated cells: raw counts in ``layers["counts"]``; obs with ``sample_col``,
        ``settings.level``, the contrast column and, if present, the pairing and batch columns.
    contrast
        Levels compared and the pairing column (missing column -> unpaired fallback).
    settings
        DE settings.
    sample_col
        obs column naming the sample.
    batch_col
        obs column with the batch (None or missing: no batch).

    Returns
    -------
    tuple
        ({group label: results table} for tested groups, summary DataFrame with one row per group
        in sorted label order and columns :data:`SUMMARY_COLUMNS`).
    """
    pb = pseudobulk_for_contrast(adata, contrast, settings, sample_col=sample_col, batch_col=batch_col)
    batch = batch_col if batch_col and batch_col in pb.obs.columns else None
    tables: dict[str, pd.DataFrame] = {}
    rows = []
    labels = sorted(adata.obs[settings.level].astype(str).unique())
    group_of = pb.obs[settings.level].astype(str).to_numpy()
    for label in labels:
        table, summary = de_one_group(pb[group_of == label].copy(), contrast, settings, batch_col=batch)
        summary["cell_type"] = label
        rows.append(summary)
        if table is not None:
            tables[label] = table
        log.info("%s: %s %s", label, summary["status"], summary["reason"] or summary["note"])
    return tables, pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def normalized_pseudobulk(pb_group: ad.AnnData, genes: Sequence[str]) -> pd.DataFrame:
    """log2(CPM + 1) of selected genes per pseudobulk sample, long format.

    Parameters
    ----------
    pb_group
        Pseudobulks of one group (X = summed counts). Library size = all genes of the row.
    genes
        Genes to report; genes absent from ``var_names`` are left out.

    Returns
    -------
    pandas.DataFrame
        One row per pseudobulk x gene: the pseudobulk's obs columns (sample, donor, timepoint,
        ...; not ``n_cells``/``total_counts``), then ``gene`` and ``log2cpm``.
    """
    present = [g for g in dict.fromkeys(genes) if g in pb_group.var_names]
    X = np.asarray(pb_group.X.toarray() if sp.issparse(pb_group.X) else pb_group.X, dtype=np.float64)
    library = np.maximum(X.sum(axis=1), 1.0)
    idx = pb_group.var_names.get_indexer(present)
    values = np.log2(X[:, idx] / library[:, None] * 1e6 + 1.0)
    meta = pb_group.obs.drop(columns=[c for c in ("n_cells", "total_counts") if c in pb_group.obs.columns])
    meta = meta.astype(str).reset_index(drop=True)
    frames = [meta.assign(gene=g, log2cpm=values[:, j]) for j, g in enumerate(present)]
    if not frames:
        return meta.iloc[:0].assign(gene=pd.Series(dtype=str), log2cpm=pd.Series(dtype=float))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# figures


def volcano_figure(table: pd.DataFrame, title: str, n_label: int, paths: Sequence[str | Path],
                   alpha: float = 0.05) -> None:
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
    plt = plots.plt
    data = table.dropna(subset=["pvalue", "log2FoldChange"]).copy()
    data["y"] = -np.log10(np.maximum(data["pvalue"].to_numpy(dtype=float), 1e-300))
    significant = (data["padj"] < alpha).to_numpy()
    up = significant & (data["log2FoldChange"] > 0).to_numpy()
    down = significant & (data["log2FoldChange"] < 0).to_numpy()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    rest = ~(up | down)
    ax.scatter(data["log2FoldChange"][rest], data["y"][rest], s=5, color="lightgrey", linewidths=0,
               rasterized=True, label=f"n.s. ({int(rest.sum())})")
    ax.scatter(data["log2FoldChange"][up], data["y"][up], s=9, color="#C44E52", linewidths=0,
               label=f"up, padj < {alpha:g} ({int(up.sum())})")
    ax.scatter(data["log2FoldChange"][down], data["y"][down], s=9, color="#4C72B0", linewidths=0,
               label=f"down, padj < {alpha:g} ({int(down.sum())})")
    ax.axvline(0, color="black", linewidth=0.5)
    labelled = data.loc[significant].sort_values(["padj", "pvalue", "gene"]).head(max(n_label, 0))
    for i, (_, row) in enumerate(labelled.iterrows()):
        # Alternate small offsets so neighbouring labels overlap less (no adjustText dependency).
        dx = 4 if row["log2FoldChange"] >= 0 else -4
        dy = (i % 3 - 1) * 5
        ax.annotate(row["gene"], (row["log2FoldChange"], row["y"]), xytext=(dx, dy), textcoords="offset points",
                    fontsize=7, ha="left" if dx > 0 else "right", va="center")
    ax.set_xlabel("log2 fold change")
    ax.set_ylabel("-log10 p-value")
    ax.legend(frameon=False, fontsize=7, loc="upper left")
    ax.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=9)
    fig.tight_layout()
    plots.save(fig, paths)


def paired_genes_figure(norm: pd.DataFrame, genes: Sequence[str], contrast: Contrast, title: str,
                        paths: Sequence[str | Path]) -> None:
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
    plt = plots.plt
    genes = list(dict.fromkeys(genes)) or ["(no gene)"]
    levels = [contrast.reference, contrast.treated]
    has_pairs = contrast.pair_by in norm.columns
    donors = sorted(norm[contrast.pair_by].astype(str).unique()) if has_pairs and len(norm) else []
    colours = dict(zip(donors, plots.palette(len(donors))))
    in_levels = norm[contrast.column].astype(str).isin(levels) if len(norm) else pd.Series(dtype=bool)
    n_cols = min(4, len(genes))
    n_rows = int(np.ceil(len(genes) / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols, 2.6 * n_rows + 0.6), squeeze=False)
    for ax in axes.ravel()[len(genes):]:
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
                ax.plot(part["_x"], part["log2cpm"], marker="o", markersize=4, linewidth=1,
                        color=colours.get(donor, "grey"), label=donor)
        else:
            ax.scatter(x, rows["log2cpm"], s=14, color="grey")
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("log2(CPM + 1)", fontsize=8)
    if donors and len(donors) <= 20:
        axes[0, 0].legend(frameon=False, fontsize=6, loc="best")
    if has_pairs:
        per_donor = norm.loc[in_levels].groupby(norm[contrast.pair_by].astype(str))[contrast.column].nunique()
        n_text = f"{len(donors)} {contrast.pair_by}s, {int((per_donor == 2).sum())} with both timepoints"
    else:
        n_text = f"{norm['sample'].nunique() if 'sample' in norm else 0} samples, unpaired"
    fig.suptitle("\n".join(textwrap.wrap(f"{title} ({n_text})", 90)), fontsize=9)
    fig.tight_layout()
    plots.save(fig, paths)
