"""Snakemake adapter: Wilcoxon marker genes per cluster and the marker dot plot."""

import numpy as np
import pandas as pd

from pbmc_prepost import cluster, io, plots, qc
from pbmc_prepost.runtime import start_job

smk = snakemake  # noqa: F821
p = smk.params
log = start_job(smk.log[0], smk.threads, p.seed)
adata = io.read_h5ad_parts(smk.input.h5ad)  # log-normalized X; counts and graphs stay on disk
key = cluster.leiden_key(p.resolution)
markers = cluster.cluster_markers(adata, key, p.max_cells_per_cluster, p.n_genes, p.seed)
markers.insert(0, "resolution", p.resolution)
markers.to_csv(smk.output.markers, sep="\t", index=False, float_format="%.6g")

groups = {name: [g for g in genes if g in adata.var_names] for name, genes in p.dotplot_genes.items()}
missing = sorted({g for genes in p.dotplot_genes.values() for g in genes} - set(adata.var_names))
if missing:
    log.warning("dot-plot genes not in the data: %s", ", ".join(missing))
genes = list(dict.fromkeys(g for members in groups.values() for g in members))
mean, fraction = cluster.group_expression(adata, key, genes)
mean.index = [f"cluster {c}" for c in mean.index]
fraction.index = mean.index
plots.dotplot_figure(mean, fraction, groups, f"Marker genes by Leiden cluster (resolution {p.resolution:g})",
                     [smk.output.png, smk.output.pdf])
