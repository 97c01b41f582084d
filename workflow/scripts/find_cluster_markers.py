"""Snakemake adapter: Wilcoxon marker genes per cluster and the marker dot plot."""

from pbmc_prepost import cluster
from pbmc_prepost.h5ad import read_h5ad_parts
from pbmc_prepost.plots.clustering import marker_dotplot
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import FLOAT_FORMAT, write_tsv

smk = snakemake  # noqa: F821
settings = smk.params.settings
log = start_job(smk.log[0], smk.threads, settings.seed)
adata = read_h5ad_parts(smk.input.h5ad)  # log-normalized X; counts and graphs stay on disk
key = cluster.leiden_key(settings.resolution)
markers, untested = cluster.cluster_markers(adata, key, settings.max_cells_per_cluster, settings.n_genes, settings.seed)
markers.insert(0, "resolution", settings.resolution)
write_tsv(markers, smk.output.markers, FLOAT_FORMAT)
write_tsv(untested, smk.output.untested)
marker_dotplot(
    adata,
    key,
    settings.dotplot_genes,
    f"Marker genes by Leiden cluster (resolution {settings.resolution:g})",
    [smk.output.png, smk.output.pdf],
    row_label="cluster {}",
)
