"""Snakemake adapter: combine per-sample QC tables into the cohort tables and summary figure."""

import pandas as pd

from pbmc_prepost import plots, qc
from pbmc_prepost.runtime import start_job

smk = snakemake  # noqa: F821
log = start_job(smk.log[0])
meta = pd.DataFrame(smk.params.sample_meta).set_index("sample")
cells = pd.concat([pd.read_csv(p, sep="\t", dtype={"barcode": str, "fail_reason": str}, keep_default_na=False,
                               na_values={"doublet_score": [""]})
                   for p in smk.input.cells], ignore_index=True)
cells["fail_reason"] = cells["fail_reason"].fillna("")
cells[qc.CELL_TABLE_COLUMNS].to_csv(smk.output.cells, sep="\t", index=False, compression=qc.GZIP)

summary = pd.concat([pd.read_csv(p, sep="\t") for p in smk.input.summaries], ignore_index=True)
for column in reversed(smk.params.meta_columns):
    summary.insert(1, column, summary["sample"].map(meta[column]))
summary.to_csv(smk.output.summary, sep="\t", index=False)
contrast_column = smk.params.contrast_column
by_condition = summary.groupby(contrast_column)[["cells_in", "cells_out"]].sum()
by_condition["pct_removed"] = 100 * (1 - by_condition["cells_out"] / by_condition["cells_in"])
log.info("QC removal by %s:\n%s", contrast_column, by_condition.round(2).to_string())
plots.qc_summary_figure(summary, qc.FAIL_REASONS, contrast_column, [smk.output.png, smk.output.pdf])
