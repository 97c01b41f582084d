"""Snakemake adapter: one summary row per population tested (or skipped, with the reason)."""

from pbmc_prepost import de
from pbmc_prepost.annotation_checks import population_notes
from pbmc_prepost.plots.de import de_counts_figure
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import read_tsv, write_tsv

smk = snakemake  # noqa: F821
log = start_job(smk.log[0])
clusters = read_tsv(smk.input.clusters, dtype=str, keep_default_na=False)
summary = de.combine_summaries(smk.input.summaries, population_notes(clusters, smk.params.settings.level))
write_tsv(summary, smk.output.summary)
de_counts_figure(summary, smk.params.settings.alpha, [smk.output.png, smk.output.pdf])
log.info("DE summary:\n%s", summary.to_string(index=False))
