"""Snakemake adapter: cluster-level cell types, lineages and cycling flags, their checks; UMAP and dot plot."""

from pbmc_prepost import annotate, annotation_checks, marker_table
from pbmc_prepost.h5ad import read_h5ad_parts
from pbmc_prepost.plots.clustering import cell_type_dotplot, umap_figure
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import write_tsv

smk = snakemake  # noqa: F821
settings = smk.params.settings
log = start_job(smk.log[0])
markers = marker_table.read_marker_table(smk.input.markers)
overrides = marker_table.read_overrides(
    smk.input.overrides[0] if smk.input.overrides else None, set(markers.identity.index)
)
checks = annotation_checks.read_checks(smk.input.checks)
# Log-normalized X of the few hundred genes the markers, checks and dot plot read; UMAP and the
# kNN graph. The counts and every other gene stay on disk.
genes = {*markers.genes(), *annotation_checks.check_genes(checks), *sum(settings.dotplot_genes.values(), ())}
adata = read_h5ad_parts(smk.input.h5ad, obsm=["X_umap"], obsp=["connectivities"], genes=genes)
cells, clusters = annotate.annotate_clusters(adata, markers, settings, overrides)
consistency, clusters = annotation_checks.consistency(adata, cells, clusters, checks)
write_tsv(cells, smk.output.cells)
write_tsv(clusters, smk.output.clusters)
write_tsv(consistency, smk.output.consistency)
umap_figure(
    adata.obsm["X_umap"],
    cells["cell_type"],
    f"UMAP by cell type ({adata.n_obs} cells)",
    [smk.output.umap_png, smk.output.umap_pdf],
    label_on_data=True,
)
cell_type_dotplot(adata, cells["cell_type"], settings, [smk.output.dotplot_png, smk.output.dotplot_pdf])
