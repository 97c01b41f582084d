"""Reading the workflow's own ``.h5ad`` files by parts, so a step holds only what it needs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata
import h5py
import numpy as np
import scipy.sparse as sp

#: Rows of ``X`` read at a time by :func:`read_h5ad_parts` when only some genes are wanted.
ROW_BLOCK = 20_000


def read_h5ad_parts(
    path: str | Path,
    *,
    x: bool = True,
    layers: Sequence[str] = (),
    obsm: Sequence[str] = (),
    obsp: Sequence[str] = (),
    genes: Sequence[str] | None = None,
) -> anndata.AnnData:
    """Read only some elements of a workflow ``.h5ad`` (obs and var always).

    The merged objects carry two cells x genes matrices (log-normalized ``X`` and
    ``layers["counts"]``); a step that needs one of them reads only that one, which halves its
    memory on large data. Everything not asked for (other layers, graphs, ``uns``) stays on disk.

    Parameters
    ----------
    path
        An ``.h5ad`` file written by the workflow.
    x
        Read ``X`` (otherwise the object has no ``X``).
    layers, obsm, obsp
        Names of the layers, ``obsm`` and ``obsp`` entries (the kNN graph) to read.
    genes
        Keep only these genes (those measured, in ``var`` order), read from a CSR ``X`` and layers
        in blocks of :data:`ROW_BLOCK` rows: memory is that of the few genes a step reads, not of all.

    Returns
    -------
    anndata.AnnData
        With the requested elements.
    """
    from anndata.io import read_elem

    with h5py.File(path, "r") as handle:
        missing = [f"layers/{k}" for k in layers if k not in handle.get("layers", {})]
        missing += [f"obsm/{k}" for k in obsm if k not in handle.get("obsm", {})]
        missing += [f"obsp/{k}" for k in obsp if k not in handle.get("obsp", {})]
        if missing:
            raise KeyError(f"{path}: no {', '.join(missing)}")
        var = read_elem(handle["var"])
        keep = None if genes is None else np.flatnonzero(var.index.isin(list(genes)))
        read = read_elem if keep is None else (lambda element: _read_columns(element, keep))
        return anndata.AnnData(
            X=read(handle["X"]) if x else None,
            obs=read_elem(handle["obs"]),
            var=var if keep is None else var.iloc[keep],
            layers={k: read(handle["layers"][k]) for k in layers},
            obsm={k: read_elem(handle["obsm"][k]) for k in obsm},
            obsp={k: read_elem(handle["obsp"][k]) for k in obsp},
        )


def _read_columns(group: h5py.Group | h5py.Dataset, columns: np.ndarray) -> sp.csr_matrix:
    """``columns`` of a stored matrix; a CSR group is read block by block of rows."""
    from anndata.io import read_elem

    if not isinstance(group, h5py.Group) or group.attrs.get("encoding-type") != "csr_matrix":
        matrix = read_elem(group)
        return sp.csr_matrix(matrix[:, columns])
    n_rows, _ = group.attrs["shape"]
    indptr = group["indptr"][:]
    blocks = []
    for start in range(0, n_rows, ROW_BLOCK):
        stop = min(start + ROW_BLOCK, n_rows)
        lo, hi = int(indptr[start]), int(indptr[stop])
        block = sp.csr_matrix(
            (group["data"][lo:hi], group["indices"][lo:hi], indptr[start : stop + 1] - lo),
            shape=(stop - start, int(group.attrs["shape"][1])),
        )
        blocks.append(block[:, columns])
    return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, len(columns)))


class H5adFiles(Mapping):
    """Read-only mapping name -> AnnData that reads the ``.h5ad`` file on every access.

    Holds no object between accesses, so a step that visits samples one after another keeps one
    of them in memory at a time (:func:`pbmc_prepost.preprocess.merge_samples` on many samples).
    """

    def __init__(self, paths: Mapping[str, str | Path]):
        self._paths = dict(paths)

    def __getitem__(self, name: str) -> anndata.AnnData:
        return anndata.read_h5ad(self._paths[name])

    def __iter__(self):
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)
