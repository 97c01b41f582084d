"""Pseudobulks: raw counts summed per sample x population, the unit of every condition test.

Cells of one sample are not independent replicates (Squair et al. 2021; Crowell et al. 2020), so
the DE (:mod:`pbmc_prepost.de`) and the donor-level set test fit these sums, one per sample and
population. Sums use decoupler's ``pp.pseudobulk`` where it fits in memory and an exact blockwise
indicator product on large data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from pbmc_prepost.design import safe_names
from pbmc_prepost.settings import DESettings

log = logging.getLogger(__name__)

# decoupler densifies each sample x group block of cells; above this many bytes per block the
# sparse indicator product is used instead (same sums, bounded memory).
_MAX_DENSE_BLOCK_BYTES = 1_000_000_000
# Above this many stored counts the blockwise indicator product sums with no copy of the whole
# matrix (decoupler's pseudobulk held about two extra copies: 4.5 GB at 100k cells).
_MAX_DECOUPLER_NNZ = 50_000_000
# Cells per block of the indicator product: a float64 copy of one block at a time.
_SUM_BLOCK_CELLS = 20_000


def pseudobulk(
    adata: ad.AnnData,
    group_col: str,
    sample_col: str = "sample",
    layer: str | None = "counts",
    meta_columns: Sequence[str] = (),
    blocks: Iterable[tuple[int, int, sp.spmatrix]] | None = None,
) -> ad.AnnData:
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
    blocks
        The counts as ``(start, stop, rows)`` blocks of cells in ``obs`` order
        (:func:`pbmc_prepost.h5ad.iter_row_blocks`), for an ``adata`` that holds none: summed one
        block at a time with the indicator product, so memory holds one block, not the matrix.

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
    if blocks is None and layer is not None and layer not in adata.layers:
        raise ValueError(f"pseudobulk: layer '{layer}' with raw counts missing; layers: {list(adata.layers)}")
    obs = pd.DataFrame(
        {c: adata.obs[c].astype(str).to_numpy() for c in (sample_col, group_col, *meta_columns)},
        index=adata.obs_names.astype(str),
    )
    for column in meta_columns:
        varying = obs.groupby(sample_col)[column].nunique()
        if (varying > 1).any():
            raise ValueError(
                f"pseudobulk: column '{column}' is not constant within sample(s) "
                f"{sorted(varying.index[varying > 1])[:5]}"
            )
    summed = None
    if blocks is None:
        counts = adata.layers[layer] if layer is not None else adata.X
        counts = sp.csr_matrix(counts)  # decoupler tests isinstance(csr_matrix), not csr_array
        block = obs.groupby([sample_col, group_col]).size().max() if len(obs) else 0
        if (
            block * adata.n_vars * counts.dtype.itemsize <= _MAX_DENSE_BLOCK_BYTES
            and counts.nnz <= _MAX_DECOUPLER_NNZ
            and len(obs)
        ):
            summed = _pseudobulk_decoupler(counts, obs, adata.var_names, sample_col, group_col)
        blocks = _row_blocks(counts)
    if summed is None:
        summed = _pseudobulk_indicator(blocks, obs, adata.n_vars, sample_col, group_col)
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


def _pseudobulk_decoupler(
    counts: sp.csr_matrix, obs: pd.DataFrame, var_names: pd.Index, sample_col: str, group_col: str
) -> tuple[list[tuple[str, str]], np.ndarray] | None:
    """decoupler's sums as (keys, dense matrix), or None when decoupler cannot do it."""
    import decoupler as dc

    # Slim object: only the two key columns, so decoupler neither scans nor copies per-cell junk.
    slim = ad.AnnData(
        X=counts, obs=obs[[sample_col, group_col]].copy(), var=pd.DataFrame(index=pd.Index(var_names.astype(str)))
    )
    try:
        pdata = dc.pp.pseudobulk(slim, sample_col=sample_col, groups_col=group_col, layer=None, mode="sum", empty=False)
    except (AssertionError, ValueError, TypeError) as error:
        log.info("decoupler pseudobulk not usable (%s); using the indicator product", str(error).splitlines()[0])
        return None
    keys = list(zip(pdata.obs[sample_col].astype(str), pdata.obs[group_col].astype(str)))
    X = np.asarray(pdata.X, dtype=np.float64)
    if list(pdata.var_names) != list(slim.var_names):
        return None
    return keys, X


def group_indicator(codes: np.ndarray, n_groups: int) -> sp.csr_matrix:
    """The (group x cell) 0/1 matrix of integer group ``codes``: times a (cell x gene) matrix it
    sums the cells of each group (pseudobulks, marker detection per cluster)."""
    codes = np.asarray(codes)
    return sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(n_groups, len(codes)))


def _row_blocks(counts: sp.csr_matrix) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    for start in range(0, counts.shape[0], _SUM_BLOCK_CELLS):
        stop = min(start + _SUM_BLOCK_CELLS, counts.shape[0])
        yield start, stop, counts[start:stop]


def _pseudobulk_indicator(
    blocks: Iterable[tuple[int, int, sp.spmatrix]], obs: pd.DataFrame, n_vars: int, sample_col: str, group_col: str
) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Exact sums as a (pseudobulk x cell) 0/1 matrix times the (cell x gene) counts.

    Summed over blocks of cells, so only one block at a time is copied to float64.
    """
    key = pd.MultiIndex.from_arrays([obs[sample_col], obs[group_col]])
    codes, uniques = pd.factorize(key, sort=True)
    indicator = group_indicator(codes, len(uniques)).tocsc()  # column blocks of cells
    X = np.zeros((len(uniques), n_vars))
    seen = 0
    for start, stop, rows in blocks:
        X += (indicator[:, start:stop] @ sp.csr_matrix(rows).astype(np.float64)).toarray()
        seen = max(seen, stop)
    if seen != len(obs):
        raise ValueError(f"pseudobulk: the count blocks cover {seen} cells, obs has {len(obs)}")
    return [tuple(map(str, u)) for u in uniques], X


def pseudobulk_for_contrast(
    adata: ad.AnnData,
    settings: DESettings,
    sample_col: str = "sample",
    batch_col: str | None = "batch",
    blocks: Iterable[tuple[int, int, sp.spmatrix]] | None = None,
) -> ad.AnnData:
    """Pseudobulk at ``settings.level`` carrying the contrast, pairing and batch columns.

    The same object :func:`pbmc_prepost.de.fit_all_populations` fits; subset it to one population for
    :func:`normalized_pseudobulk` or :func:`pbmc_prepost.de.fit_population`.

    Parameters
    ----------
    adata
        Annotated cells with raw counts in ``layers["counts"]``.
    settings
        ``settings.level`` is the population column; the contrast's ``column`` is required in
        obs, its ``pair_by`` carried when present.
    sample_col
        obs column naming the sample.
    batch_col
        Carried when given and present in obs.
    blocks
        The counts by blocks of cells, for an ``adata`` that holds none (see :func:`pseudobulk`).

    Returns
    -------
    anndata.AnnData
        See :func:`pseudobulk`.
    """
    contrast = settings.contrast
    meta = [contrast.column]
    extra = [contrast.pair_by, batch_col]
    for c in settings.contrasts:
        extra += [c.arm_column, *c.covariates]
    meta += [c for c in dict.fromkeys(extra) if c and c in adata.obs.columns and c not in meta]
    return pseudobulk(adata, settings.level, sample_col=sample_col, layer="counts", meta_columns=meta, blocks=blocks)


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


def population_files(labels: pd.Series) -> pd.DataFrame:
    """``population`` and its file-name-safe ``file`` name, one row per label (sorted)."""
    names = safe_names(sorted(labels.astype(str).unique()))
    return pd.DataFrame({"population": list(names), "file": list(names.values())})
