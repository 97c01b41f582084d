"""Snakemake adapter: Leiden clustering at every configured resolution; writes the clusters table."""

import anndata as ad
import pandas as pd

from pbmc_prepost import cluster, qc
from pbmc_prepost.runtime import start_job

smk = snakemake  # noqa: F821
log = start_job(smk.log[0], smk.threads, smk.params.seed)
embedding = ad.read_h5ad(smk.input.h5ad)
keys = cluster.cluster(embedding, smk.params.resolutions, smk.params.n_iterations, smk.params.seed)
table = embedding.obs[["sample", "barcode", *keys]].copy()
table["umap_1"] = embedding.obsm["X_umap"][:, 0].round(5)
table["umap_2"] = embedding.obsm["X_umap"][:, 1].round(5)
table.to_csv(smk.output.clusters, sep="\t", index=False, compression=qc.GZIP)
