"""The shifted-log values of any block of cells or genes, from the counts and the size factors.

Kept apart from :mod:`pbmc_prepost.preprocess` (which imports scanpy) so that the jobs that only
read a few genes' values from the merged counts start without scanpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from pbmc_prepost.h5ad import read_h5ad_parts

__all__ = ["read_shifted_log", "shifted_log"]


def shifted_log(counts: sp.spmatrix, factors: np.ndarray) -> sp.csr_matrix:
    """log1p(counts / size factor) per cell: :func:`pbmc_prepost.preprocess.normalize`'s values
    for any subset of genes.

    ``factors`` from :func:`pbmc_prepost.preprocess.size_factors` over all genes, so a block of
    rows or of genes gets the values the whole matrix would (scanpy's ``normalize_total`` then
    ``log1p``; tested).
    """
    counts = sp.csr_matrix(counts)
    factors = np.asarray(factors, dtype=np.float32)
    factors = factors + (factors == 0)  # as scanpy: a cell without counts stays 0
    data = counts.data / np.repeat(factors, np.diff(counts.indptr))
    np.log1p(data, out=data)
    return sp.csr_matrix((data, counts.indices.copy(), counts.indptr.copy()), shape=counts.shape)


def read_shifted_log(path: str | Path, genes: Sequence[str] | None = None) -> ad.AnnData:
    """Cells of the merged object at ``path`` with :func:`shifted_log` values of ``genes`` in ``X``
    (all genes when None), computed from the counts on disk: the values ``clustered.h5ad`` holds,
    without waiting for it."""
    adata = read_h5ad_parts(path, x=False, layers=["counts"], genes=genes)
    adata.X = shifted_log(adata.layers.pop("counts"), adata.obs["size_factor"].to_numpy())
    return adata
