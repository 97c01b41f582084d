"""Snakemake adapter: label the barcodes QC removed, and test each population's removal rate."""

import anndata as ad

from pbmc_prepost import marker_table, qc_bias
from pbmc_prepost.h5ad import read_h5ad_parts
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import FLOAT_FORMAT, read_tsv, write_tsv

smk = snakemake  # noqa: F821
settings = smk.params.settings
log = start_job(smk.log[0])
markers = marker_table.read_marker_table(smk.input.markers)
genes = markers.genes(states=False)
passing = read_h5ad_parts(smk.input.h5ad, x=False, layers=["counts"], genes=genes)
passing.X = passing.layers.pop("counts")
# One sample at a time, only the markers kept: memory stays that of the markers.
removed = ad.concat([ad.read_h5ad(path)[:, passing.var_names].copy() for path in smk.input.removed])
annotation = read_tsv(smk.input.cells, dtype={"barcode": str}, usecols=["sample", "barcode", "cell_type", "lineage"])
labels, table, test = qc_bias.qc_bias_tables(passing, removed, annotation, markers.lineage_of, settings)
write_tsv(labels, smk.output.removed_cells)
write_tsv(table, smk.output.table, FLOAT_FORMAT)
write_tsv(test, smk.output.test, FLOAT_FORMAT)
