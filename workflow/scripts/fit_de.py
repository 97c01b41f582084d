"""Snakemake adapter: pseudobulk DE of one population (PyDESeq2) for every contrast, with its volcano
and paired plots; one job per population, so the pseudobulks are read once."""

import anndata as ad

from pbmc_prepost import ambient, de
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
for i, contrast in enumerate(settings.contrasts):
    contrast_settings = settings._replace(contrast=contrast)
    pb_contrast = de.contrast_pseudobulks(pb, contrast)
    table, summary = de.fit_population_table(pb_contrast, label, contrast_settings, batch_col="batch")
    table = ambient.ambient_columns(table, pb_contrast, contrast)
    write_tsv(summary, smk.output.summaries[i])
    write_tsv(table, smk.output.tables[i], FLOAT_FORMAT)
    figures = {name: smk.output[name][i] for name in ("volcano_png", "volcano_pdf", "paired_png", "paired_pdf")}
    population_figures(pb_contrast, table, summary.iloc[0], label, contrast_settings, figures)
    log.info(
        "%s, %s: %s %s", contrast.name, label, summary.at[0, "status"], summary.at[0, "reason"] or summary.at[0, "note"]
    )
