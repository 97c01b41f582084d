"""Snakemake adapter: the resolved config, the sample sheet, the gene sets and software versions."""

import shutil

import pandas as pd

from pbmc_prepost import provenance
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import read_tsv, write_tsv

smk = snakemake  # noqa: F821
log = start_job(smk.log[0])
provenance.write_config(smk.params.config, smk.output.config)
shutil.copyfile(smk.input.sheet, smk.output.sheet)
provenance.concatenate_gene_sets(smk.input.gmt, smk.output.gene_sets)
write_tsv(provenance.software_versions(), smk.output.versions)
recorded = {
    name: read_tsv(smk.input[name], dtype={"cluster": str}, keep_default_na=False, na_values=[""])
    for name in ("qc_summary", "hvg_batches", "markers_untested")
}
write_tsv(provenance.fallbacks(**recorded, min_cells_per_sample=smk.params.min_cells_per_sample), smk.output.fallbacks)
write_tsv(pd.DataFrame(smk.params.contrasts), smk.output.contrasts)
