# Provenance: what produced the results, for the report and for a paper's methods.


rule record_provenance:
    input:
        sheet=config["samples"],
        gmt=config["enrichment"]["gmt"],
        qc_summary="results/qc/summary.tsv",
        hvg_batches="results/merged/hvg_batches.tsv",
        markers_untested="results/clustering/markers_untested.tsv",
    output:
        config=report(
            "results/provenance/config.yaml",
            caption="../report/provenance_config.rst",
            category="7. Provenance",
            labels={"type": "file", "result": "resolved configuration"},
        ),
        sheet=report(
            "results/provenance/samples.tsv",
            caption="../report/provenance_samples.rst",
            category="7. Provenance",
            labels={"type": "file", "result": "sample sheet"},
        ),
        gene_sets=report(
            "results/provenance/gene_sets.gmt",
            caption="../report/provenance_gene_sets.rst",
            category="7. Provenance",
            labels={"type": "file", "result": "gene sets"},
        ),
        versions=report(
            "results/provenance/software_versions.tsv",
            caption="../report/provenance_versions.rst",
            category="7. Provenance",
            labels={"type": "file", "result": "software versions"},
        ),
        fallbacks=report(
            "results/provenance/fallbacks.tsv",
            caption="../report/provenance_fallbacks.rst",
            category="7. Provenance",
            labels={"type": "table", "result": "fallbacks"},
        ),
        contrasts=report(
            "results/provenance/contrasts.tsv",
            caption="../report/provenance_contrasts.rst",
            category="7. Provenance",
            labels={"type": "table", "result": "contrasts"},
        ),
    log:
        "logs/record_provenance.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=scaled(500),
        runtime=runtime_min(5),
    params:
        config=config,
        contrasts=CONTRAST_SUPPORT.to_dict("list"),
        min_cells_per_sample=config["merge"]["min_cells_per_sample"],
    script:
        "../scripts/record_provenance.py"


rule summarize_study:
    input:
        proportions="results/composition/proportions.tsv",
        composition="results/composition/test.tsv",
        donor_scores="results/enrichment/donor_scores.tsv",
        scores="results/enrichment/scores.tsv",
        gsea="results/enrichment/gsea.tsv",
    output:
        png=per_contrast(
            "results/figures/summary/{contrast}/study_summary.png",
            caption="../report/study_summary.rst",
            category="0. Summary",
            labels={"type": "figure", "result": "study summary (headline)"},
        ),
        pdf=per_contrast("results/figures/summary/{contrast}/study_summary.pdf"),
    log:
        "logs/summarize_study.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=scaled(1000),
        runtime=runtime_min(5),
    params:
        settings=SETTINGS.scores,
    script:
        "../scripts/summarize_study.py"
