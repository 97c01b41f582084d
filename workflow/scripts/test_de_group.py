"""Snakemake adapter: paired pseudobulk DE of one population (PyDESeq2), its volcano and paired plots."""

import anndata as ad
import pandas as pd

from pbmc_prepost import plots, pseudobulk_de
from pbmc_prepost.runtime import start_job
from pbmc_prepost.samplesheet import Contrast

smk = snakemake  # noqa: F821
p = smk.params
log = start_job(smk.log[0], smk.threads, p.settings["seed"])
contrast = Contrast(**p.contrast)
settings = pseudobulk_de.DESettings(**p.settings)
groups = pd.read_csv(smk.input.groups, sep="\t", dtype=str)
label = groups.set_index("file").loc[smk.wildcards.group, "group"]
pb = ad.read_h5ad(smk.input.h5ad)
pb_group = pb[pb.obs[settings.level].astype(str).to_numpy() == label].copy()
table, summary = pseudobulk_de.de_one_group(pb_group, contrast, settings, batch_col="batch")
summary["cell_type"] = label
summary["level"] = settings.level
pd.DataFrame([summary]).to_csv(smk.output.summary, sep="\t", index=False)
if table is None:
    table = pd.DataFrame(columns=pseudobulk_de.RESULT_COLUMNS)
table.to_csv(smk.output.table, sep="\t", index=False, float_format="%.6g")

volcano = [smk.output.volcano_png, smk.output.volcano_pdf]
paired = [smk.output.paired_png, smk.output.paired_pdf]
if summary["status"] != "tested":
    reason = f"{label}: not tested ({summary['reason']})"
    plots.message_figure(f"{label}: {contrast.treated} vs {contrast.reference}", reason, volcano)
    plots.message_figure(f"{label}: headline genes", reason, paired)
else:
    title = f"{label}: {contrast.treated} vs {contrast.reference} ({summary['note']})"
    pseudobulk_de.volcano_figure(table, title, p.n_label, volcano, alpha=settings.alpha)
    norm = pseudobulk_de.normalized_pseudobulk(pb_group, p.headline_genes)
    pseudobulk_de.paired_genes_figure(norm, p.headline_genes, contrast,
                                      f"{label}: headline genes per donor (log2 CPM of pseudobulks)", paired)
