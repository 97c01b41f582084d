"""Snakemake adapter: UMAP coloured by sample, by condition and by cluster."""

import anndata as ad

from pbmc_prepost.plots.clustering import overview_umaps
from pbmc_prepost.runtime import start_job

smk = snakemake  # noqa: F821
log = start_job(smk.log[0])
adata = ad.read_h5ad(smk.input.h5ad, backed="r")
overview_umaps(adata.obsm["X_umap"][:], adata.obs, smk.params.settings, dict(smk.output.items()))
