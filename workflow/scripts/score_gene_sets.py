"""Snakemake adapter: per-cell module scores averaged per donor x timepoint x population; paired test."""

import pandas as pd

from pbmc_prepost import enrichment, io
from pbmc_prepost.runtime import start_job
from pbmc_prepost.samplesheet import Contrast

smk = snakemake  # noqa: F821
p = smk.params
log = start_job(smk.log[0], smk.threads, p.seed)
contrast = Contrast(**p.contrast)
library = enrichment.read_gene_sets(smk.input.gmt, smk.input.set_metadata or None)
adata = io.read_h5ad_parts(smk.input.h5ad)  # log-normalized X only
labels = pd.read_csv(smk.input.cells, sep="\t", dtype={"barcode": str}, usecols=["sample", "barcode", p.level])
labels.index = labels["sample"] + ":" + labels["barcode"]
adata.obs[p.level] = labels.loc[adata.obs_names, p.level].to_numpy()
scores = enrichment.module_scores(adata, library, p.level, contrast, min_genes=p.min_genes, seed=p.seed)
test = enrichment.paired_score_test(scores, contrast, min_pairs=p.min_pairs)
scores.to_csv(smk.output.donor_scores, sep="\t", index=False, float_format="%.6g")
test.to_csv(smk.output.scores, sep="\t", index=False, float_format="%.6g")
headline = [pair for pair in p.headline if pair[0] in set(scores["group"]) and pair[1] in library.sets]
groups = [pair[0] for pair in headline]
sets = [pair[1] for pair in headline]
enrichment.donor_score_lines(scores, test, sets, groups, contrast, [smk.output.lines_png, smk.output.lines_pdf])
