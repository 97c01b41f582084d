"""Snakemake adapter: HVGs, PCA, optional Harmony, kNN graph and UMAP; writes only the embedding."""

import anndata as ad

from pbmc_prepost import cluster
from pbmc_prepost.runtime import start_job

smk = snakemake  # noqa: F821
p = smk.params
log = start_job(smk.log[0], smk.threads, p.seed)
adata = ad.read_h5ad(smk.input.h5ad)
cluster.select_hvgs(adata, p.hvg["n_top_genes"], p.hvg["flavor"], p.hvg["batch_key"], p.hvg["exclude_patterns"])
use_rep = cluster.embed(adata, p.n_comps, p.integration["method"], p.integration["key"], p.integration["theta"],
                        p.integration["max_iter"], p.neighbors["n_neighbors"], p.neighbors["n_pcs"],
                        p.umap_min_dist, p.seed)
# Only what this step adds: the next steps join it back to the counts by cell name.
embedding = ad.AnnData(obs=adata.obs[["sample", "barcode"]].copy(), var=adata.var[["highly_variable", "hvg_excluded"]].copy(),
                       obsm={k: v for k, v in adata.obsm.items()}, obsp={k: v for k, v in adata.obsp.items()},
                       uns={"neighbors": adata.uns["neighbors"], "umap": adata.uns["umap"], "pca": adata.uns["pca"],
                            "graph_representation": use_rep})
embedding.write_h5ad(smk.output.h5ad)
