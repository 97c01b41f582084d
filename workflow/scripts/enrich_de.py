"""Snakemake adapter: GSEA prerank and ORA of every population's paired DE, a donor-level set test
that confirms or rejects each GSEA call, and the interpretation guards written into every row."""

import anndata as ad

from pbmc_prepost import de, gsea
from pbmc_prepost.annotation_checks import population_notes
from pbmc_prepost.genesets import read_gene_sets
from pbmc_prepost.plots.enrichment import confirmed_calls_heatmap
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import FLOAT_FORMAT, read_tsv, write_tsv

smk = snakemake  # noqa: F821
settings = smk.params.settings
log = start_job(smk.log[0], smk.threads, settings.seed)
library = read_gene_sets(smk.input.gmt, smk.input.set_metadata or None)
summary = read_tsv(smk.input.summary, keep_default_na=False)
tables = de.read_population_tables(summary, smk.input.tables)
notes = population_notes(read_tsv(smk.input.clusters, dtype=str, keep_default_na=False), settings.level)
enriched, ora = gsea.enrich_contrasts(
    tables,
    summary,
    ad.read_h5ad(smk.input.pseudobulk),
    read_tsv(smk.input.composition),
    library,
    settings,
    threads=smk.threads,
    annotation_notes=notes,
)
write_tsv(enriched, smk.output.gsea, FLOAT_FORMAT)
write_tsv(ora, smk.output.ora, FLOAT_FORMAT)
for i, contrast in enumerate(settings.contrasts):
    confirmed_calls_heatmap(
        enriched[enriched["contrast"] == contrast.name].drop(columns="contrast"),
        library.meta,
        summary[summary["contrast"] == contrast.name],
        [smk.output.heatmap_png[i], smk.output.heatmap_pdf[i]],
        title=contrast.describe(),
    )
