"""Snakemake adapter: the UMAP of the kNN graph (display only), beside clustering; writes the layout
and its table."""

from pbmc_prepost import preprocess
from pbmc_prepost.runtime import cache_numba_compilation, start_job
from pbmc_prepost.tables import write_tsv

smk = snakemake  # noqa: F821
settings = smk.params.settings
log = start_job(smk.log[0], smk.threads, settings.seed)
log.info("numba disk cache turned on for %d pynndescent/umap functions", cache_numba_compilation())
layout = preprocess.layout_embedding(smk.input.h5ad, settings)
layout.write_h5ad(smk.output.h5ad)
write_tsv(preprocess.layout_table(layout), smk.output.table)
