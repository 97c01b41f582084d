"""Reading the workflow's own ``.h5ad`` files by parts, so a step holds only what it needs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

#: Rows of a matrix read (or written) at a time when only some genes or rows are wanted, or when a
#: step streams a matrix: about 40 MB of counts per block at 2,000 detected genes per cell.
ROW_BLOCK = 20_000

#: Non-zero values per HDF5 chunk of the matrices written block by block (1 MiB of float32): large
#: enough that reading a block touches few chunks, small enough that a row range wastes little.
CHUNK_VALUES = 1 << 18


def read_h5ad_parts(
    path: str | Path,
    *,
    x: bool = True,
    layers: Sequence[str] = (),
    obsm: Sequence[str] = (),
    obsp: Sequence[str] = (),
    genes: Sequence[str] | None = None,
    rows: np.ndarray | None = None,
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
    rows
        Keep only the cells at these positions (sorted, unique), from every element read: a step
        that works on a subsample of cells reads only those rows of a CSR matrix.

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
        if x and "X" not in handle:
            raise KeyError(f"{path}: no X (the file holds {', '.join(k for k in handle if k != 'X')})")
        var, obs = read_elem(handle["var"]), read_elem(handle["obs"])
        keep = None if genes is None else np.flatnonzero(var.index.isin(list(genes)))
        if rows is None and keep is None:
            read = read_elem
        else:
            rows = None if rows is None else np.asarray(rows, dtype=np.int64)
            read = lambda element: _read_part(element, rows, keep)  # noqa: E731
        per_cell = read_elem if rows is None else (lambda element: read_elem(element)[rows])
        # A cell x cell graph restricted to the rows read keeps only the edges among them.
        graph = read_elem if rows is None else (lambda element: read_elem(element)[rows][:, rows])
        return anndata.AnnData(
            X=read(handle["X"]) if x else None,
            obs=obs if rows is None else obs.iloc[rows],
            var=var if keep is None else var.iloc[keep],
            layers={k: read(handle["layers"][k]) for k in layers},
            obsm={k: per_cell(handle["obsm"][k]) for k in obsm},
            obsp={k: graph(handle["obsp"][k]) for k in obsp},
        )


def read_matrix(
    path: str | Path, element: str, rows: np.ndarray | None = None, genes: Sequence[str] | None = None
) -> sp.csr_matrix:
    """Some ``rows`` (sorted positions) and ``genes`` of one stored matrix, without obs: a step that
    visits the cells batch by batch reads each batch's rows and not the cells' table every time."""
    from anndata.io import read_elem

    with h5py.File(path, "r") as handle:
        columns = None
        if genes is not None:
            columns = np.flatnonzero(read_elem(handle["var"]).index.isin(list(genes)))
        rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        return _read_part(handle[element], rows, columns)


def iter_row_blocks(
    path: str | Path, element: str, genes: Sequence[str] | None = None, size: int | None = None
) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    """The rows of a stored CSR matrix (``X`` or ``layers/<name>``), ``size`` rows at a time.

    Yields ``(start, stop, block)``; ``genes`` keeps only those columns (in ``var`` order). A step
    that sums or averages over cells holds one block, not the matrix.
    """
    from anndata.io import read_elem

    size = size or ROW_BLOCK
    with h5py.File(path, "r") as handle:
        group = handle[element]
        if not isinstance(group, h5py.Group) or group.attrs.get("encoding-type") != "csr_matrix":
            raise TypeError(f"{path}: {element} is not a CSR matrix")
        columns = None
        if genes is not None:
            columns = np.flatnonzero(read_elem(handle["var"]).index.isin(list(genes)))
        indptr = group["indptr"][:]
        n_rows, n_cols = (int(n) for n in group.attrs["shape"])
        for start in range(0, n_rows, size):
            stop = min(start + size, n_rows)
            block = _row_range(group, indptr, start, stop, n_cols)
            yield start, stop, block if columns is None else block[:, columns]


def column_means(path: str | Path, element: str = "X") -> pd.Series:
    """Mean of every column (gene) of a stored CSR matrix over all rows, summed in float64 block by block."""
    from anndata.io import read_elem

    total, n_rows = None, 0
    for _, stop, block in iter_row_blocks(path, element):
        sums = np.asarray(block.sum(axis=0, dtype="float64")).ravel()
        total = sums if total is None else total + sums
        n_rows = stop
    if total is None:
        raise ValueError(f"{path}: {element} has no rows")
    with h5py.File(path, "r") as handle:
        genes = read_elem(handle["var"]).index
    return pd.Series(total / n_rows, index=genes)


def _row_range(group: h5py.Group, indptr: np.ndarray, start: int, stop: int, n_cols: int) -> sp.csr_matrix:
    lo, hi = int(indptr[start]), int(indptr[stop])
    return sp.csr_matrix(
        (group["data"][lo:hi], group["indices"][lo:hi], indptr[start : stop + 1] - lo), shape=(stop - start, n_cols)
    )


def _read_part(group: h5py.Group | h5py.Dataset, rows: np.ndarray | None, columns: np.ndarray | None) -> sp.csr_matrix:
    """Some ``rows`` and ``columns`` (None: all) of a stored matrix; a CSR group is read by row blocks.

    Rows are gathered in runs of consecutive positions, so a subsample of cells costs the rows it
    holds, not the whole matrix.
    """
    from anndata.io import read_elem

    if not isinstance(group, h5py.Group) or group.attrs.get("encoding-type") != "csr_matrix":
        matrix = read_elem(group)
        matrix = matrix if rows is None else matrix[rows]
        return sp.csr_matrix(matrix if columns is None else matrix[:, columns])
    n_rows, n_cols = (int(n) for n in group.attrs["shape"])
    indptr = group["indptr"][:]
    if rows is None:
        ranges = [(start, min(start + ROW_BLOCK, n_rows)) for start in range(0, n_rows, ROW_BLOCK)]
    else:
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        ranges = []
        for run in np.split(rows, breaks) if len(rows) else []:
            for start in range(int(run[0]), int(run[-1]) + 1, ROW_BLOCK):
                ranges.append((start, min(start + ROW_BLOCK, int(run[-1]) + 1)))
    blocks = []
    for start, stop in ranges:
        block = _row_range(group, indptr, start, stop, n_cols)
        blocks.append(block if columns is None else block[:, columns])
    width = n_cols if columns is None else len(columns)
    return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, width), dtype=group["data"].dtype)


class CsrWriter:
    """A CSR matrix written into an open ``.h5ad`` block of rows by block (anndata's encoding).

    ``append`` the blocks in order; the matrix on disk is then what ``scipy.sparse.vstack`` of them
    would give, without ever holding more than one block.
    """

    def __init__(self, parent: h5py.Group, name: str):
        self._parent, self._name, self._dataset = parent, name, None

    def append(self, block: sp.spmatrix) -> None:
        from anndata.io import sparse_dataset, write_elem

        block = sp.csr_matrix(block)
        if self._dataset is None:
            write_elem(self._parent, self._name, block, dataset_kwargs={"chunks": (CHUNK_VALUES,)})
            self._dataset = sparse_dataset(self._parent[self._name])
        elif block.shape[0]:
            self._dataset.append(block)


def dict_group(parent: h5py.Group, name: str) -> h5py.Group:
    """An (empty) anndata ``dict`` group, e.g. ``layers``, to write elements into."""
    group = parent.require_group(name)
    group.attrs["encoding-type"], group.attrs["encoding-version"] = "dict", "0.1.0"
    return group


def mark_anndata(handle: h5py.File) -> None:
    """The root attributes that make an h5py file an ``.h5ad`` anndata reads."""
    handle.attrs["encoding-type"], handle.attrs["encoding-version"] = "anndata", "0.1.0"


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
