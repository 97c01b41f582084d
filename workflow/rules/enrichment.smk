# Gene-set enrichment of every contrast's DE (GSEA prerank, ORA up/down) and donor-level module scores.


rule enrich_de:
    input:
        tables=de_tables,
        summary="results/de/summary.tsv",
        pseudobulk="results/de/pseudobulk/pseudobulk.h5ad",
        composition="results/composition/test.tsv",
        clusters="results/annotation/clusters.tsv",
        gmt=config["enrichment"]["gmt"],
        set_metadata=config["enrichment"]["set_metadata"] or [],
    output:
        gsea=report(
            "results/enrichment/gsea.tsv",
            caption="../report/enrichment_gsea.rst",
            category="6. Enrichment",
            labels={"type": "table", "result": "GSEA"},
        ),
        ora=report(
            "results/enrichment/ora.tsv",
            caption="../report/enrichment_ora.rst",
            category="6. Enrichment",
            labels={"type": "table", "result": "ORA"},
        ),
        heatmap_png=per_contrast(
            "results/figures/enrichment/{contrast}/heatmap_gsea.png",
            caption="../report/enrichment_heatmap.rst",
            category="6. Enrichment",
            labels={"type": "figure", "result": "GSEA heatmap (headline)"},
        ),
        heatmap_pdf=per_contrast("results/figures/enrichment/{contrast}/heatmap_gsea.pdf"),
    log:
        "logs/enrich_de.log",
    benchmark:
        "benchmarks/enrich_de.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=scaled(1500),
        runtime=runtime_min(15),
    params:
        settings=SETTINGS.enrichment,
    script:
        "../scripts/enrich_de.py"


rule score_gene_sets:
    input:
        h5ad="results/merged/clustered.h5ad",
        cells="results/annotation/cells.tsv.gz",
        clusters="results/annotation/clusters.tsv",
        gmt=config["enrichment"]["gmt"],
        set_metadata=config["enrichment"]["set_metadata"] or [],
    output:
        scores=report(
            "results/enrichment/scores.tsv",
            caption="../report/enrichment_scores.rst",
            category="6. Enrichment",
            labels={"type": "table", "result": "paired module-score test"},
        ),
        donor_scores="results/enrichment/donor_scores.tsv",
        lines_png=per_contrast(
            "results/figures/enrichment/{contrast}/donor_scores.png",
            caption="../report/enrichment_donor_scores.rst",
            category="6. Enrichment",
            labels={"type": "figure", "result": "module scores per donor (headline)"},
        ),
        lines_pdf=per_contrast("results/figures/enrichment/{contrast}/donor_scores.pdf"),
    log:
        "logs/score_gene_sets.log",
    benchmark:
        "benchmarks/score_gene_sets.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=scaled(1000, per_input_mb=0.25),
        runtime=runtime_min(15, per_input_mb=0.0005),
    params:
        settings=SETTINGS.scores,
    script:
        "../scripts/score_gene_sets.py"
