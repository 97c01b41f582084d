"""Snakemake adapter: Leiden clustering at every configured resolution; writes the clusters table."""

import anndata as ad

from pbmc_prepost import cluster
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import write_tsv

smk = snakemake  # noqa: F821
settings = smk.params.settings
log = start_job(smk.log[0], smk.threads, settings.seed)
embedding = ad.read_h5ad(smk.input.h5ad)
write_tsv(cluster.cluster_table(embedding, settings), smk.output.clusters)
