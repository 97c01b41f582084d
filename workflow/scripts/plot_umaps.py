"""Snakemake adapter: UMAP coloured by sample, by condition, by cluster and by cell type."""

import anndata as ad

from pbmc_prepost.plots.clustering import overview_umaps, umap_figure
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import attach_cell_labels

smk = snakemake  # noqa: F821
log = start_job(smk.log[0])
adata = ad.read_h5ad(smk.input.h5ad, backed="r")
coords, cells = adata.obsm["X_umap"][:], ad.AnnData(obs=adata.obs.copy())
overview_umaps(coords, cells.obs, smk.params.settings, dict(smk.output.items()))
attach_cell_labels(cells, smk.input.cells, ["cell_type"])
umap_figure(
    coords,
    cells.obs["cell_type"],
    f"UMAP by cell type ({adata.n_obs} cells)",
    [smk.output.cell_type_png, smk.output.cell_type_pdf],
    label_on_data=True,
)
