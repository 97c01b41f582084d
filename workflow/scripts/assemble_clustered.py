"""Snakemake adapter: join counts, embedding and clusters into results/merged/clustered.h5ad."""

import anndata as ad
import pandas as pd

from pbmc_prepost.runtime import start_job

smk = snakemake  # noqa: F821
log = start_job(smk.log[0])
adata = ad.read_h5ad(smk.input.merged)
embedding = ad.read_h5ad(smk.input.embedding)
clusters = pd.read_csv(smk.input.clusters, sep="\t", dtype=str)
assert list(embedding.obs_names) == list(adata.obs_names), "embedding and counts disagree on cells"
for column in embedding.var.columns:
    adata.var[column] = embedding.var[column]
adata.obsm.update(embedding.obsm)
adata.obsp.update(embedding.obsp)
adata.uns.update(embedding.uns)
for column in clusters.columns:
    if column.startswith("leiden_"):
        levels = sorted(clusters[column].unique(), key=int)
        adata.obs[column] = pd.Categorical(clusters[column].to_numpy(), categories=levels)
adata.write_h5ad(smk.output.h5ad)
