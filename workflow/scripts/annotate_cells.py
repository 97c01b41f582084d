"""Snakemake adapter: marker-based cell types, lineages and cycling flags; UMAP and dot plot."""

import pandas as pd

from pbmc_prepost import annotate, cluster, io, plots, qc
from pbmc_prepost.runtime import start_job

smk = snakemake  # noqa: F821
p = smk.params
log = start_job(smk.log[0])
adata = io.read_h5ad_parts(smk.input.h5ad, obsm=["X_umap"])  # counts and graphs stay on disk
markers = annotate.read_marker_table(smk.input.markers)
overrides = annotate.read_overrides(p.overrides[0] if p.overrides else None, set(markers.identity.index))
clusters = adata.obs[cluster.leiden_key(p.resolution)]
cells, cluster_table = annotate.annotate(adata, clusters, markers, p.cycling_threshold, overrides)

table = pd.concat([adata.obs[["sample", "barcode"]], cells], axis=1)
table.to_csv(smk.output.cells, sep="\t", index=False, compression=qc.GZIP)
cluster_table.insert(1, "resolution", p.resolution)
cluster_table.to_csv(smk.output.clusters, sep="\t", index=False)

coords = adata.obsm["X_umap"]
plots.umap_figure(coords, cells["cell_type"], f"UMAP by cell type ({adata.n_obs} cells)",
                  [smk.output.umap_png, smk.output.umap_pdf], label_on_data=True)
adata.obs["cell_type"] = cells["cell_type"]
split = adata.obs["cell_type"].astype(str) + " | " + adata.obs[p.contrast_column].astype(str)
adata.obs["cell_type_by_condition"] = pd.Categorical(split)
groups = {name: [g for g in genes if g in adata.var_names] for name, genes in p.dotplot_genes.items()}
genes = list(dict.fromkeys(g for members in groups.values() for g in members))
mean, fraction = cluster.group_expression(adata, "cell_type_by_condition", genes)
order = sorted(mean.index, key=lambda label: (label.split(" | ")[0], label.split(" | ")[1] != p.reference))
plots.dotplot_figure(mean.loc[order], fraction.loc[order], groups,
                     f"Marker genes by cell type, split by {p.contrast_column}",
                     [smk.output.dotplot_png, smk.output.dotplot_pdf])
