"""Snakemake adapter: the one-page study summary figure."""

from pbmc_prepost.plots.summary import study_summary_figure
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import read_tsv

smk = snakemake  # noqa: F821
settings = smk.params.settings
log = start_job(smk.log[0])
tables = {name: read_tsv(path, keep_default_na=False, na_values=[""]) for name, path in smk.input.items()}
study_summary_figure(
    tables["proportions"],
    tables["composition"],
    tables["donor_scores"],
    tables["scores"],
    tables["gsea"],
    settings.headline,
    settings.contrast,
    [smk.output.png, smk.output.pdf],
)
