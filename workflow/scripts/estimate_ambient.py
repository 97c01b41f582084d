"""Snakemake adapter: every sample's ambient RNA (results/qc/ambient.tsv), the samples without a raw
matrix estimated from their annotated cells, and the soups the pseudobulks are corrected with."""

import numpy as np

from pbmc_prepost import ambient, ambient_cells
from pbmc_prepost.design import cell_key
from pbmc_prepost.h5ad import read_h5ad_parts
from pbmc_prepost.plots.qc import ambient_figure
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import FLOAT_FORMAT, attach_cell_labels, read_tsv, write_tsv

smk = snakemake  # noqa: F821
settings, study = smk.params.settings, smk.params.study
log = start_job(smk.log[0])
table = ambient.combine_ambient(smk.input.ambient, study)
soups = ambient.read_soups(smk.input.soups)
families = ambient_cells.read_families(smk.input.families)
if (table["method"] == "cells").any():
    # Only the families' genes are read from the counts (block by block), and each cell's UMIs over
    # all genes from QC: the space the pooled profile is a share of.
    adata = read_h5ad_parts(smk.input.h5ad, x=False, layers=["counts"], genes=ambient_cells.family_genes(families))
    attach_cell_labels(adata, smk.input.labels, ["lineage"])
    qc_cells = read_tsv(smk.input.qc_cells, dtype={"barcode": str}, usecols=["sample", "barcode", "total_counts"])
    umis = qc_cells.set_index(cell_key(qc_cells["sample"], qc_cells["barcode"]))["total_counts"]
    cells = adata.obs[["sample", "lineage"]].assign(total_counts=umis.reindex(adata.obs_names).to_numpy(np.float64))
    table, by_population, soups = ambient_cells.complete_ambient(
        table, soups, adata.layers["counts"], adata.var_names.to_numpy(), cells, families, settings.marker_pattern
    )
else:
    by_population = ambient_cells.empty_population_table()
write_tsv(table, smk.output.ambient, FLOAT_FORMAT)
write_tsv(by_population, smk.output.by_population, FLOAT_FORMAT)
write_tsv(ambient.soups_table(soups), smk.output.soups, FLOAT_FORMAT)
ambient_figure(table, study.contrast.column, study.contrast.pair_by, [smk.output.png, smk.output.pdf])
