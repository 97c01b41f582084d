"""Snakemake adapter: concatenate QC-passed samples on disk (raw counts and size factors)."""

from pbmc_prepost import preprocess
from pbmc_prepost.h5ad import H5adFiles
from pbmc_prepost.runtime import start_job

smk = snakemake  # noqa: F821
settings = smk.params.settings
log = start_job(smk.log[0], smk.threads)
# Samples are read when visited and written as they come: one sample in memory at a time.
samples = H5adFiles(dict(zip(settings.study.samples, smk.input.h5ads, strict=True)))
preprocess.write_merged(samples, settings, smk.output.h5ad)
