"""Snakemake adapter: sum raw counts per sample x population (the pseudobulks every DE job fits)."""

import pandas as pd

from pbmc_prepost import io, pseudobulk_de
from pbmc_prepost.runtime import start_job
from pbmc_prepost.samplesheet import Contrast

smk = snakemake  # noqa: F821
p = smk.params
log = start_job(smk.log[0])
contrast = Contrast(**p.contrast)
settings = pseudobulk_de.DESettings(**p.settings)
adata = io.read_h5ad_parts(smk.input.h5ad, x=False, layers=["counts"])  # raw counts only
labels = pd.read_csv(smk.input.cells, sep="\t", dtype={"barcode": str}, usecols=["sample", "barcode", "cell_type", "lineage"])
labels.index = labels["sample"] + ":" + labels["barcode"]
adata.obs[["cell_type", "lineage"]] = labels.loc[adata.obs_names, ["cell_type", "lineage"]].to_numpy()
pb = pseudobulk_de.pseudobulk_for_contrast(adata, contrast, settings, batch_col="batch")
pb.write_h5ad(smk.output.h5ad)
names = pseudobulk_de.safe_names(sorted(adata.obs[settings.level].astype(str).unique()))
pd.DataFrame({"group": list(names), "file": list(names.values())}).to_csv(smk.output.groups, sep="\t", index=False)
log.info("%d pseudobulks of %d groups at level %s", pb.n_obs, len(names), settings.level)
