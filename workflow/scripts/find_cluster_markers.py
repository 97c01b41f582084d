"""Snakemake adapter: Wilcoxon marker genes per cluster and the marker dot plot."""

from pbmc_prepost import cluster
from pbmc_prepost.h5ad import read_h5ad_parts
from pbmc_prepost.plots.clustering import marker_dotplot
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import FLOAT_FORMAT, write_tsv

smk = snakemake  # noqa: F821
settings = smk.params.settings
log = start_job(smk.log[0], smk.threads, settings.seed)
key = cluster.leiden_key(settings.resolution)
# The test sees a stratified subsample of cells: only those rows of the log-normalized X are read
# (cluster_markers draws the same subsample again, which then keeps every cell it is given).
cells = read_h5ad_parts(smk.input.h5ad, x=False).obs
tested = cluster.stratified_subsample(cells[key], settings.max_cells_per_cluster, settings.seed)
adata = read_h5ad_parts(smk.input.h5ad, rows=tested)
markers, untested = cluster.cluster_markers(adata, key, settings.max_cells_per_cluster, settings.n_genes, settings.seed)
markers.insert(0, "resolution", settings.resolution)
write_tsv(markers, smk.output.markers, FLOAT_FORMAT)
write_tsv(untested, smk.output.untested)
dotplot_genes = {g for genes in settings.dotplot_genes.values() for g in genes}
marker_dotplot(
    read_h5ad_parts(smk.input.h5ad, genes=dotplot_genes),  # every cell, the dot plot's genes
    key,
    settings.dotplot_genes,
    f"Marker genes by Leiden cluster (resolution {settings.resolution:g})",
    [smk.output.png, smk.output.pdf],
    row_label="cluster {}",
)
