"""Snakemake adapter: paired pseudobulk DE of one population (PyDESeq2), its volcano and paired plots."""

import anndata as ad

from pbmc_prepost import de
from pbmc_prepost.plots.de import population_figures
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import FLOAT_FORMAT, read_tsv, write_tsv

smk = snakemake  # noqa: F821
settings = smk.params.settings
log = start_job(smk.log[0], smk.threads, settings.seed)
files = read_tsv(smk.input.populations, dtype=str)
label = files.set_index("file").loc[smk.wildcards.population, "population"]
pb = ad.read_h5ad(smk.input.h5ad)
pb = pb[pb.obs[settings.level].astype(str).to_numpy() == label].copy()
table, summary = de.fit_population_table(pb, label, settings, batch_col="batch")
write_tsv(summary, smk.output.summary)
write_tsv(table, smk.output.table, FLOAT_FORMAT)
population_figures(pb, table, summary.iloc[0], label, settings, dict(smk.output.items()))
