"""Write simulated samples in the input layouts users bring: Cell Ranger folders and .h5, GEO
triplets, AnnData (also a processed one with Ensembl ids and counts in a layer), plus the truth.

Only the simulator and the tests write count files; the workflow only reads them.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import anndata
import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from pbmc_prepost.io import GENE_EXPRESSION
from pbmc_prepost.simulation.model import SimulatedData


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


def write_10x_h5(
    adata: anndata.AnnData, path: str | Path, *, genome: str = "GRCh38", compression_level: int = 9
) -> Path:
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


def write_cellbender_h5(
    adata: anndata.AnnData, path: str | Path, cell_probability: np.ndarray, ambient_expression: np.ndarray
) -> Path:
    """Write counts as CellBender remove-background (0.3) writes its output: the Cell Ranger v3
    ``/matrix`` (here: the counts given, as if corrected) plus ``/droplet_latents`` (each
    droplet's ``cell_probability``) and ``/global_latents`` (``ambient_expression``, the soup
    profile summing to one). Droplets of probability <= 0.5 are those CellBender leaves out of its
    ``_filtered.h5``.
    """
    path = write_10x_h5(adata, path)
    with h5py.File(path, "a") as f:
        f.attrs["TITLE"] = "CellBender remove-background output"
        latents = f.create_group("droplet_latents")
        latents.create_dataset("cell_probability", data=np.asarray(cell_probability, dtype=np.float32))
        latents.create_dataset("barcode_indices_for_latents", data=np.arange(adata.n_obs, dtype=np.int64))
        f.create_group("global_latents").create_dataset(
            "ambient_expression", data=np.asarray(ambient_expression, dtype=np.float32)
        )
    return path


# Input layouts the writer cycles through for a "mixed" dataset, so every reader is exercised; the
# last sample is written as a processed h5ad (Ensembl ids, normalized X, raw counts in a layer).
MIXED_LAYOUTS = ["10x_h5", "cellranger_folder", "h5ad", "geo_triplet"]
PROCESSED_LAYOUT = "h5ad_ensembl_layer"


def write_sample(adata: ad.AnnData, outdir: Path, sample: str, layout: str) -> tuple[Path, str, str]:
    """Write one sample's counts (no truth columns) in the given input layout.

    Returns
    -------
    tuple
        (path for the sample sheet, format name, counts layer or "").
    """
    counts = ad.AnnData(X=adata.X.copy(), obs=pd.DataFrame(index=adata.obs_names.copy()), var=adata.var.copy())
    if layout == "cellranger_folder":
        folder = outdir / sample / "filtered_feature_bc_matrix"
        write_10x_mtx(counts, folder)
        return folder, "10x_mtx", ""
    if layout == "geo_triplet":
        folder = outdir / sample
        write_10x_mtx(counts, folder, prefix=f"{sample}_")
        return folder / f"{sample}_matrix.mtx.gz", "10x_mtx", ""
    if layout == "10x_h5":
        path = outdir / f"{sample}_filtered_feature_bc_matrix.h5"
        write_10x_h5(counts, path)
        return path, "10x_h5", ""
    if layout == "h5ad":
        path = outdir / f"{sample}.h5ad"
        counts.write_h5ad(path, compression="gzip", compression_opts=9)
        return path, "h5ad", ""
    if layout == "h5ad_ensembl_layer":
        # Ensembl ids as var_names with a symbol column, raw counts in a layer, normalized X:
        # what a collaborator's processed object often looks like.
        path = outdir / f"{sample}.h5ad"
        obj = counts.copy()
        obj.var["gene_symbols"] = obj.var_names.astype(str)
        obj.var_names = obj.var["gene_ids"].astype(str).to_numpy()
        obj.layers["counts"] = obj.X.copy()
        lib = np.asarray(obj.X.sum(1)).ravel()
        obj.X = sp.csr_matrix(obj.X.multiply(1e4 / np.maximum(lib, 1)[:, None]).log1p().astype(np.float32))
        obj.write_h5ad(path, compression="gzip", compression_opts=9)
        return path, "h5ad", "counts"
    raise ValueError(f"unknown layout {layout!r}; choose from {[*MIXED_LAYOUTS, PROCESSED_LAYOUT]}")


def write_dataset(
    data: SimulatedData,
    outdir: str | Path,
    sheet: str | Path,
    layout: str = "mixed",
    relative_to: str | Path | None = None,
) -> pd.DataFrame:
    """Write a simulated dataset: per-sample count files, a sample sheet and the truth.

    Parameters
    ----------
    data
        Output of :func:`simulate`.
    outdir
        Folder for the count files and ``truth/`` (cells.tsv.gz, truth.json).
    sheet
        Where to write the sample sheet (TSV).
    layout
        ``"mixed"`` cycles through :data:`MIXED_LAYOUTS`; any single layout name uses it for all.
    relative_to
        Write sheet paths relative to this folder (the folder snakemake runs in); absolute if None.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rows = []
    truth_frames = []
    arm_of = {row["sample"]: row["arm"] for row in data.truth["samples"] if "arm" in row}
    batch_of = {row["sample"]: row.get("batch", "") for row in data.truth["samples"]}
    for i, (sample, adata) in enumerate(data.samples.items()):
        this_layout = layout
        if layout == "mixed":
            last = i == len(data.samples) - 1
            this_layout = PROCESSED_LAYOUT if last else MIXED_LAYOUTS[i % len(MIXED_LAYOUTS)]
        path, fmt, layer = write_sample(adata, outdir, sample, this_layout)
        path = Path(path).resolve()
        if relative_to is not None:
            path = Path(path).relative_to(Path(relative_to).resolve())
        donor, timepoint = sample.rsplit("_", 1)
        raw = {}
        if sample in data.empty:
            # Cell Ranger's raw matrix: every droplet, the cells' and the empty ones (or, to keep
            # the embedded example small, the empty ones only: all the workflow reads of it).
            droplets = data.empty[sample]
            if not data.truth["params"].get("raw_empty_only"):
                cells = ad.AnnData(X=adata.X, obs=pd.DataFrame(index=adata.obs_names), var=adata.var)
                droplets = ad.concat([cells, droplets], merge="first")
            raw_path = write_10x_h5(droplets, outdir / f"{sample}_raw_feature_bc_matrix.h5").resolve()
            raw = {"raw_path": str(raw_path.relative_to(Path(relative_to).resolve()) if relative_to else raw_path)}
        rows.append(
            {
                "sample": sample,
                "donor": donor,
                "timepoint": timepoint,
                **({"arm": arm_of[sample]} if arm_of else {}),
                "batch": batch_of.get(sample, ""),
                "path": str(path),
                "format": fmt,
                "counts_layer": layer,
                **raw,
            }
        )
        frame = adata.obs.copy()
        frame.insert(0, "barcode", adata.obs_names)
        frame.insert(0, "sample", sample)
        truth_frames.append(frame)
    table = pd.DataFrame(rows)
    Path(sheet).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(sheet, sep="\t", index=False)
    truth_dir = outdir / "truth"
    truth_dir.mkdir(exist_ok=True)
    cells = pd.concat(truth_frames, ignore_index=True)
    # mtime=0 keeps the gzip bytes identical across runs.
    with gzip.GzipFile(truth_dir / "cells.tsv.gz", "wb", mtime=0) as fh:
        fh.write(cells.to_csv(sep="\t", index=False, float_format="%.4f").encode())
    (truth_dir / "truth.json").write_text(json.dumps(data.truth, indent=1, default=str) + "\n")
    return table
