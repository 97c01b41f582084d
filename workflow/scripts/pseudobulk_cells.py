"""Snakemake adapter: sum raw counts per sample x population (the pseudobulks every DE job fits)."""

from pbmc_prepost import ambient, pseudobulk
from pbmc_prepost.h5ad import iter_row_blocks, read_h5ad_parts
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import attach_cell_labels, read_tsv, write_tsv

smk = snakemake  # noqa: F821
settings = smk.params.settings
log = start_job(smk.log[0])
adata = read_h5ad_parts(smk.input.h5ad, x=False)  # cells only: the counts are summed block by block
attach_cell_labels(adata, smk.input.cells, ["cell_type", "lineage"])
blocks = iter_row_blocks(smk.input.h5ad, "layers/counts")
pb = pseudobulk.pseudobulk_for_contrast(adata, settings, batch_col="batch", blocks=blocks)
# The soup's expected counts in every pseudobulk, for the DE tables' ambient columns.
contamination = read_tsv(smk.input.ambient).set_index("sample")["contamination"]
soups = ambient.read_soups_table(smk.input.soups)
if soups:
    pb.layers["ambient"] = ambient.expected_soup_counts(pb, contamination, soups)
    if smk.params.ambient.correct:
        ambient.subtract_soup(pb)
pb.write_h5ad(smk.output.h5ad)
write_tsv(pseudobulk.population_files(adata.obs[settings.level]), smk.output.populations)
log.info("%d pseudobulks of %d populations at level %s", pb.n_obs, pb.obs[settings.level].nunique(), settings.level)
