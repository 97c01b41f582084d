"""Snakemake adapter: join counts, embedding, UMAP and clusters into results/merged/clustered.h5ad."""

import anndata as ad

from pbmc_prepost import cluster
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import read_tsv

smk = snakemake  # noqa: F821
log = start_job(smk.log[0])
embedding = ad.read_h5ad(smk.input.embedding)
cluster.write_clustered(
    smk.input.merged,
    embedding,
    read_tsv(smk.input.clusters, dtype=str),
    smk.output.h5ad,
    layout=ad.read_h5ad(smk.input.layout),
)
