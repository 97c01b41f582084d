"""Snakemake adapter: HVGs, PCA, optional Harmony, kNN graph and UMAP; writes only the embedding."""

import anndata as ad

from pbmc_prepost import cluster, io
from pbmc_prepost.runtime import cache_numba_compilation, start_job

smk = snakemake  # noqa: F821
p = smk.params
log = start_job(smk.log[0], smk.threads, p.seed)
log.info("numba disk cache turned on for %d pynndescent/umap functions", cache_numba_compilation())
# One cells x genes matrix in memory at a time: seurat_v3 ranks genes on raw counts, PCA runs on
# the log-normalized X.
on_counts = p.hvg["flavor"] == "seurat_v3"
adata = io.read_h5ad_parts(smk.input.h5ad, x=not on_counts, layers=["counts"] if on_counts else [])
cluster.select_hvgs(adata, p.hvg["n_top_genes"], p.hvg["flavor"], p.hvg["batch_key"], p.hvg["exclude_patterns"])
if on_counts:
    chosen = adata.var[["highly_variable", "hvg_excluded"]]
    del adata
    adata = io.read_h5ad_parts(smk.input.h5ad)
    adata.var[chosen.columns] = chosen
use_rep = cluster.embed(adata, p.n_comps, p.integration["method"], p.integration["key"], p.integration["theta"],
                        p.integration["max_iter"], p.neighbors["n_neighbors"], p.neighbors["n_pcs"],
                        p.umap_min_dist, p.seed)
# Only what this step adds: the next steps join it back to the counts by cell name.
embedding = ad.AnnData(obs=adata.obs[["sample", "barcode"]].copy(), var=adata.var[["highly_variable", "hvg_excluded"]].copy(),
                       obsm={k: v for k, v in adata.obsm.items()}, obsp={k: v for k, v in adata.obsp.items()},
                       uns={"neighbors": adata.uns["neighbors"], "umap": adata.uns["umap"], "pca": adata.uns["pca"],
                            "graph_representation": use_rep})
embedding.write_h5ad(smk.output.h5ad)
