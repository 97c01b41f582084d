"""Snakemake adapter: UMAP coloured by sample, by condition and by cluster."""

import anndata as ad

from pbmc_prepost import cluster, plots
from pbmc_prepost.runtime import start_job

smk = snakemake  # noqa: F821
log = start_job(smk.log[0])
adata = ad.read_h5ad(smk.input.h5ad, backed="r")
coords = adata.obsm["X_umap"][:]
obs = adata.obs
n = adata.n_obs
plots.umap_figure(coords, obs["sample"], f"UMAP by sample ({n} cells)", [smk.output.sample_png, smk.output.sample_pdf])
plots.umap_figure(coords, obs[smk.params.contrast_column], f"UMAP by {smk.params.contrast_column}",
                  [smk.output.condition_png, smk.output.condition_pdf])
key = cluster.leiden_key(smk.params.resolution)
plots.umap_figure(coords, obs[key], f"UMAP by Leiden cluster (resolution {smk.params.resolution:g})",
                  [smk.output.cluster_png, smk.output.cluster_pdf], label_on_data=True)
