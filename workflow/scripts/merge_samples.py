"""Snakemake adapter: concatenate QC-passed samples, keep counts, shifted-log normalize."""

import anndata as ad
import pandas as pd

from pbmc_prepost import cluster
from pbmc_prepost.runtime import start_job

smk = snakemake  # noqa: F821
log = start_job(smk.log[0], smk.threads)
meta = pd.DataFrame(smk.params.sample_meta).set_index("sample")
objects = {sample: ad.read_h5ad(path) for sample, path in zip(smk.params.samples, smk.input.h5ads)}
merged = cluster.merge_samples(objects, meta, smk.params.meta_columns, smk.params.min_cells_per_gene)
del objects
cluster.normalize(merged, smk.params.target_sum)
merged.write_h5ad(smk.output.h5ad)
