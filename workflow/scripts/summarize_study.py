"""Snakemake adapter: the one-page study summary figure."""

import pandas as pd

from pbmc_prepost import summary
from pbmc_prepost.runtime import start_job
from pbmc_prepost.samplesheet import Contrast

smk = snakemake  # noqa: F821
log = start_job(smk.log[0])
read = lambda path: pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""])  # noqa: E731
summary.study_summary_figure(read(smk.input.proportions), read(smk.input.composition), read(smk.input.donor_scores),
                             read(smk.input.scores), read(smk.input.gsea), smk.params.panels,
                             Contrast(**smk.params.contrast), [smk.output.png, smk.output.pdf])
