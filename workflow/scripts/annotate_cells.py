"""Snakemake adapter: marker-based cell types, lineages and cycling flags; UMAP and dot plot."""

from pbmc_prepost import annotate
from pbmc_prepost.h5ad import read_h5ad_parts
from pbmc_prepost.plots.clustering import cell_type_dotplot, umap_figure
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import write_tsv

smk = snakemake  # noqa: F821
settings = smk.params.settings
log = start_job(smk.log[0])
adata = read_h5ad_parts(smk.input.h5ad, obsm=["X_umap"])  # counts and graphs stay on disk
markers = annotate.read_marker_table(smk.input.markers)
overrides = annotate.read_overrides(
    smk.input.overrides[0] if smk.input.overrides else None, set(markers.identity.index)
)
cells, clusters = annotate.annotate_clusters(adata, markers, settings, overrides)
write_tsv(cells, smk.output.cells)
write_tsv(clusters, smk.output.clusters)
umap_figure(
    adata.obsm["X_umap"],
    cells["cell_type"],
    f"UMAP by cell type ({adata.n_obs} cells)",
    [smk.output.umap_png, smk.output.umap_pdf],
    label_on_data=True,
)
cell_type_dotplot(
    adata, cells["cell_type"].set_axis(adata.obs_names), settings, [smk.output.dotplot_png, smk.output.dotplot_pdf]
)
