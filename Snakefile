# Paired pre/post-treatment PBMC single-cell RNA-seq workflow.
# Run: snakemake --cores N   (see README.md; config in config/config.yaml)

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/qc.smk"
include: "workflow/rules/cluster.smk"
include: "workflow/rules/annotate.smk"
include: "workflow/rules/composition.smk"
include: "workflow/rules/de.smk"
include: "workflow/rules/enrichment.smk"
include: "workflow/rules/provenance.smk"


rule all:
    default_target: True
    input:
        "results/qc/cells.tsv.gz",
        "results/qc/summary.tsv",
        "results/figures/qc/summary.png",
        "results/clustering/clusters.tsv.gz",
        "results/clustering/umap.tsv.gz",
        "results/clustering/markers.tsv",
        "results/merged/clustered.h5ad",
        "results/figures/clustering/umap_sample.png",
        "results/figures/clustering/marker_dotplot.png",
        "results/annotation/cells.tsv.gz",
        "results/composition/test.tsv",
        "results/de/summary.tsv",
        "results/enrichment/gsea.tsv",
        "results/enrichment/scores.tsv",
        "results/provenance/software_versions.tsv",
        expand("results/figures/summary/{contrast}/study_summary.png", contrast=CONTRASTS),
        "results/provenance/contrasts.tsv",
