"""Snakemake adapter: cluster-level cell types, lineages and cycling flags, their checks; dot plot.

It reads the merged counts, the kNN graph and the clusters, not ``clustered.h5ad``: the DE waits
on the annotation, and the UMAP and the clustered file are made beside it."""

from pbmc_prepost import annotate, annotation_checks, marker_table
from pbmc_prepost.cluster import read_annotation_input
from pbmc_prepost.plots.clustering import cell_type_dotplot
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
# Log-normalized values of the few hundred genes the markers, checks and dot plot read, from their
# counts; the kNN graph. Every other gene stays on disk.
genes = {*markers.genes(), *annotation_checks.check_genes(checks), *sum(settings.dotplot_genes.values(), ())}
adata = read_annotation_input(smk.input.merged, smk.input.embedding, smk.input.clusters, genes)
cells, clusters = annotate.annotate_clusters(adata, markers, settings, overrides)
consistency, clusters = annotation_checks.consistency(adata, cells, clusters, checks)
write_tsv(cells, smk.output.cells)
write_tsv(clusters, smk.output.clusters)
write_tsv(consistency, smk.output.consistency)
cell_type_dotplot(adata, cells["cell_type"], settings, [smk.output.dotplot_png, smk.output.dotplot_pdf])
