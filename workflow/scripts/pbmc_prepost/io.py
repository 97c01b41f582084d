"""Reading and writing single-cell count matrices (10x mtx, 10x HDF5, AnnData h5ad).

Every reader returns the same shape of object so later steps need not care where the counts came
from: cells x genes, ``X`` a float32 CSR matrix of raw integer counts, ``obs_names`` the barcodes as
written in the input, ``var_names`` unique gene symbols and ``var["gene_ids"]`` the stable ids.

All problems a user can fix raise :class:`pbmc_prepost.InputError` with a one-line message that
names the file, says what is wrong and ends with ``Fix: ...``.
"""

from __future__ import annotations

import gzip
import re
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from pbmc_prepost import InputError

__all__ = [
    "FORMATS",
    "MtxFiles",
    "detect_format",
    "locate_mtx",
    "peek_counts",
    "read_counts",
    "write_10x_h5",
    "write_10x_mtx",
]

FORMATS: tuple[str, ...] = ("10x_mtx", "10x_h5", "h5ad")

#: var columns that may hold gene symbols when an h5ad is indexed by Ensembl ids (first match wins).
SYMBOL_COLUMNS: tuple[str, ...] = (
    "gene_symbols",
    "gene_symbol",
    "feature_name",
    "gene_name",
    "symbol",
    "symbols",
)
#: var columns that may hold Ensembl ids when an h5ad is indexed by symbols (first match wins).
ID_COLUMNS: tuple[str, ...] = ("gene_ids", "gene_id", "ensembl_id", "ensembl_ids", "feature_id")

GENE_EXPRESSION = "Gene Expression"
_CHECK_CHUNK = 10_000_000
# What reading a damaged (often truncated .gz) text file raises; ValueError covers ParserError.
_TEXT_ERRORS = (OSError, EOFError, UnicodeDecodeError, ValueError, zlib.error)
_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d+")
_LAYOUTS = (
    "a Cell Ranger folder with matrix.mtx(.gz) + features.tsv(.gz) or genes.tsv(.gz) + "
    "barcodes.tsv(.gz); a GEO-style matrix file '<prefix>matrix.mtx(.gz)' next to "
    "'<prefix>features.tsv(.gz)' (or genes.tsv) and '<prefix>barcodes.tsv(.gz)'; "
    "a Cell Ranger '.h5' file; an AnnData '.h5ad' file"
)
_ENSEMBL_FIX = (
    "add a var column 'gene_symbols' or provide the Cell Ranger folder whose features.tsv "
    "holds symbols"
)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _fail(source: str, path: str | Path, problem: str, fix: str) -> InputError:
    """Build a one-line InputError: ``<source>: <problem about path>. Fix: <fix>.``."""
    where = source if source else str(path)
    return InputError(f"{where}: {problem}. Fix: {fix}.")


def _looks_ensembl(names: Sequence[str] | np.ndarray | pd.Index) -> bool:
    """True when most names are Ensembl gene ids.

    A majority rule rather than "any": recent Cell Ranger references name genes without a symbol
    by their Ensembl id, so a symbol-indexed matrix legitimately contains a minority of ids.
    """
    names = [str(n) for n in names]
    if not names:
        return False
    hits = sum(1 for n in names if _ENSEMBL_RE.match(n))
    return hits > len(names) / 2


def _check_counts(
    values: np.ndarray, path: str | Path, source: str, what: str, layers_hint: str
) -> None:
    """Raise when ``values`` are not finite non-negative integers (i.e. not raw counts)."""
    values = np.asarray(values).ravel()
    if values.size == 0 or values.dtype.kind in "ub":
        return
    bad = None
    # Chunked so the temporary masks stay small on matrices with hundreds of millions of values.
    for start in range(0, values.size, _CHECK_CHUNK):
        chunk = values[start : start + _CHECK_CHUNK]
        if chunk.dtype.kind == "i":
            bad_mask = chunk < 0
        else:
            bad_mask = ~np.isfinite(chunk) | (chunk != np.round(chunk)) | (chunk < 0)
        if bad_mask.any():
            bad = chunk[bad_mask][0]
            break
    if bad is None:
        return
    raise _fail(
        source,
        path,
        f"{what} in '{path}' holds non-integer or negative values (e.g. {bad:g}), so these look "
        "normalized/log-transformed rather than raw counts",
        "point `path` to the raw counts" + layers_hint,
    )


def _h5ad_layers_hint(layers: Sequence[str], has_raw: bool = False) -> str:
    hint = (
        ", or set `counts_layer` to the layer with raw counts (available layers: "
        + (", ".join(repr(x) for x in layers) if layers else "none")
        + ")"
    )
    if has_raw:
        hint += "; the file has .raw: save adata.raw.to_adata() as a new .h5ad if it holds counts"
    return hint


def _open_text(path: Path):
    """Open a plain or gzipped text file (chosen by the '.gz' suffix) for reading."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _first_existing(folder: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------------------------
# layout detection
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MtxFiles:
    """The three files of a 10x Matrix Market triplet."""

    matrix: Path
    features: Path
    barcodes: Path
    prefix: str

    @property
    def legacy(self) -> bool:
        """True for Cell Ranger v2 ``genes.tsv`` (two columns, no feature type)."""
        return self.features.name.startswith(f"{self.prefix}genes.tsv")


def _triplet(folder: Path, prefix: str) -> tuple[MtxFiles | None, list[str]]:
    """Find ``{prefix}matrix/features|genes/barcodes`` in folder; return files or missing names."""
    matrix = _first_existing(folder, [f"{prefix}matrix.mtx.gz", f"{prefix}matrix.mtx"])
    features = _first_existing(
        folder,
        [
            f"{prefix}features.tsv.gz",
            f"{prefix}features.tsv",
            f"{prefix}genes.tsv.gz",
            f"{prefix}genes.tsv",
        ],
    )
    barcodes = _first_existing(folder, [f"{prefix}barcodes.tsv.gz", f"{prefix}barcodes.tsv"])
    missing = []
    if matrix is None:
        missing.append(f"{prefix}matrix.mtx(.gz)")
    if features is None:
        missing.append(f"{prefix}features.tsv(.gz) or {prefix}genes.tsv(.gz)")
    if barcodes is None:
        missing.append(f"{prefix}barcodes.tsv(.gz)")
    if missing:
        return None, missing
    return MtxFiles(matrix, features, barcodes, prefix), []  # type: ignore[arg-type]


def _matrix_prefix(name: str) -> str | None:
    for suffix in ("matrix.mtx.gz", "matrix.mtx"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def locate_mtx(path: str | Path, source: str = "") -> MtxFiles:
    """Find the matrix, features and barcodes files of a 10x Matrix Market layout.

    Parameters
    ----------
    path
        A Cell Ranger ``filtered_feature_bc_matrix`` folder (v3, gzipped) or
        ``filtered_gene_bc_matrices/<genome>`` folder (v2), or a GEO-style
        ``<prefix>matrix.mtx(.gz)`` file whose siblings share its prefix.
    source
        Short label for error messages (e.g. the sample sheet line).

    Returns
    -------
    MtxFiles
        Paths of the three files and the shared file-name prefix.

    Raises
    ------
    InputError
        When the layout is incomplete or ambiguous.
    """
    path = Path(path)
    if path.is_dir():
        files, missing = _triplet(path, "")
        if files is not None:
            return files
        # A folder holding exactly one prefixed (GEO-style) triplet is unambiguous.
        prefixes = sorted(
            {p for f in path.iterdir() if (p := _matrix_prefix(f.name)) not in (None, "")}
        )
        if len(prefixes) == 1:
            files, missing = _triplet(path, prefixes[0])
            if files is not None:
                return files
        if len(prefixes) > 1:
            raise _fail(
                source,
                path,
                f"folder '{path}' holds several matrix files ("
                + ", ".join(f"{p}matrix.mtx" for p in prefixes)
                + ")",
                "point `path` at one '<prefix>matrix.mtx.gz' file per sample",
            )
        subdirs = [d.name for d in path.iterdir() if d.is_dir() and _triplet(d, "")[0]]
        hint = f" (found one in subfolder '{subdirs[0]}': point `path` there)" if subdirs else ""
        raise _fail(
            source,
            path,
            f"folder '{path}' is not a 10x matrix folder: missing {', '.join(missing)}{hint}",
            f"provide one of the accepted layouts: {_LAYOUTS}",
        )
    prefix = _matrix_prefix(path.name)
    if prefix is None or not path.is_file():
        raise _fail(
            source,
            path,
            f"'{path}' is neither a 10x matrix folder nor a '<prefix>matrix.mtx(.gz)' file",
            f"provide one of the accepted layouts: {_LAYOUTS}",
        )
    files, missing = _triplet(path.parent, prefix)
    if files is None:
        raise _fail(
            source,
            path,
            f"matrix file '{path}' has no matching sibling {' and '.join(missing)} in "
            f"'{path.parent}'",
            "keep the features/genes and barcodes files next to the matrix with the same prefix",
        )
    return files


def detect_format(path: str | Path, source: str = "") -> str:
    """Detect the count-matrix format of ``path``.

    Parameters
    ----------
    path
        A Cell Ranger matrix folder, a GEO-style ``<prefix>matrix.mtx(.gz)`` file, a 10x ``.h5``
        file or an AnnData ``.h5ad`` file. It must exist.
    source
        Short label for error messages (e.g. the sample sheet line).

    Returns
    -------
    str
        One of ``"10x_mtx"``, ``"10x_h5"``, ``"h5ad"``.

    Raises
    ------
    InputError
        When the path does not exist or matches none of the accepted layouts.
    """
    path = Path(path)
    if not path.exists():
        raise _fail(source, path, f"'{path}' does not exist", "correct the path")
    if path.is_dir() or _matrix_prefix(path.name) is not None:
        locate_mtx(path, source)
        return "10x_mtx"
    # Content first: sc.write("x.h5", adata) gives an AnnData file with a 10x-looking name.
    sniffed = _sniff_hdf5(path)
    if sniffed:
        return sniffed
    name = path.name.lower()
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith(".h5"):
        return "10x_h5"
    raise _fail(
        source,
        path,
        f"cannot tell the format of file '{path}' from its name or content",
        f"provide one of the accepted layouts: {_LAYOUTS}; or set the `format` column",
    )


def _sniff_hdf5(path: Path) -> str | None:
    """'10x_h5' or 'h5ad' from an HDF5 file's top-level keys; None when not telling/unreadable."""
    try:
        if not h5py.is_hdf5(path):
            return None
        with h5py.File(path, "r") as f:
            keys = set(f.keys())
            if "matrix" in keys:
                return "10x_h5"
            if "X" in keys or {"obs", "var"} <= keys:
                return "h5ad"
            # Cell Ranger v2: one group per genome, each with barcodes and gene_names
            if keys and all(
                isinstance(f[k], h5py.Group) and {"barcodes", "gene_names"} <= set(f[k].keys())
                for k in keys
            ):
                return "10x_h5"
    except (OSError, KeyError, ValueError):  # corrupt: let the extension decide, peek reports it
        return None
    return None


def _check_fmt(fmt: str | None, path: Path, source: str) -> str:
    if fmt is None or fmt == "":
        return detect_format(path, source)
    if fmt not in FORMATS:
        raise _fail(
            source,
            path,
            f"unknown format '{fmt}'",
            f"use one of {', '.join(FORMATS)} (or leave it empty to auto-detect)",
        )
    if not path.exists():
        raise _fail(source, path, f"'{path}' does not exist", "correct the path")
    return fmt


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def _read_features(files: MtxFiles, source: str) -> pd.DataFrame:
    """Read a features/genes file into columns id, symbol, feature_type (validated)."""
    try:
        table = pd.read_csv(
            files.features,
            sep="\t",
            header=None,
            dtype=str,
            keep_default_na=False,
            quoting=3,  # csv.QUOTE_NONE: gene names never contain quoted tabs
        )
    except pd.errors.EmptyDataError:
        raise _fail(
            source, files.features, f"features file '{files.features}' is empty", "re-export it"
        ) from None
    except _TEXT_ERRORS as exc:
        raise _fail(
            source,
            files.features,
            f"features file '{files.features}' cannot be read ({exc})",
            "re-export or re-download it",
        ) from None
    return _features_frame(table, files.features, source)


def _features_frame(table: pd.DataFrame, path: Path, source: str) -> pd.DataFrame:
    ids = table.iloc[:, 0].astype(str).to_numpy()
    if table.shape[1] == 1:
        if _looks_ensembl(ids):
            raise _fail(
                source,
                path,
                f"genes in '{path}' are Ensembl ids and no symbol column was found "
                "(the features file has a single column)",
                _ENSEMBL_FIX,
            )
        symbols = ids
    else:
        symbols = table.iloc[:, 1].astype(str).to_numpy()
        if _looks_ensembl(symbols):
            raise _fail(
                source,
                path,
                f"genes in '{path}' are Ensembl ids and no symbol column was found "
                "(the name column holds ids too)",
                _ENSEMBL_FIX,
            )
    ftype = (
        table.iloc[:, 2].astype(str).to_numpy()
        if table.shape[1] >= 3
        else np.full(len(ids), GENE_EXPRESSION, dtype=object)
    )
    return pd.DataFrame({"id": ids, "symbol": symbols, "feature_type": ftype})


def _read_barcodes(path: Path, source: str) -> np.ndarray:
    try:
        table = pd.read_csv(
            path, sep="\t", header=None, dtype=str, keep_default_na=False, quoting=3
        )
    except pd.errors.EmptyDataError:
        raise _fail(source, path, f"barcodes file '{path}' is empty", "re-export it") from None
    except _TEXT_ERRORS as exc:
        raise _fail(
            source,
            path,
            f"barcodes file '{path}' cannot be read ({exc})",
            "re-export or re-download it",
        ) from None
    return table.iloc[:, 0].to_numpy(dtype=str)


def _assemble(
    X: sp.spmatrix | np.ndarray,
    barcodes: Sequence[str] | pd.Index,
    symbols: Sequence[str],
    gene_ids: Sequence[str],
    feature_types: Sequence[str] | None = None,
) -> anndata.AnnData:
    """Build the normalized output AnnData (float32 CSR, unique symbols, gene_ids)."""
    symbols = np.asarray(symbols, dtype=str)
    gene_ids = np.asarray(gene_ids, dtype=str)
    X = sp.csr_matrix(X, dtype=np.float32)
    if feature_types is not None:
        keep = np.asarray(feature_types, dtype=str) == GENE_EXPRESSION
        if not keep.all():
            X, symbols, gene_ids = X[:, np.flatnonzero(keep)], symbols[keep], gene_ids[keep]
    X.sort_indices()
    # Made unique before building the AnnData (same rule as var_names_make_unique: '-1', '-2').
    var = pd.DataFrame(
        {"gene_ids": gene_ids}, index=anndata.utils.make_index_unique(pd.Index(symbols))
    )
    obs = pd.DataFrame(index=pd.Index(np.asarray(barcodes, dtype=str)))
    return anndata.AnnData(X=X, obs=obs, var=var)


def _read_mtx(path: Path, source: str) -> anndata.AnnData:
    # Own reader instead of sc.read_10x_mtx: scanpy only knows gzipped features.tsv.gz or plain
    # genes.tsv, and fails with a KeyError on one-column features files; GEO has all of these.
    files = locate_mtx(path, source)
    features = _read_features(files, source)  # cheap, validates symbols before the big read
    barcodes = _read_barcodes(files.barcodes, source)
    try:
        matrix = scipy.io.mmread(files.matrix)
    except Exception as exc:  # scipy raises ValueError/OSError/RuntimeError on bad input
        raise _fail(
            source,
            files.matrix,
            f"matrix file '{files.matrix}' cannot be read as Matrix Market ({exc})",
            "re-export or re-download it",
        ) from None
    matrix = sp.csc_matrix(matrix)
    if matrix.shape != (len(features), len(barcodes)):
        raise _fail(
            source,
            files.matrix,
            f"matrix '{files.matrix}' is {matrix.shape[0]} x {matrix.shape[1]} but there are "
            f"{len(features)} features and {len(barcodes)} barcodes",
            "use the three files of one sample (genes x cells, as written by Cell Ranger)",
        )
    _check_counts(matrix.data, files.matrix, source, "the matrix", "")
    return _assemble(
        matrix.T, barcodes, features["symbol"], features["id"], features["feature_type"]
    )


def _read_h5(path: Path, source: str) -> anndata.AnnData:
    import scanpy as sc  # heavy import, only needed here

    try:
        with warnings.catch_warnings():
            # Duplicate symbols are expected here; _assemble makes them unique.
            warnings.filterwarnings("ignore", "Variable names are not unique")
            adata = sc.read_10x_h5(path, gex_only=False)
    except Exception as exc:  # h5py OSError, KeyError, scanpy's bare Exception
        raise _fail(
            source,
            path,
            f"'{path}' cannot be read as a Cell Ranger .h5 file ({type(exc).__name__}: {exc})",
            "check the file is a complete Cell Ranger (filtered_)feature_bc_matrix.h5; for an "
            "AnnData file use the .h5ad extension or set format to h5ad",
        ) from None
    X = adata.X if sp.issparse(adata.X) else np.asarray(adata.X)
    _check_counts(X.data if sp.issparse(X) else X, path, source, "the matrix", "")
    if _looks_ensembl(adata.var_names):
        raise _fail(
            source,
            path,
            f"genes in '{path}' are Ensembl ids and no symbol column was found",
            _ENSEMBL_FIX,
        )
    ftypes = adata.var["feature_types"] if "feature_types" in adata.var else None
    gene_ids = adata.var["gene_ids"] if "gene_ids" in adata.var else adata.var_names
    return _assemble(X, adata.obs_names, adata.var_names, gene_ids, ftypes)


def _h5ad_symbols(
    var: pd.DataFrame, path: Path, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """Return (symbols, gene_ids) for an h5ad var table."""
    names = var.index.astype(str).to_numpy()
    if _looks_ensembl(names):
        column = next((c for c in SYMBOL_COLUMNS if c in var.columns), None)
        if column is None:
            raise _fail(
                source,
                path,
                f"genes in '{path}' are Ensembl ids and no symbol column was found (looked for "
                f"var columns {', '.join(SYMBOL_COLUMNS)})",
                _ENSEMBL_FIX,
            )
        symbols = var[column].astype(object).to_numpy()
        # Genes without a symbol keep their id rather than becoming 'nan' or ''.
        missing = pd.isna(symbols) | (pd.Series(symbols).astype(str).str.strip() == "").to_numpy()
        symbols = np.where(missing, names, symbols).astype(str)
        return symbols, names
    id_column = next((c for c in ID_COLUMNS if c in var.columns), None)
    gene_ids = var[id_column].astype(str).to_numpy() if id_column else names
    return names, gene_ids


def _h5ad_counts_elem(
    f: h5py.File, path: Path, counts_layer: str | None, source: str
) -> tuple[h5py.Group | h5py.Dataset, str, str]:
    """The h5ad element holding counts, its label for messages, and the layers fix hint."""
    if "matrix" in f and "X" not in f:
        raise _fail(
            source,
            path,
            f"'{path}' is a Cell Ranger .h5 file, not an AnnData .h5ad file",
            "set format to 10x_h5 (or leave it empty to auto-detect)",
        )
    layers = sorted(f["layers"].keys()) if "layers" in f else []
    hint = _h5ad_layers_hint(layers, "raw" in f)
    if counts_layer:
        if counts_layer not in layers:
            raise _missing_layer(path, counts_layer, layers, source)
        return f["layers"][counts_layer], f"layer '{counts_layer}'", hint
    if "X" not in f:
        raise _fail(
            source,
            path,
            f"'{path}' has no X matrix",
            "set `counts_layer` to the layer with raw counts (available layers: "
            + (", ".join(repr(x) for x in layers) or "none")
            + ")",
        )
    return f["X"], "X", hint


def _read_h5ad(path: Path, counts_layer: str | None, source: str) -> anndata.AnnData:
    # Read only obs, var and the one matrix holding counts: an h5ad may carry dense layers,
    # embeddings or .raw that would multiply memory for nothing.
    try:
        with h5py.File(path, "r") as f:
            elem, what, hint = _h5ad_counts_elem(f, path, counts_layer, source)
            obs = anndata.io.read_elem(f["obs"])
            var = anndata.io.read_elem(f["var"])
            X = anndata.io.read_elem(elem)
    except InputError:
        raise
    except Exception as exc:  # h5py OSError on corrupt files, anndata errors on odd encodings
        raise _fail(
            source,
            path,
            f"'{path}' cannot be read as an AnnData .h5ad file ({type(exc).__name__}: {exc})",
            "check the file is complete (re-download or re-save it with anndata.write_h5ad)",
        ) from None
    if not (sp.issparse(X) or isinstance(X, np.ndarray)):
        X = np.asarray(X)
    _check_counts(X.data if sp.issparse(X) else X, path, source, what, hint)
    symbols, gene_ids = _h5ad_symbols(var, path, source)
    ftype_col = next((c for c in ("feature_types", "feature_type") if c in var.columns), None)
    ftypes = var[ftype_col].astype(str).to_numpy() if ftype_col else None
    return _assemble(X, obs.index, symbols, gene_ids, ftypes)


def _missing_layer(path: Path, layer: str, layers: Sequence[str], source: str) -> InputError:
    return _fail(
        source,
        path,
        f"counts_layer '{layer}' is not in '{path}' (available layers: "
        + (", ".join(repr(x) for x in layers) or "none")
        + ")",
        "set `counts_layer` to one of the available layers, or leave it empty to use X",
    )


def _check_layer_arg(fmt: str, counts_layer: str | None, path: Path, source: str) -> None:
    if counts_layer and fmt != "h5ad":
        raise _fail(
            source,
            path,
            f"counts_layer '{counts_layer}' is given but '{path}' is {fmt}, which has no layers",
            "leave `counts_layer` empty (it only applies to .h5ad files)",
        )


def read_counts(
    path: str | Path,
    fmt: str | None = None,
    counts_layer: str | None = None,
    source: str = "",
) -> anndata.AnnData:
    """Read raw counts of one sample into a cells x genes AnnData.

    Parameters
    ----------
    path
        Cell Ranger matrix folder, GEO-style ``<prefix>matrix.mtx(.gz)`` file, 10x ``.h5`` or
        AnnData ``.h5ad``.
    fmt
        ``"10x_mtx"``, ``"10x_h5"`` or ``"h5ad"``; ``None`` or ``""`` detects it.
    counts_layer
        For h5ad only: the layer holding raw counts (default: ``X``).
    source
        Short label that prefixes error messages, e.g.
        ``"config/samples.tsv line 3 (sample 'D1_pre')"``.

    Returns
    -------
    anndata.AnnData
        ``X`` float32 CSR raw counts; ``obs_names`` the barcodes exactly as in the input and an
        otherwise empty ``obs``; ``var_names`` unique gene symbols; ``var["gene_ids"]`` the ids
        (the symbol when no id is known). Only "Gene Expression" features are kept.

    Raises
    ------
    InputError
        Unreadable file, unknown layout, missing layer, non-integer or negative values, or
        Ensembl ids without symbols.
    """
    path = Path(path)
    fmt = _check_fmt(fmt, path, source)
    _check_layer_arg(fmt, counts_layer, path, source)
    if fmt == "10x_mtx":
        return _read_mtx(path, source)
    if fmt == "10x_h5":
        return _read_h5(path, source)
    return _read_h5ad(path, counts_layer, source)


# --------------------------------------------------------------------------------------------
# fast pre-flight check
# --------------------------------------------------------------------------------------------


def _decode(values: np.ndarray) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def _peek_mtx(path: Path, source: str, n_values: int) -> None:
    files = locate_mtx(path, source)
    features = _read_features(files, source)  # ~40k short lines: cheap, and catches bad ids
    try:
        with _open_text(files.barcodes) as fh:
            n_barcodes = sum(1 for line in fh if line.strip())
        with _open_text(files.matrix) as fh:
            header = fh.readline()
            parts = header.lower().split()
            if len(parts) < 4 or parts[0] != "%%matrixmarket" or parts[2] != "coordinate":
                raise _fail(
                    source,
                    files.matrix,
                    f"'{files.matrix}' is not a Matrix Market coordinate file (header: "
                    f"{header.strip()[:60]!r})",
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
    except (*_TEXT_ERRORS, IndexError) as exc:
        raise _fail(
            source,
            files.matrix,
            f"10x files next to '{files.matrix}' cannot be read ({type(exc).__name__}: {exc})",
            "re-export or re-download them (a truncated .gz download is a common cause)",
        ) from None
    if (n_rows, n_cols) != (len(features), n_barcodes):
        raise _fail(
            source,
            files.matrix,
            f"matrix '{files.matrix}' is {n_rows} x {n_cols} but there are {len(features)} "
            f"features and {n_barcodes} barcodes",
            "use the three files of one sample (genes x cells, as written by Cell Ranger)",
        )
    _check_counts(np.asarray(values, dtype=np.float64), files.matrix, source, "the matrix", "")


def _peek_h5(path: Path, source: str, n_values: int) -> None:
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
    except Exception as exc:  # OSError for corrupt/non-HDF5, KeyError/StopIteration for layout
        raise _fail(
            source,
            path,
            f"'{path}' cannot be read as a Cell Ranger .h5 file ({type(exc).__name__}: {exc})",
            "check the file is a complete Cell Ranger (filtered_)feature_bc_matrix.h5; for an "
            "AnnData file use the .h5ad extension or set format to h5ad",
        ) from None
    _check_counts(data, path, source, "the matrix", "")
    names = _decode(names)
    if ftypes is not None:
        keep = np.asarray(_decode(ftypes)) == GENE_EXPRESSION
        names = [n for n, k in zip(names, keep, strict=True) if k]
    if _looks_ensembl(names):
        raise _fail(
            source,
            path,
            f"genes in '{path}' are Ensembl ids and no symbol column was found",
            _ENSEMBL_FIX,
        )


def _peek_values(elem: h5py.Group | h5py.Dataset, n_values: int) -> np.ndarray:
    """First values of an h5ad matrix element without reading the whole matrix."""
    if isinstance(elem, h5py.Group):  # sparse: data/indices/indptr
        return elem["data"][:n_values]
    if elem.ndim < 2 or elem.shape[1] == 0:
        return elem[:n_values]
    rows = max(1, n_values // elem.shape[1])
    return elem[:rows].ravel()


def _peek_h5ad(path: Path, counts_layer: str | None, source: str, n_values: int) -> None:
    try:
        with h5py.File(path, "r") as f:
            elem, what, hint = _h5ad_counts_elem(f, path, counts_layer, source)
            values = _peek_values(elem, n_values)
            var = f["var"]
            if isinstance(var, h5py.Group):
                index_key = var.attrs.get("_index", "_index")
                if isinstance(index_key, bytes):
                    index_key = index_key.decode()
                names = _decode(var[index_key][:]) if index_key in var else []
                var_columns = set(var.keys())
            else:  # anndata < 0.7 stored var as a compound dataset
                names = _decode(var["index"][:]) if "index" in (var.dtype.names or ()) else []
                var_columns = set(var.dtype.names or ())
    except InputError:
        raise
    except Exception as exc:  # OSError for corrupt/non-HDF5, KeyError for missing elements
        raise _fail(
            source,
            path,
            f"'{path}' cannot be read as an AnnData .h5ad file ({type(exc).__name__}: {exc})",
            "check the file is complete (re-download or re-save it with anndata.write_h5ad)",
        ) from None
    _check_counts(values, path, source, what, hint)
    if _looks_ensembl(names) and not var_columns.intersection(SYMBOL_COLUMNS):
        raise _fail(
            source,
            path,
            f"genes in '{path}' are Ensembl ids and no symbol column was found (looked for "
            f"var columns {', '.join(SYMBOL_COLUMNS)})",
            _ENSEMBL_FIX,
        )


def peek_counts(
    path: str | Path,
    fmt: str | None,
    counts_layer: str | None = None,
    source: str = "",
    n_values: int = 20000,
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
        ``"10x_mtx"``, ``"10x_h5"`` or ``"h5ad"``; ``None`` or ``""`` detects it.
    counts_layer
        For h5ad only: the layer holding raw counts.
    source
        Short label that prefixes error messages.
    n_values
        How many stored values to check for integrality.

    Raises
    ------
    InputError
        The same problems :func:`read_counts` reports: unreadable or corrupt file, missing
        counts layer, non-integer or negative values, Ensembl ids without symbols.
    """
    path = Path(path)
    fmt = _check_fmt(fmt, path, source)
    _check_layer_arg(fmt, counts_layer, path, source)
    if fmt == "10x_mtx":
        _peek_mtx(path, source, n_values)
    elif fmt == "10x_h5":
        _peek_h5(path, source, n_values)
    else:
        _peek_h5ad(path, counts_layer, source, n_values)


# --------------------------------------------------------------------------------------------
# writing (used by the data simulator and tests)
# --------------------------------------------------------------------------------------------


def _integer_counts(adata: anndata.AnnData) -> sp.csr_matrix:
    """Cells x genes CSR int64 counts of ``adata.X``; ValueError when not integers."""
    X = sp.csr_matrix(adata.X)
    X.sum_duplicates()
    X.sort_indices()
    if X.nnz and (np.any(X.data != np.round(X.data)) or X.data.min() < 0):
        raise ValueError("adata.X must hold non-negative integer counts to be written as 10x")
    return sp.csr_matrix(X, dtype=np.int64)


def _gene_ids(adata: anndata.AnnData) -> np.ndarray:
    if "gene_ids" in adata.var.columns:
        return adata.var["gene_ids"].astype(str).to_numpy()
    return adata.var_names.astype(str).to_numpy()


def _gzip_writer(path: Path) -> gzip.GzipFile:
    # mtime=0 keeps the bytes reproducible for identical input; level 6 is ~6x faster than 9.
    return gzip.GzipFile(path, "wb", compresslevel=9, mtime=0)


def write_10x_mtx(adata: anndata.AnnData, folder: str | Path, prefix: str = "") -> Path:
    """Write counts in the Cell Ranger v3 Matrix Market layout.

    Parameters
    ----------
    adata
        Cells x genes, ``X`` non-negative integer counts; ``var["gene_ids"]`` gives the feature
        ids (``var_names`` when absent), ``var_names`` the symbols.
    folder
        Output folder (created when missing).
    prefix
        File-name prefix, e.g. ``"GSM1_sampleA_"`` for a GEO-style triplet.

    Returns
    -------
    pathlib.Path
        The written ``{prefix}matrix.mtx.gz``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    genes_by_cells = _integer_counts(adata).T.tocsc()  # column-major: entries grouped by cell
    coo = genes_by_cells.tocoo()
    matrix_path = folder / f"{prefix}matrix.mtx.gz"
    with _gzip_writer(matrix_path) as fh:
        # scipy's C++ writer is ~15x faster than np.savetxt on millions of entries.
        scipy.io.mmwrite(fh, coo, comment='metadata_json: {"format_version": 2}', field="integer")
    features = pd.DataFrame(
        {
            "id": _gene_ids(adata),
            "symbol": adata.var_names.astype(str),
            "type": GENE_EXPRESSION,
        }
    )
    with _gzip_writer(folder / f"{prefix}features.tsv.gz") as fh:
        fh.write(features.to_csv(sep="\t", header=False, index=False).encode())
    with _gzip_writer(folder / f"{prefix}barcodes.tsv.gz") as fh:
        fh.write("".join(f"{b}\n" for b in adata.obs_names.astype(str)).encode())
    return matrix_path


def write_10x_h5(adata: anndata.AnnData, path: str | Path, *, genome: str = "GRCh38",
                 compression_level: int = 9) -> Path:
    """Write counts in the Cell Ranger v3 HDF5 layout (``filtered_feature_bc_matrix.h5``).

    Parameters
    ----------
    adata
        Cells x genes, ``X`` non-negative integer counts; ``var["gene_ids"]`` gives the feature
        ids (``var_names`` when absent), ``var_names`` the symbols.
    path
        Output ``.h5`` file (parent folder created when missing).
    genome
        Value of ``features/genome`` for every feature.
    compression_level
        gzip level of the datasets (9: smallest files; 1: several times faster to write).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Cells x genes CSR is exactly genes x cells CSC (one column per cell), Cell Ranger's layout.
    X = _integer_counts(adata)
    n_cells, n_genes = X.shape

    def dset(group: h5py.Group, name: str, values: np.ndarray) -> None:
        # Compression needs a chunked dataset, which h5py cannot make for zero-length data.
        big = {"compression": "gzip", "compression_opts": compression_level, "shuffle": True} if len(values) else {}
        group.create_dataset(name, data=values, **big)

    def ascii(values) -> np.ndarray:
        encoded = [str(v).encode("utf-8") for v in values]
        return np.array(encoded, dtype=f"S{max((len(v) for v in encoded), default=1) or 1}")

    with h5py.File(path, "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["version"] = 2
        m = f.create_group("matrix")
        dset(m, "barcodes", ascii(adata.obs_names))
        dset(m, "data", X.data.astype(np.int32))
        dset(m, "indices", X.indices.astype(np.int64))
        dset(m, "indptr", X.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array([n_genes, n_cells], dtype=np.int32))
        feats = m.create_group("features")
        dset(feats, "id", ascii(_gene_ids(adata)))
        dset(feats, "name", ascii(adata.var_names))
        dset(feats, "feature_type", ascii([GENE_EXPRESSION] * n_genes))
        dset(feats, "genome", ascii([genome] * n_genes))
        feats.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
    return path


def read_h5ad_parts(path: str | Path, *, x: bool = True, layers: Sequence[str] = (),
                    obsm: Sequence[str] = ()) -> anndata.AnnData:
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
    layers, obsm
        Names of the layers and ``obsm`` entries to read.

    Returns
    -------
    anndata.AnnData
        With the requested elements.
    """
    from anndata.io import read_elem

    with h5py.File(path, "r") as handle:
        missing = [f"layers/{k}" for k in layers if k not in handle.get("layers", {})]
        missing += [f"obsm/{k}" for k in obsm if k not in handle.get("obsm", {})]
        if missing:
            raise KeyError(f"{path}: no {', '.join(missing)}")
        return anndata.AnnData(
            X=read_elem(handle["X"]) if x else None,
            obs=read_elem(handle["obs"]),
            var=read_elem(handle["var"]),
            layers={k: read_elem(handle["layers"][k]) for k in layers},
            obsm={k: read_elem(handle["obsm"][k]) for k in obsm},
        )


class H5adFiles(Mapping):
    """Read-only mapping name -> AnnData that reads the ``.h5ad`` file on every access.

    Holds no object between accesses, so a step that visits samples one after another keeps one
    of them in memory at a time (:func:`pbmc_prepost.cluster.merge_samples` on many samples).
    """

    def __init__(self, paths: Mapping[str, str | Path]):
        self._paths = dict(paths)

    def __getitem__(self, name: str) -> anndata.AnnData:
        return anndata.read_h5ad(self._paths[name])

    def __iter__(self):
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)
