"""Snakemake adapter: one summary row per population tested (or skipped, with the reason)."""

import pandas as pd

from pbmc_prepost import plots, pseudobulk_de
from pbmc_prepost.runtime import start_job

smk = snakemake  # noqa: F821
log = start_job(smk.log[0])
summary = pd.concat([pd.read_csv(path, sep="\t", keep_default_na=False) for path in smk.input.summaries],
                    ignore_index=True).sort_values("cell_type")
columns = ["level", *[c for c in pseudobulk_de.SUMMARY_COLUMNS if c in summary.columns]]
summary[columns].to_csv(smk.output.summary, sep="\t", index=False)
plots.de_counts_figure(summary, smk.params.alpha, [smk.output.png, smk.output.pdf])
log.info("DE summary:\n%s", summary[columns].to_string(index=False))
