"""Snakemake adapter: concatenate QC-passed samples, keep counts, shifted-log normalize."""

import pandas as pd

from pbmc_prepost import cluster, io
from pbmc_prepost.runtime import start_job

smk = snakemake  # noqa: F821
log = start_job(smk.log[0], smk.threads)
meta = pd.DataFrame(smk.params.sample_meta).set_index("sample")
# Samples are read when visited, so at most one whole sample is in memory besides the merged matrix.
samples = io.H5adFiles(dict(zip(smk.params.samples, smk.input.h5ads)))
merged = cluster.merge_samples(samples, meta, smk.params.meta_columns, smk.params.min_cells_per_gene)
cluster.normalize(merged, smk.params.target_sum)
merged.write_h5ad(smk.output.h5ad)
