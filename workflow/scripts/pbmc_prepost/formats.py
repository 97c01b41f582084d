"""The input layouts the workflow reads, and how a path's layout is told from its name and content.

Every problem raises :class:`pbmc_prepost.InputError` with a one-line message that names the
file, says what is wrong and ends with ``Fix: ...`` (:func:`fail`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py

from pbmc_prepost import InputError

FORMATS: tuple[str, ...] = ("10x_mtx", "10x_h5", "cellbender_h5", "h5ad")
#: Formats whose counts were already corrected for ambient RNA (the workflow does not do it again).
AMBIENT_CORRECTED = {"cellbender_h5": "CellBender"}
#: HDF5 groups CellBender remove-background (0.3) writes beside the 10x-style ``/matrix``.
CELLBENDER_GROUPS = frozenset({"droplet_latents", "global_latents"})

_LAYOUTS = (
    "a Cell Ranger folder with matrix.mtx(.gz) + features.tsv(.gz) or genes.tsv(.gz) + "
    "barcodes.tsv(.gz); a GEO-style matrix file '<prefix>matrix.mtx(.gz)' next to "
    "'<prefix>features.tsv(.gz)' (or genes.tsv) and '<prefix>barcodes.tsv(.gz)'; "
    "a Cell Ranger '.h5' file; CellBender remove-background's output '.h5'; an AnnData '.h5ad' file"
)


def fail(source: str, path: str | Path, problem: str, fix: str) -> InputError:
    """Build a one-line InputError: ``<source>: <problem about path>. Fix: <fix>.``."""
    where = source if source else str(path)
    return InputError(f"{where}: {problem}. Fix: {fix}.")


def _first_existing(folder: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


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
        prefixes = sorted({p for f in path.iterdir() if (p := _matrix_prefix(f.name)) not in (None, "")})
        if len(prefixes) == 1:
            files, missing = _triplet(path, prefixes[0])
            if files is not None:
                return files
        if len(prefixes) > 1:
            raise fail(
                source,
                path,
                f"folder '{path}' holds several matrix files (" + ", ".join(f"{p}matrix.mtx" for p in prefixes) + ")",
                "point `path` at one '<prefix>matrix.mtx.gz' file per sample",
            )
        subdirs = [d.name for d in path.iterdir() if d.is_dir() and _triplet(d, "")[0]]
        hint = f" (found one in subfolder '{subdirs[0]}': point `path` there)" if subdirs else ""
        raise fail(
            source,
            path,
            f"folder '{path}' is not a 10x matrix folder: missing {', '.join(missing)}{hint}",
            f"provide one of the accepted layouts: {_LAYOUTS}",
        )
    prefix = _matrix_prefix(path.name)
    if prefix is None or not path.is_file():
        raise fail(
            source,
            path,
            f"'{path}' is neither a 10x matrix folder nor a '<prefix>matrix.mtx(.gz)' file",
            f"provide one of the accepted layouts: {_LAYOUTS}",
        )
    files, missing = _triplet(path.parent, prefix)
    if files is None:
        raise fail(
            source,
            path,
            f"matrix file '{path}' has no matching sibling {' and '.join(missing)} in '{path.parent}'",
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
        One of ``"10x_mtx"``, ``"10x_h5"``, ``"cellbender_h5"``, ``"h5ad"``.

    Raises
    ------
    InputError
        When the path does not exist or matches none of the accepted layouts.
    """
    path = Path(path)
    if not path.exists():
        raise fail(source, path, f"'{path}' does not exist", "correct the path")
    if path.is_dir() or _matrix_prefix(path.name) is not None:
        locate_mtx(path, source)
        return "10x_mtx"
    # Content first: sc.write("x.h5", adata) gives an AnnData file with a 10x-looking name.
    sniffed = sniff_hdf5(path)
    if sniffed:
        return sniffed
    name = path.name.lower()
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith(".h5"):
        return "10x_h5"
    raise fail(
        source,
        path,
        f"cannot tell the format of file '{path}' from its name or content",
        f"provide one of the accepted layouts: {_LAYOUTS}; or set the `format` column",
    )


def sniff_hdf5(path: Path) -> str | None:
    """'10x_h5', 'cellbender_h5' or 'h5ad' from an HDF5 file's top-level keys; None when not
    telling/unreadable."""
    try:
        if not h5py.is_hdf5(path):
            return None
        with h5py.File(path, "r") as f:
            keys = set(f.keys())
            if "matrix" in keys:
                return "cellbender_h5" if keys & CELLBENDER_GROUPS else "10x_h5"
            if "X" in keys or {"obs", "var"} <= keys:
                return "h5ad"
            # Cell Ranger v2: one group per genome, each with barcodes and gene_names
            if keys and all(
                isinstance(f[k], h5py.Group) and {"barcodes", "gene_names"} <= set(f[k].keys()) for k in keys
            ):
                return "10x_h5"
    except (OSError, KeyError, ValueError):  # corrupt: let the extension decide, peek reports it
        return None
    return None


def resolve_format(fmt: str | None, path: Path, source: str) -> str:
    if fmt is None or fmt == "":
        return detect_format(path, source)
    if fmt not in FORMATS:
        raise fail(
            source,
            path,
            f"unknown format '{fmt}'",
            f"use one of {', '.join(FORMATS)} (or leave it empty to auto-detect)",
        )
    if not path.exists():
        raise fail(source, path, f"'{path}' does not exist", "correct the path")
    return fmt
