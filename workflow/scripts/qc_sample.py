"""Snakemake adapter: QC of one sample (metrics, MAD thresholds, Scrublet, filtered object, figure)."""

import pandas as pd

from pbmc_prepost import ambient, io, qc
from pbmc_prepost.formats import AMBIENT_CORRECTED
from pbmc_prepost.plots.qc import qc_sample_figure
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import FLOAT_FORMAT, write_tsv

smk = snakemake  # noqa: F821
settings = smk.params.settings
log = start_job(smk.log[0], smk.threads, settings.seed)
sample = smk.wildcards.sample
log.info("sample %s: reading %s (%s); settings %s", sample, smk.params.path, smk.params.format, settings)
counts = io.read_counts(
    smk.params.path, smk.params.format, smk.params.counts_layer or None, source=f"sample '{sample}'"
)
result = qc.run_sample_qc(counts, sample, settings)

result.filtered.write_h5ad(smk.output.h5ad)
result.removed.write_h5ad(smk.output.removed)
write_tsv(result.cells, smk.output.cells)
write_tsv(pd.DataFrame([result.summary]), smk.output.summary)
# The soup, from the raw matrix's empty droplets when the sheet gives one (results/qc/ambient.tsv).
# Counts CellBender already corrected are not corrected twice (their row says so).
corrected_by = AMBIENT_CORRECTED.get(smk.params.format)
use_raw = smk.params.raw_path and smk.params.ambient.method in ("auto", "raw_droplets") and not corrected_by
raw = io.read_counts(smk.params.raw_path, source=f"sample '{sample}' raw_path") if use_raw else None
estimate, soup = ambient.sample_ambient(
    result.filtered, raw, counts.obs_names, sample, smk.params.ambient, corrected_by=corrected_by
)
write_tsv(estimate, smk.output.ambient, FLOAT_FORMAT)
write_tsv(soup, smk.output.soup, FLOAT_FORMAT)
qc_sample_figure(
    result.obs,
    result.summary,
    result.summary["doublet_score_threshold"],
    result.cells["qc_pass"].to_numpy(),
    f"QC of {sample}",
    [smk.output.png, smk.output.pdf],
)
