"""Snakemake adapter: QC of one sample (metrics, MAD thresholds, Scrublet, filtered object, figure)."""

import pandas as pd

from pbmc_prepost import io, plots, qc
from pbmc_prepost.runtime import start_job

smk = snakemake  # noqa: F821 (injected by Snakemake)
log = start_job(smk.log[0], smk.threads, smk.params.settings["seed"])
sample = smk.wildcards.sample
settings = qc.QCSettings(**smk.params.settings)
log.info("sample %s: reading %s (%s); settings %s", sample, smk.params.path, smk.params.format, settings)
counts = io.read_counts(smk.params.path, smk.params.format, smk.params.counts_layer or None, source=f"sample '{sample}'")
result = qc.run_sample_qc(counts, sample, settings)

result.filtered.write_h5ad(smk.output.h5ad)
result.cells.to_csv(smk.output.cells, sep="\t", index=False, compression=qc.GZIP)
pd.DataFrame([result.summary]).to_csv(smk.output.summary, sep="\t", index=False)
plots.qc_sample_figure(result.obs, result.summary, result.summary["doublet_score_threshold"],
                       result.cells["qc_pass"].to_numpy(), f"QC of {sample}", [smk.output.png, smk.output.pdf])
