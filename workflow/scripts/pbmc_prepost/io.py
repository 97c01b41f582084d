"""Reading single-cell count matrices (10x mtx, 10x HDF5, AnnData h5ad) and telling their format.

Every reader returns the same shape of object so later steps need not care where the counts came
from: cells x genes, ``X`` a float32 CSR matrix of raw integer counts, ``obs_names`` the barcodes as
written in the input, ``var_names`` unique gene symbols and ``var["gene_ids"]`` the stable ids.

All problems a user can fix raise :class:`pbmc_prepost.InputError` with a one-line message that
names the file, says what is wrong and ends with ``Fix: ...``. The layouts and their detection are
in :mod:`pbmc_prepost.formats`; the cheap checks that run before any
job are in :mod:`pbmc_prepost.preflight`; the writers, used only to make simulated inputs, in
:mod:`pbmc_prepost.simulation.writers`.
"""

from __future__ import annotations

import gzip
import logging
import re
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from pbmc_prepost import InputError
from pbmc_prepost.formats import MtxFiles, fail, locate_mtx, resolve_format

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
TEXT_ERRORS = (OSError, EOFError, UnicodeDecodeError, ValueError, zlib.error)
_ENSEMBL_RE = re.compile(r"^ENS[A-Z]*G\d+")
ENSEMBL_FIX = "add a var column 'gene_symbols' or provide the Cell Ranger folder whose features.tsv holds symbols"

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def looks_ensembl(names: Sequence[str] | np.ndarray | pd.Index) -> bool:
    """True when most names are Ensembl gene ids.

    A majority rule rather than "any": recent Cell Ranger references name genes without a symbol
    by their Ensembl id, so a symbol-indexed matrix legitimately contains a minority of ids.
    """
    names = [str(n) for n in names]
    if not names:
        return False
    hits = sum(1 for n in names if _ENSEMBL_RE.match(n))
    return hits > len(names) / 2


def check_counts(values: np.ndarray, path: str | Path, source: str, what: str, layers_hint: str) -> None:
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
    raise fail(
        source,
        path,
        f"{what} in '{path}' holds non-integer or negative values (e.g. {bad:g}), so these look "
        "normalized/log-transformed rather than raw counts",
        "point `path` to the raw counts" + layers_hint,
    )


def unreadable_h5(path: Path, source: str, exc: Exception) -> InputError:
    """The error for a file that cannot be read as a Cell Ranger ``.h5``."""
    return fail(
        source,
        path,
        f"'{path}' cannot be read as a Cell Ranger .h5 file ({type(exc).__name__}: {exc})",
        "check the file is a complete Cell Ranger (filtered_)feature_bc_matrix.h5; for an "
        "AnnData file use the .h5ad extension or set format to h5ad",
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


def open_text(path: Path):
    """Open a plain or gzipped text file (chosen by the '.gz' suffix) for reading."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def read_features(files: MtxFiles, source: str) -> pd.DataFrame:
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
        raise fail(source, files.features, f"features file '{files.features}' is empty", "re-export it") from None
    except TEXT_ERRORS as exc:
        raise fail(
            source,
            files.features,
            f"features file '{files.features}' cannot be read ({exc})",
            "re-export or re-download it",
        ) from None
    return _features_frame(table, files.features, source)


def _features_frame(table: pd.DataFrame, path: Path, source: str) -> pd.DataFrame:
    ids = table.iloc[:, 0].astype(str).to_numpy()
    if table.shape[1] == 1:
        if looks_ensembl(ids):
            raise fail(
                source,
                path,
                f"genes in '{path}' are Ensembl ids and no symbol column was found "
                "(the features file has a single column)",
                ENSEMBL_FIX,
            )
        symbols = ids
    else:
        symbols = table.iloc[:, 1].astype(str).to_numpy()
        if looks_ensembl(symbols):
            raise fail(
                source,
                path,
                f"genes in '{path}' are Ensembl ids and no symbol column was found (the name column holds ids too)",
                ENSEMBL_FIX,
            )
    ftype = (
        table.iloc[:, 2].astype(str).to_numpy()
        if table.shape[1] >= 3
        else np.full(len(ids), GENE_EXPRESSION, dtype=object)
    )
    return pd.DataFrame({"id": ids, "symbol": symbols, "feature_type": ftype})


def _read_barcodes(path: Path, source: str) -> np.ndarray:
    try:
        table = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False, quoting=3)
    except pd.errors.EmptyDataError:
        raise fail(source, path, f"barcodes file '{path}' is empty", "re-export it") from None
    except TEXT_ERRORS as exc:
        raise fail(
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
    duplicated = pd.Index(symbols)[pd.Index(symbols).duplicated()].unique()
    if len(duplicated):
        log.info(
            "%d gene symbol(s) appear more than once and were made unique with -1, -2 ... (e.g. %s)",
            len(duplicated),
            ", ".join(map(str, duplicated[:5])),
        )
    var = pd.DataFrame({"gene_ids": gene_ids}, index=anndata.utils.make_index_unique(pd.Index(symbols)))
    obs = pd.DataFrame(index=pd.Index(np.asarray(barcodes, dtype=str)))
    return anndata.AnnData(X=X, obs=obs, var=var)


def _read_mtx(path: Path, source: str) -> anndata.AnnData:
    # Own reader instead of sc.read_10x_mtx: scanpy only knows gzipped features.tsv.gz or plain
    # genes.tsv, and fails with a KeyError on one-column features files; GEO has all of these.
    files = locate_mtx(path, source)
    features = read_features(files, source)  # cheap, validates symbols before the big read
    barcodes = _read_barcodes(files.barcodes, source)
    try:
        matrix = scipy.io.mmread(files.matrix, spmatrix=True)  # scipy >= 1.20 would return a sparse array
    except Exception as exc:  # scipy raises ValueError/OSError/RuntimeError on bad input
        raise fail(
            source,
            files.matrix,
            f"matrix file '{files.matrix}' cannot be read as Matrix Market ({exc})",
            "re-export or re-download it",
        ) from None
    matrix = sp.csc_matrix(matrix)
    if matrix.shape != (len(features), len(barcodes)):
        raise fail(
            source,
            files.matrix,
            f"matrix '{files.matrix}' is {matrix.shape[0]} x {matrix.shape[1]} but there are "
            f"{len(features)} features and {len(barcodes)} barcodes",
            "use the three files of one sample (genes x cells, as written by Cell Ranger)",
        )
    check_counts(matrix.data, files.matrix, source, "the matrix", "")
    return _assemble(matrix.T, barcodes, features["symbol"], features["id"], features["feature_type"])


def _read_h5(path: Path, source: str) -> anndata.AnnData:
    import scanpy as sc  # heavy import, only needed here

    try:
        with warnings.catch_warnings():
            # Duplicate symbols are expected here; _assemble makes them unique.
            warnings.filterwarnings("ignore", "Variable names are not unique")
            adata = sc.read_10x_h5(path, gex_only=False)
    except Exception as exc:  # h5py OSError, KeyError, scanpy's bare Exception
        raise unreadable_h5(path, source, exc) from None
    X = adata.X if sp.issparse(adata.X) else np.asarray(adata.X)
    check_counts(X.data if sp.issparse(X) else X, path, source, "the matrix", "")
    if looks_ensembl(adata.var_names):
        raise fail(
            source,
            path,
            f"genes in '{path}' are Ensembl ids and no symbol column was found",
            ENSEMBL_FIX,
        )
    ftypes = adata.var["feature_types"] if "feature_types" in adata.var else None
    gene_ids = adata.var["gene_ids"] if "gene_ids" in adata.var else adata.var_names
    return _assemble(X, adata.obs_names, adata.var_names, gene_ids, ftypes)


def _h5ad_symbols(var: pd.DataFrame, path: Path, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (symbols, gene_ids) for an h5ad var table."""
    names = var.index.astype(str).to_numpy()
    if looks_ensembl(names):
        column = next((c for c in SYMBOL_COLUMNS if c in var.columns), None)
        if column is None:
            raise fail(
                source,
                path,
                f"genes in '{path}' are Ensembl ids and no symbol column was found (looked for "
                f"var columns {', '.join(SYMBOL_COLUMNS)})",
                ENSEMBL_FIX,
            )
        symbols = var[column].astype(object).to_numpy()
        # Genes without a symbol keep their id rather than becoming 'nan' or ''.
        missing = pd.isna(symbols) | (pd.Series(symbols).astype(str).str.strip() == "").to_numpy()
        symbols = np.where(missing, names, symbols).astype(str)
        return symbols, names
    id_column = next((c for c in ID_COLUMNS if c in var.columns), None)
    gene_ids = var[id_column].astype(str).to_numpy() if id_column else names
    return names, gene_ids


def h5ad_counts_elem(
    f: h5py.File, path: Path, counts_layer: str | None, source: str
) -> tuple[h5py.Group | h5py.Dataset, str, str]:
    """The h5ad element holding counts, its label for messages, and the layers fix hint."""
    if "matrix" in f and "X" not in f:
        raise fail(
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
        raise fail(
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
            elem, what, hint = h5ad_counts_elem(f, path, counts_layer, source)
            obs = anndata.io.read_elem(f["obs"])
            var = anndata.io.read_elem(f["var"])
            X = anndata.io.read_elem(elem)
    except InputError:
        raise
    except Exception as exc:  # h5py OSError on corrupt files, anndata errors on odd encodings
        raise fail(
            source,
            path,
            f"'{path}' cannot be read as an AnnData .h5ad file ({type(exc).__name__}: {exc})",
            "check the file is complete (re-download or re-save it with anndata.write_h5ad)",
        ) from None
    if not (sp.issparse(X) or isinstance(X, np.ndarray)):
        X = np.asarray(X)
    check_counts(X.data if sp.issparse(X) else X, path, source, what, hint)
    symbols, gene_ids = _h5ad_symbols(var, path, source)
    ftype_col = next((c for c in ("feature_types", "feature_type") if c in var.columns), None)
    ftypes = var[ftype_col].astype(str).to_numpy() if ftype_col else None
    return _assemble(X, obs.index, symbols, gene_ids, ftypes)


def _missing_layer(path: Path, layer: str, layers: Sequence[str], source: str) -> InputError:
    return fail(
        source,
        path,
        f"counts_layer '{layer}' is not in '{path}' (available layers: "
        + (", ".join(repr(x) for x in layers) or "none")
        + ")",
        "set `counts_layer` to one of the available layers, or leave it empty to use X",
    )


def check_layer_arg(fmt: str, counts_layer: str | None, path: Path, source: str) -> None:
    if counts_layer and fmt != "h5ad":
        raise fail(
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
        ``"10x_mtx"``, ``"10x_h5"``, ``"cellbender_h5"`` or ``"h5ad"``; ``None`` or ``""``
        detects it. CellBender's output is read as its 10x-style ``/matrix`` (the corrected
        counts), kept to the droplets it calls cells (:func:`cellbender_cells`).
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
    fmt = resolve_format(fmt, path, source)
    check_layer_arg(fmt, counts_layer, path, source)
    if fmt == "10x_mtx":
        return _read_mtx(path, source)
    if fmt == "10x_h5":
        return _read_h5(path, source)
    if fmt == "cellbender_h5":
        adata = _read_h5(path, source)
        cells = cellbender_cells(path)
        if cells is not None:
            adata = adata[adata.obs_names.isin(cells)].copy()
        return adata
    return _read_h5ad(path, counts_layer, source)


#: CellBender writes a droplet to its filtered output when its cell probability exceeds this.
CELLBENDER_CELL_PROBABILITY = 0.5


def cellbender_cells(path: Path) -> np.ndarray | None:
    """Barcodes CellBender calls cells (``/droplet_latents/cell_probability`` above 0.5, its own
    rule for the ``_filtered.h5`` output), or None when the file has no cell probabilities.

    Its full output holds every droplet it saw, empty ones included; the filtered one only cells,
    for which this keeps them all.
    """
    import h5py

    with h5py.File(path, "r") as f:
        latents = f.get("droplet_latents")
        if latents is None or "cell_probability" not in latents or "barcode_indices_for_latents" not in latents:
            return None
        probability = latents["cell_probability"][:]
        indices = latents["barcode_indices_for_latents"][:].astype(int)
        barcodes = f["matrix"]["barcodes"][:].astype(str)
    return barcodes[indices[probability > CELLBENDER_CELL_PROBABILITY]]
