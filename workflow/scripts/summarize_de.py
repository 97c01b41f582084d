"""Snakemake adapter: one summary row per contrast and population tested (or skipped, with the reason)."""

from pbmc_prepost import de
from pbmc_prepost.annotation_checks import population_notes
from pbmc_prepost.plots.de import de_counts_figure
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import read_tsv, write_tsv

smk = snakemake  # noqa: F821
settings = smk.params.settings
log = start_job(smk.log[0])
clusters = read_tsv(smk.input.clusters, dtype=str, keep_default_na=False)
names = [c.name for c in settings.contrasts]
summary = de.combine_summaries(smk.input.summaries, population_notes(clusters, settings.level), names)
write_tsv(summary, smk.output.summary)
for i, name in enumerate(names):
    de_counts_figure(summary[summary["contrast"] == name], settings.alpha, [smk.output.png[i], smk.output.pdf[i]])
log.info("DE summary:\n%s", summary.to_string(index=False))
