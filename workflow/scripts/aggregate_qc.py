"""Snakemake adapter: combine per-sample QC tables into the cohort tables and summary figure."""

from pbmc_prepost import ambient, qc
from pbmc_prepost.plots.qc import ambient_figure, qc_summary_figure
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import FLOAT_FORMAT, write_tsv

smk = snakemake  # noqa: F821
study = smk.params.study
log = start_job(smk.log[0])
cells, summary = qc.combine_samples(smk.input.cells, smk.input.summaries, study)
write_tsv(cells, smk.output.cells)
write_tsv(summary, smk.output.summary)
soup = ambient.combine_ambient(smk.input.ambient, study)
write_tsv(soup, smk.output.ambient, FLOAT_FORMAT)
ambient_figure(soup, study.contrast.column, study.contrast.pair_by, [smk.output.ambient_png, smk.output.ambient_pdf])
qc_summary_figure(summary, qc.FAIL_REASONS, study.contrast.column, [smk.output.png, smk.output.pdf])
