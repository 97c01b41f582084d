"""Snakemake adapter: the one-page study summary figure of every contrast."""

from pbmc_prepost.plots.summary import study_summary_figure
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import read_tsv

smk = snakemake  # noqa: F821
settings = smk.params.settings
log = start_job(smk.log[0])
tables = {name: read_tsv(path, keep_default_na=False, na_values=[""]) for name, path in smk.input.items()}
for i, contrast in enumerate(settings.contrasts):
    own = {name: tables[name][tables[name]["contrast"] == contrast.name] for name in ("composition", "scores", "gsea")}
    study_summary_figure(
        tables["proportions"],
        own["composition"],
        tables["donor_scores"],
        own["scores"],
        own["gsea"],
        settings.headline,
        contrast,
        [smk.output.png[i], smk.output.pdf[i]],
    )
