"""Merged stage: concatenate samples, normalize, select genes, embed, integrate, cluster, markers.

Methods and defaults follow the single-cell best-practices book (Heumos et al. 2023): shifted
logarithm (Ahlmann-Eltze & Huber 2023), ``seurat_v3`` highly variable genes on raw counts per
sample, PCA, optional Harmony on a technical batch key (Korsunsky et al. 2019; never on the
treatment contrast), kNN graph, UMAP for display only, and Leiden (Traag et al. 2019) with
igraph's implementation at several resolutions with a fixed seed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

log = logging.getLogger(__name__)


def merge_samples(objects: Mapping[str, ad.AnnData], sample_meta: pd.DataFrame,
                  meta_columns: Sequence[str], min_cells_per_gene: int) -> ad.AnnData:
    """Concatenate per-sample QC-passed objects and attach sample metadata.

    Parameters
    ----------
    objects
        sample id -> AnnData with raw counts in ``X`` and obs names ``sample:barcode``; read twice,
        so a mapping that loads each sample on access keeps one sample in memory at a time.
    sample_meta
        Sample sheet indexed by sample id.
    meta_columns
        Sheet columns copied into ``obs`` (e.g. donor, timepoint, batch).
    min_cells_per_gene
        Genes detected in fewer cells are dropped (scanpy ``filter_genes``).

    Returns
    -------
    AnnData
        Raw counts in ``layers["counts"]`` and, until :func:`normalize` runs, in ``X`` too (the
        same matrix object, not a copy). Only genes present in every sample are kept.
    """
    names = list(objects)
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
        log.warning("%d genes are not measured in every sample and are dropped (e.g. %s)",
                    len(dropped), ", ".join(sorted(dropped)[:5]))
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
    log.info("merged %d samples: %d cells, %d genes (%d detected in < %d cells dropped)",
             len(names), merged.n_obs, merged.n_vars, len(genes) - len(keep), min_cells_per_gene)
    merged.layers["counts"] = merged.X
    return merged


def normalize(adata: ad.AnnData, target_sum: float | None) -> None:
    """Shifted-log normalization into ``X``; raw counts stay in ``layers["counts"]``."""
    adata.X = adata.layers["counts"].copy()
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)


def select_hvgs(adata: ad.AnnData, n_top_genes: int, flavor: str, batch_key: str | None,
                exclude_patterns: Sequence[str]) -> None:
    """Highly variable genes on raw counts, ignoring genes that only create artefactual structure.

    Genes matching ``exclude_patterns`` (mitochondrial, haemoglobin, TCR/BCR V genes ...) are never
    selected. Cell-cycle genes are kept on purpose: proliferation is an expected IL-7 effect.
    """
    pattern = re.compile("|".join(f"(?:{p})" for p in exclude_patterns)) if exclude_patterns else None
    excluded = np.array([bool(pattern.search(g)) for g in adata.var_names]) if pattern else np.zeros(adata.n_vars, bool)
    candidates = adata[:, ~excluded]
    if batch_key and candidates.obs[batch_key].nunique() < 2:
        batch_key = None
    kwargs = {"layer": "counts"} if flavor == "seurat_v3" else {}
    table = sc.pp.highly_variable_genes(candidates, n_top_genes=min(n_top_genes, candidates.n_vars),
                                        flavor=flavor, batch_key=batch_key, inplace=False, **kwargs)
    table.index = candidates.var_names
    adata.var["highly_variable"] = table["highly_variable"].reindex(adata.var_names, fill_value=False).astype(bool)
    adata.var["hvg_excluded"] = excluded
    log.info("%d highly variable genes (%s, batch_key=%s); %d genes excluded by pattern",
             int(adata.var["highly_variable"].sum()), flavor, batch_key, int(excluded.sum()))


def embed(adata: ad.AnnData, n_comps: int, integration: str, batch_key: str, harmony_theta: float,
          harmony_max_iter: int, n_neighbors: int, n_pcs: int, umap_min_dist: float, seed: int) -> str:
    """PCA, optional Harmony, kNN graph and UMAP. Returns the representation used for the graph."""
    n_comps = int(min(n_comps, adata.n_obs - 1, int(adata.var["highly_variable"].sum()) - 1))
    sc.pp.pca(adata, n_comps=n_comps, mask_var="highly_variable", random_state=seed)
    use_rep = "X_pca"
    if integration == "harmony":
        if adata.obs[batch_key].nunique() < 2:
            log.warning("integration: harmony requested but '%s' has one level: skipped", batch_key)
        else:
            import harmonypy

            result = harmonypy.run_harmony(adata.obsm["X_pca"], adata.obs, [batch_key], theta=harmony_theta,
                                           max_iter_harmony=harmony_max_iter, random_state=seed, verbose=False)
            corrected = np.asarray(result.Z_corr)
            if corrected.shape[0] != adata.n_obs:
                corrected = corrected.T
            adata.obsm["X_pca_harmony"] = corrected.astype(np.float32)
            use_rep = "X_pca_harmony"
            log.info("harmony on '%s' (%d levels)", batch_key, adata.obs[batch_key].nunique())
    sc.pp.neighbors(adata, n_neighbors=n_neighbors, n_pcs=min(n_pcs, n_comps), use_rep=use_rep,
                    random_state=seed)
    sc.tl.umap(adata, min_dist=umap_min_dist, random_state=seed)
    return use_rep


def leiden_key(resolution: float) -> str:
    """obs column name of the Leiden clustering at ``resolution`` (``leiden_0.8``)."""
    return f"leiden_{resolution:g}"


def cluster(adata: ad.AnnData, resolutions: Sequence[float], n_iterations: int, seed: int) -> list[str]:
    """Leiden (igraph flavour) at every resolution; clusters numbered by size, largest = 0."""
    keys = []
    for resolution in resolutions:
        key = leiden_key(resolution)
        sc.tl.leiden(adata, resolution=resolution, key_added=key, flavor="igraph",
                     n_iterations=n_iterations, directed=False, random_state=seed)
        # Renumber by size so labels do not depend on igraph's internal order.
        sizes = adata.obs[key].value_counts()
        mapping = {old: str(new) for new, old in enumerate(sizes.index)}
        adata.obs[key] = pd.Categorical(adata.obs[key].map(mapping),
                                        categories=[str(i) for i in range(len(sizes))])
        log.info("leiden resolution %g: %d clusters", resolution, len(sizes))
        keys.append(key)
    return keys


def stratified_subsample(labels: pd.Series, max_per_group: int, seed: int) -> np.ndarray:
    """Positions of at most ``max_per_group`` randomly chosen cells per label (sorted)."""
    rng = np.random.default_rng(seed)
    positions = []
    codes = pd.Categorical(labels)
    for code in range(len(codes.categories)):
        members = np.flatnonzero(codes.codes == code)
        if len(members) > max_per_group:
            members = rng.choice(members, max_per_group, replace=False)
        positions.append(members)
    return np.sort(np.concatenate(positions)) if positions else np.array([], dtype=int)


def cluster_markers(adata: ad.AnnData, groupby: str, max_cells_per_cluster: int, n_genes: int,
                    seed: int) -> pd.DataFrame:
    """Wilcoxon marker genes per cluster on a stratified subsample of cells.

    Cell-level tests are used for cluster markers only, never for the treatment contrast. The
    subsample caps the cost on large data (every cluster keeps up to ``max_cells_per_cluster``
    cells) and is recorded in the ``cells_tested`` column.
    """
    positions = stratified_subsample(adata.obs[groupby], max_cells_per_cluster, seed)
    sub = adata[positions]
    sub = ad.AnnData(X=sub.X, obs=sub.obs[[groupby]].copy(), var=pd.DataFrame(index=sub.var_names))
    sc.tl.rank_genes_groups(sub, groupby=groupby, method="wilcoxon", pts=True, tie_correct=True)
    table = sc.get.rank_genes_groups_df(sub, group=None)
    counts = sub.obs[groupby].value_counts()
    table = table.rename(columns={"group": "cluster", "names": "gene", "scores": "score",
                                  "logfoldchanges": "log2_fold_change", "pvals": "pvalue",
                                  "pvals_adj": "padj", "pct_nz_group": "fraction_in_cluster",
                                  "pct_nz_reference": "fraction_in_rest"})
    table["cells_tested"] = table["cluster"].map(counts).astype(int)
    table["rank"] = table.groupby("cluster", observed=True).cumcount() + 1
    table = table[table["rank"] <= n_genes]
    columns = ["cluster", "rank", "gene", "score", "log2_fold_change", "pvalue", "padj",
               "fraction_in_cluster", "fraction_in_rest", "cells_tested"]
    return table[columns].reset_index(drop=True)


def group_expression(adata: ad.AnnData, groupby: str, genes: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean log-normalized expression and fraction of cells expressing, per group x gene."""
    sub = adata[:, list(genes)]
    matrix = sub.X.toarray() if sp.issparse(sub.X) else np.asarray(sub.X)
    frame = pd.DataFrame(matrix, columns=list(genes))
    labels = adata.obs[groupby].to_numpy()
    mean = frame.groupby(labels, sort=True).mean()
    fraction = (frame > 0).groupby(labels, sort=True).mean()
    order = sorted(mean.index, key=lambda v: (not str(v).isdigit(), int(v) if str(v).isdigit() else 0, str(v)))
    return mean.loc[order], fraction.loc[order]
