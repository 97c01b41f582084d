"""Snakemake adapter: HVGs, PCA, optional Harmony and the kNN graph; writes only the embedding."""

from pbmc_prepost import preprocess
from pbmc_prepost.runtime import cache_numba_compilation, start_job
from pbmc_prepost.tables import write_tsv

smk = snakemake  # noqa: F821
settings = smk.params.settings
log = start_job(smk.log[0], smk.threads, settings.seed)
log.info("numba disk cache turned on for %d pynndescent/umap functions", cache_numba_compilation())
embedding, hvg_batches = preprocess.embed_merged(smk.input.h5ad, settings)
embedding.write_h5ad(smk.output.h5ad)
write_tsv(hvg_batches, smk.output.hvg_batches)
