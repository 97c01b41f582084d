"""Snakemake adapter: concatenate QC-passed samples, keep counts, shifted-log normalize."""

from pbmc_prepost import preprocess
from pbmc_prepost.h5ad import H5adFiles
from pbmc_prepost.runtime import start_job

smk = snakemake  # noqa: F821
settings = smk.params.settings
log = start_job(smk.log[0], smk.threads)
# Samples are read when visited, so at most one whole sample is in memory besides the merged matrix.
samples = H5adFiles(dict(zip(settings.study.samples, smk.input.h5ads, strict=True)))
merged = preprocess.merge_samples(samples, settings)
preprocess.normalize(merged, settings.target_sum)
merged.write_h5ad(smk.output.h5ad)
