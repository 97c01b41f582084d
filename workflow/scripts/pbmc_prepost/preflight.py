"""Cheap checks of every count file, run before any job: the sample sheet's pre-flight.

They read only headers, gene names and the first stored values, so a broken or normalized input
is reported with its sheet line in seconds instead of failing a QC job minutes later. The full
readers, which report the same problems, are in :mod:`pbmc_prepost.io`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import h5py
import numpy as np

from pbmc_prepost import InputError
from pbmc_prepost.formats import detect_format, fail, locate_mtx, resolve_format
from pbmc_prepost.io import (
    ENSEMBL_FIX,
    GENE_EXPRESSION,
    SYMBOL_COLUMNS,
    TEXT_ERRORS,
    check_counts,
    check_layer_arg,
    h5ad_counts_elem,
    looks_ensembl,
    open_text,
    read_features,
    unreadable_h5,
)


def _decode(values: np.ndarray) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def check_genes_and_cells(names: list[str], n_cells: int, path: Path, source: str, mito_pattern: str | None) -> None:
    """A matrix with no gene or no cell, or whose symbols the QC's mitochondrial pattern misses while
    the same genes in another case are there (mouse ``mt-`` genes under the human ``^MT-``)."""
    if not len(names):
        raise fail(source, path, f"'{path}' has no genes (0 features)", "give the sample's gene-expression matrix")
    if n_cells == 0:
        raise fail(
            source,
            path,
            f"'{path}' has no cells (0 barcodes)",
            "check the sample's Cell Ranger run, or remove its row from the sheet",
        )
    if not mito_pattern:
        return
    pattern = re.compile(mito_pattern)
    if any(pattern.search(name) for name in names):
        return
    other_case = re.compile(mito_pattern, re.IGNORECASE)
    seen = [name for name in names if other_case.search(name)][:3]
    if seen:
        raise fail(
            source,
            path,
            f"no gene matches the mitochondrial pattern qc.mito_pattern {mito_pattern!r}, but "
            f"{', '.join(repr(n) for n in seen)} do in another case (mouse symbols?), so mitochondrial QC would "
            "see 0 % everywhere",
            "for mouse data set qc.mito_pattern: '^mt-', qc.ribo_pattern: '^Rp[sl]' and qc.hb_pattern: "
            "'^Hb[ab]' (the marker table and gene sets shipped are human)",
        )


def _peek_mtx(path: Path, source: str, n_values: int, mito_pattern: str | None = None) -> None:
    files = locate_mtx(path, source)
    features = read_features(files, source)  # ~40k short lines: cheap, and catches bad ids
    try:
        with open_text(files.barcodes) as fh:
            n_barcodes = sum(1 for line in fh if line.strip())
        with open_text(files.matrix) as fh:
            header = fh.readline()
            parts = header.lower().split()
            if len(parts) < 4 or parts[0] != "%%matrixmarket" or parts[2] != "coordinate":
                raise fail(
                    source,
                    files.matrix,
                    f"'{files.matrix}' is not a Matrix Market coordinate file (header: {header.strip()[:60]!r})",
                    "re-export or re-download it",
                )
            field = parts[3]
            line = fh.readline()
            while line.startswith("%"):
                line = fh.readline()
            n_rows, n_cols, _ = (int(x) for x in line.split()[:3])
            values: list[float] = []
            if field != "pattern":
                for _ in range(n_values):
                    line = fh.readline()
                    if not line:
                        break
                    values.append(float(line.split()[2]))
    except InputError:
        raise
    except (*TEXT_ERRORS, IndexError) as exc:
        raise fail(
            source,
            files.matrix,
            f"10x files next to '{files.matrix}' cannot be read ({type(exc).__name__}: {exc})",
            "re-export or re-download them (a truncated .gz download is a common cause)",
        ) from None
    if (n_rows, n_cols) != (len(features), n_barcodes):
        raise fail(
            source,
            files.matrix,
            f"matrix '{files.matrix}' is {n_rows} x {n_cols} but there are {len(features)} "
            f"features and {n_barcodes} barcodes",
            "use the three files of one sample (genes x cells, as written by Cell Ranger)",
        )
    check_counts(np.asarray(values, dtype=np.float64), files.matrix, source, "the matrix", "")
    check_genes_and_cells(list(features["symbol"]), n_barcodes, files.matrix, source, mito_pattern)


def _peek_h5(path: Path, source: str, n_values: int, mito_pattern: str | None = None) -> None:
    try:
        with h5py.File(path, "r") as f:
            if "matrix" in f:  # Cell Ranger v3+
                group = f["matrix"]
                names = group["features"]["name"][:]
                ftypes = group["features"]["feature_type"][:]
            else:  # Cell Ranger v2: one group per genome
                group = f[next(iter(f.keys()))]
                names = group["gene_names"][:]
                ftypes = None
            data = group["data"][:n_values]
            n_cells = int(group["barcodes"].shape[0])
    except Exception as exc:  # OSError for corrupt/non-HDF5, KeyError/StopIteration for layout
        raise unreadable_h5(path, source, exc) from None
    check_counts(data, path, source, "the matrix", "")
    names = _decode(names)
    if ftypes is not None:
        keep = np.asarray(_decode(ftypes)) == GENE_EXPRESSION
        names = [n for n, k in zip(names, keep, strict=True) if k]
    if looks_ensembl(names):
        raise fail(
            source,
            path,
            f"genes in '{path}' are Ensembl ids and no symbol column was found",
            ENSEMBL_FIX,
        )
    check_genes_and_cells(names, n_cells, path, source, mito_pattern)


def _peek_values(elem: h5py.Group | h5py.Dataset, n_values: int) -> np.ndarray:
    """First values of an h5ad matrix element without reading the whole matrix."""
    if isinstance(elem, h5py.Group):  # sparse: data/indices/indptr
        return elem["data"][:n_values]
    if elem.ndim < 2 or elem.shape[1] == 0:
        return elem[:n_values]
    rows = max(1, n_values // elem.shape[1])
    return elem[:rows].ravel()


def _peek_h5ad(
    path: Path, counts_layer: str | None, source: str, n_values: int, mito_pattern: str | None = None
) -> None:
    try:
        with h5py.File(path, "r") as f:
            elem, what, hint = h5ad_counts_elem(f, path, counts_layer, source)
            values = _peek_values(elem, n_values)
            shape = elem.attrs["shape"] if isinstance(elem, h5py.Group) else elem.shape
            n_cells = int(shape[0]) if len(shape) else 0
            var = f["var"]
            if isinstance(var, h5py.Group):
                index_key = var.attrs.get("_index", "_index")
                if isinstance(index_key, bytes):
                    index_key = index_key.decode()
                index = var.get(index_key)
                if isinstance(index, h5py.Group):  # anndata >= 0.13 with pandas 3: a nullable-string array
                    index = index["values"]
                names = _decode(index[:]) if index is not None else []
                var_columns = set(var.keys())
            else:  # anndata < 0.7 stored var as a compound dataset
                names = _decode(var["index"][:]) if "index" in (var.dtype.names or ()) else []
                var_columns = set(var.dtype.names or ())
    except InputError:
        raise
    except Exception as exc:  # OSError for corrupt/non-HDF5, KeyError for missing elements
        raise fail(
            source,
            path,
            f"'{path}' cannot be read as an AnnData .h5ad file ({type(exc).__name__}: {exc})",
            "check the file is complete (re-download or re-save it with anndata.write_h5ad)",
        ) from None
    check_counts(values, path, source, what, hint)
    if looks_ensembl(names) and not var_columns.intersection(SYMBOL_COLUMNS):
        raise fail(
            source,
            path,
            f"genes in '{path}' are Ensembl ids and no symbol column was found (looked for "
            f"var columns {', '.join(SYMBOL_COLUMNS)})",
            ENSEMBL_FIX,
        )
    # Symbols may sit in a var column (Ensembl ids as names): the pattern is checked by the QC then.
    check_genes_and_cells(names, n_cells, path, source, None if looks_ensembl(names) else mito_pattern)


def peek_counts(
    path: str | Path,
    fmt: str | None,
    counts_layer: str | None = None,
    source: str = "",
    n_values: int = 20000,
    mito_pattern: str | None = None,
) -> None:
    """Cheaply check that ``path`` holds readable raw counts, without loading the matrix.

    Runs on every workflow invocation, so it reads only headers, gene names and the first
    ``n_values`` stored values (HDF5 ``data`` slices, the first rows of a dense matrix, or the
    first entry lines of a Matrix Market file).

    Parameters
    ----------
    path
        Input as accepted by :func:`read_counts`.
    fmt
        ``"10x_mtx"``, ``"10x_h5"``, ``"cellbender_h5"`` or ``"h5ad"``; ``None`` or ``""``
        detects it.
    counts_layer
        For h5ad only: the layer holding raw counts.
    source
        Short label that prefixes error messages.
    n_values
        How many stored values to check for integrality.
    mito_pattern
        The QC's mitochondrial pattern (config ``qc.mito_pattern``): refused when it matches no
        gene but matches some in another case (mouse ``mt-`` genes). None: not checked.

    Raises
    ------
    InputError
        The same problems :func:`read_counts` reports: unreadable or corrupt file, missing
        counts layer, non-integer or negative values, Ensembl ids without symbols; and no gene,
        no cell, or a mitochondrial pattern of the wrong species.
    """
    path = Path(path)
    fmt = resolve_format(fmt, path, source)
    check_layer_arg(fmt, counts_layer, path, source)
    if fmt == "10x_mtx":
        _peek_mtx(path, source, n_values, mito_pattern)
    elif fmt in ("10x_h5", "cellbender_h5"):
        _peek_h5(path, source, n_values, mito_pattern)
    else:
        _peek_h5ad(path, counts_layer, source, n_values, mito_pattern)


def locate_count_file(path: str, fmt: str, report_undetected: bool, source: str) -> tuple[str, list[str]]:
    """Check that a sheet's ``path`` exists, is readable, and holds a known layout.

    Parameters
    ----------
    path
        As written in the sheet (``~`` expanded, relative to the folder snakemake runs in).
    fmt
        The sheet's ``format`` ('' = detect).
    report_undetected
        Report a layout that cannot be detected (off when an explicit format is trusted).
    source
        ``"<sheet> line N (sample 'x')"``, the prefix of every message.

    Returns
    -------
    detected, problems
        The detected format ('' when unknown) and one message per problem.
    """
    expanded = os.path.expanduser(path)
    problems: list[str] = []
    detected = ""
    if not os.path.exists(expanded):
        problems.append(
            f"{source}: path '{path}' does not exist (looked for {os.path.abspath(expanded)}). "
            f"Fix: correct the path; relative paths are relative to the folder where snakemake runs "
            f"({os.getcwd()})."
        )
    elif not os.access(expanded, os.R_OK | (os.X_OK if os.path.isdir(expanded) else 0)):
        problems.append(f"{source}: path '{path}' is not readable. Fix: fix its permissions (chmod).")
    else:
        try:
            detected = detect_format(expanded, source)
        except InputError as exc:
            if report_undetected:
                problems.append(str(exc))
        if fmt and detected and fmt != detected:
            problems.append(
                f"{source}: format is '{fmt}' but '{path}' looks like {detected}. Fix: set format to "
                f"'{detected}' (or leave it empty to auto-detect), or correct the path."
            )
    return detected, problems


def peek_count_file(path: str, fmt: str, counts_layer: str, source: str, mito_pattern: str | None = None) -> list[str]:
    """:func:`peek_counts` of a sheet row, every failure as one message (a reader bug included)."""
    try:
        peek_counts(os.path.expanduser(path), fmt, counts_layer or None, source=source, mito_pattern=mito_pattern)
    except InputError as exc:
        return [str(exc)]
    except Exception as exc:  # a reader bug must still point at the sheet line
        return [
            f"{source}: '{path}' cannot be checked ({type(exc).__name__}: {exc}). "
            "Fix: check the file is a complete, uncorrupted count matrix."
        ]
    return []
