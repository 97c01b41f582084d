"""Snakemake adapter: per-cell module scores averaged per donor x timepoint x population; paired test."""

from pbmc_prepost import module_scores
from pbmc_prepost.annotation_checks import population_notes
from pbmc_prepost.genesets import read_gene_sets
from pbmc_prepost.h5ad import column_means, iter_row_blocks, read_h5ad_parts
from pbmc_prepost.plots.enrichment import headline_score_lines
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import FLOAT_FORMAT, attach_cell_labels, read_tsv, write_tsv

smk = snakemake  # noqa: F821
settings = smk.params.settings
log = start_job(smk.log[0], smk.threads, settings.seed)
library = read_gene_sets(smk.input.gmt, smk.input.set_metadata or None)
# Only the genes scoring reads (members and their control genes), drawn from every gene's mean.
means = column_means(smk.input.h5ad, "X")
genes = module_scores.genes_to_score(library, means, settings.min_genes, settings.seed)
# Their log-normalized X is read block by block of cells: a cell's scores need its own row only.
adata = read_h5ad_parts(smk.input.h5ad, x=False, genes=genes)
attach_cell_labels(adata, smk.input.cells, [settings.level])
notes = population_notes(read_tsv(smk.input.clusters, dtype=str, keep_default_na=False), settings.level)
blocks = iter_row_blocks(smk.input.h5ad, "X", genes=genes)
scores, test = module_scores.score_populations(adata, library, settings, notes, means=means, blocks=blocks)
write_tsv(scores, smk.output.donor_scores, FLOAT_FORMAT)
write_tsv(test, smk.output.scores, FLOAT_FORMAT)
for i, contrast in enumerate(settings.contrasts):
    own = test[test["contrast"] == contrast.name].drop(columns="contrast")
    paths = [smk.output.lines_png[i], smk.output.lines_pdf[i]]
    headline_score_lines(scores, own, library, settings._replace(contrast=contrast), paths)
