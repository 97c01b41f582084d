"""Snakemake adapter: combine per-sample QC tables into the cohort tables and summary figure."""

from pbmc_prepost import qc
from pbmc_prepost.plots.qc import qc_summary_figure
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import write_tsv

smk = snakemake  # noqa: F821
study = smk.params.study
log = start_job(smk.log[0])
cells, summary = qc.combine_samples(smk.input.cells, smk.input.summaries, study)
write_tsv(cells, smk.output.cells)
write_tsv(summary, smk.output.summary)
qc_summary_figure(summary, qc.FAIL_REASONS, study.contrast.column, [smk.output.png, smk.output.pdf])
