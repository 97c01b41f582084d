"""Merged stage, before clustering: concatenate samples, normalize, select genes, embed.

Methods and defaults follow the single-cell best-practices book (Heumos et al. 2023): shifted
logarithm (Ahlmann-Eltze & Huber 2023), ``seurat_v3`` highly variable genes on raw counts per
sample, PCA, optional Harmony on a technical batch key (Korsunsky et al. 2019; never on the
treatment contrast), kNN graph, and UMAP for display only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from pbmc_prepost.h5ad import read_h5ad_parts
from pbmc_prepost.settings import EmbedSettings, MergeSettings

log = logging.getLogger(__name__)


def merge_samples(objects: Mapping[str, ad.AnnData], settings: MergeSettings) -> ad.AnnData:
    """Concatenate per-sample QC-passed objects and attach sample metadata.

    Parameters
    ----------
    objects
        sample id -> AnnData with raw counts in ``X`` and obs names ``sample:barcode``; read twice,
        so a mapping that loads each sample on access keeps one sample in memory at a time.
    settings
        ``min_cells_per_gene``: genes detected in fewer cells are dropped (scanpy
        ``filter_genes``); ``study``: the sheet columns copied into ``obs`` (donor, timepoint,
        batch ...).

    Returns
    -------
    AnnData
        Raw counts in ``layers["counts"]`` and, until :func:`normalize` runs, in ``X`` too (the
        same matrix object, not a copy). Only genes present in every sample are kept.
    """
    names = list(objects)
    min_cells_per_gene = settings.min_cells_per_gene
    sample_meta, meta_columns = settings.study.sample_meta(), settings.study.meta_columns
    # Two passes over the samples, one sample in memory at a time (``objects`` may load lazily, as
    # io.H5adFiles does): count the cells detecting each gene, then keep the genes that pass scanpy
    # filter_genes' rule (detected in at least min_cells_per_gene cells) before concatenating, so
    # the cells x genes matrix is built once.
    detected = {}
    for s in names:
        sample = objects[s]
        detected[s] = pd.Series(np.asarray((sample.X > 0).sum(axis=0)).ravel(), index=sample.var_names)
    gene_sets = [set(detected[s].index) for s in names]
    common = set.intersection(*gene_sets)
    dropped = set.union(*gene_sets) - common
    if dropped:
        log.warning(
            "%d genes are not measured in every sample and are dropped (e.g. %s)",
            len(dropped),
            ", ".join(sorted(dropped)[:5]),
        )
    genes = pd.Index([g for g in detected[names[0]].index if g in common])
    n_detected = sum(detected[s].reindex(genes).to_numpy() for s in names)
    keep = genes[n_detected >= min_cells_per_gene]
    parts = [objects[s][:, keep].copy() for s in names]
    merged = ad.concat(parts, join="inner", merge="first")
    sizes = [part.n_obs for part in parts]
    del parts
    merged.obs["sample"] = np.repeat(names, sizes)
    for column in meta_columns:
        merged.obs[column] = merged.obs["sample"].map(sample_meta[column]).astype(str).to_numpy()
    for column in ["sample", *meta_columns]:
        merged.obs[column] = pd.Categorical(merged.obs[column])
    merged.X = sp.csr_matrix(merged.X, dtype=np.float32)
    log.info(
        "merged %d samples: %d cells, %d genes (%d detected in < %d cells dropped)",
        len(names),
        merged.n_obs,
        merged.n_vars,
        len(genes) - len(keep),
        min_cells_per_gene,
    )
    merged.layers["counts"] = merged.X
    return merged


def normalize(adata: ad.AnnData, target_sum: float | None) -> None:
    """Shifted-log normalization into ``X``; raw counts stay in ``layers["counts"]``."""
    adata.X = adata.layers["counts"].copy()
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)


def select_hvgs(adata: ad.AnnData, settings: EmbedSettings) -> None:
    """Highly variable genes on raw counts, ignoring genes that only create artefactual structure.

    Genes matching ``exclude_patterns`` (mitochondrial, haemoglobin, TCR/BCR V genes ...) are never
    selected. Cell-cycle genes are kept on purpose: proliferation is an expected IL-7 effect.
    """
    n_top_genes, flavor = settings.n_top_genes, settings.hvg_flavor
    batch_key, exclude_patterns = settings.hvg_batch_key, settings.hvg_exclude_patterns
    pattern = re.compile("|".join(f"(?:{p})" for p in exclude_patterns)) if exclude_patterns else None
    excluded = np.array([bool(pattern.search(g)) for g in adata.var_names]) if pattern else np.zeros(adata.n_vars, bool)
    candidates = adata[:, ~excluded]
    if batch_key and candidates.obs[batch_key].nunique() < 2:
        batch_key = None
    kwargs = {"layer": "counts"} if flavor == "seurat_v3" else {}
    table = sc.pp.highly_variable_genes(
        candidates,
        n_top_genes=min(n_top_genes, candidates.n_vars),
        flavor=flavor,
        batch_key=batch_key,
        inplace=False,
        **kwargs,
    )
    table.index = candidates.var_names
    adata.var["highly_variable"] = table["highly_variable"].reindex(adata.var_names, fill_value=False).astype(bool)
    adata.var["hvg_excluded"] = excluded
    log.info(
        "%d highly variable genes (%s, batch_key=%s); %d genes excluded by pattern",
        int(adata.var["highly_variable"].sum()),
        flavor,
        batch_key,
        int(excluded.sum()),
    )


def embed(adata: ad.AnnData, settings: EmbedSettings) -> str:
    """PCA, optional Harmony, kNN graph and UMAP. Returns the representation used for the graph."""
    seed, integration, batch_key = settings.seed, settings.integration, settings.integration_key
    n_comps = int(min(settings.n_comps, adata.n_obs - 1, int(adata.var["highly_variable"].sum()) - 1))
    sc.pp.pca(adata, n_comps=n_comps, mask_var="highly_variable", random_state=seed)
    use_rep = "X_pca"
    if integration == "harmony":
        if adata.obs[batch_key].nunique() < 2:
            log.warning("integration: harmony requested but '%s' has one level: skipped", batch_key)
        else:
            import harmonypy

            result = harmonypy.run_harmony(
                adata.obsm["X_pca"],
                adata.obs,
                [batch_key],
                theta=settings.harmony_theta,
                max_iter_harmony=settings.harmony_max_iter,
                random_state=seed,
                verbose=False,
            )
            corrected = np.asarray(result.Z_corr)
            if corrected.shape[0] != adata.n_obs:
                corrected = corrected.T
            adata.obsm["X_pca_harmony"] = corrected.astype(np.float32)
            use_rep = "X_pca_harmony"
            log.info("harmony on '%s' (%d levels)", batch_key, adata.obs[batch_key].nunique())
    sc.pp.neighbors(
        adata, n_neighbors=settings.n_neighbors, n_pcs=min(settings.n_pcs, n_comps), use_rep=use_rep, random_state=seed
    )
    sc.tl.umap(adata, min_dist=settings.umap_min_dist, random_state=seed)
    return use_rep


def embed_merged(path: str | Path, settings: EmbedSettings) -> ad.AnnData:
    """HVGs, PCA, optional Harmony, kNN graph and UMAP of the merged object at ``path``.

    One cells x genes matrix is in memory at a time: ``seurat_v3`` ranks genes on the raw counts,
    then PCA reads the log-normalized ``X``.

    Returns
    -------
    anndata.AnnData
        Only what this step adds (the next steps join it back to the counts by cell name):
        obs ``sample``/``barcode``, var ``highly_variable``/``hvg_excluded``, the embeddings,
        the kNN graph and the ``uns`` entries of PCA, neighbours and UMAP.
    """
    on_counts = settings.hvg_flavor == "seurat_v3"
    adata = read_h5ad_parts(path, x=not on_counts, layers=["counts"] if on_counts else [])
    select_hvgs(adata, settings)
    if on_counts:
        chosen = adata.var[["highly_variable", "hvg_excluded"]]
        del adata
        adata = read_h5ad_parts(path)
        adata.var[chosen.columns] = chosen
    use_rep = embed(adata, settings)
    return ad.AnnData(
        obs=adata.obs[["sample", "barcode"]].copy(),
        var=adata.var[["highly_variable", "hvg_excluded"]].copy(),
        obsm={k: v for k, v in adata.obsm.items()},
        obsp={k: v for k, v in adata.obsp.items()},
        uns={
            "neighbors": adata.uns["neighbors"],
            "umap": adata.uns["umap"],
            "pca": adata.uns["pca"],
            "graph_representation": use_rep,
        },
    )
