# Paired pseudobulk differential expression, treated vs reference, one job per population.
# The populations are known only once cells are annotated, hence the checkpoint.


wildcard_constraints:
    group="(?!summary$)[A-Za-z0-9][A-Za-z0-9._-]*",


checkpoint pseudobulk_cells:
    input:
        h5ad="results/merged/clustered.h5ad",
        cells="results/annotation/cells.tsv.gz",
    output:
        h5ad="results/de/pseudobulk/pseudobulk.h5ad",
        groups="results/de/pseudobulk/groups.tsv",
    params:
        contrast=config["contrast"],
        settings=de_settings(),
    log:
        "logs/pseudobulk_cells.log",
    benchmark:
        "benchmarks/pseudobulk_cells.tsv"
    threads: 1
    resources:
        mem_mb=scaled(1500, per_input_mb=0.8),
        runtime=runtime_min(10, per_input_mb=0.01),
    conda:
        ENV
    script:
        "../scripts/pseudobulk_cells.py"


rule test_de_group:
    input:
        h5ad="results/de/pseudobulk/pseudobulk.h5ad",
        groups="results/de/pseudobulk/groups.tsv",
    output:
        table=report(
            "results/de/{group}.tsv",
            caption="../report/de_table.rst",
            category="5. Differential expression",
            subcategory="{group}",
            labels={"population": "{group}", "type": "table", "result": "DE results"},
        ),
        summary="results/de/per_group/{group}.summary.tsv",
        volcano_png=report(
            "results/figures/de/volcano_{group}.png",
            caption="../report/de_volcano.rst",
            category="5. Differential expression",
            subcategory="{group}",
            labels={"population": "{group}", "type": "figure", "result": "volcano"},
        ),
        volcano_pdf="results/figures/de/volcano_{group}.pdf",
        paired_png=report(
            "results/figures/de/paired_genes_{group}.png",
            caption="../report/de_paired_genes.rst",
            category="5. Differential expression",
            subcategory="{group}",
            labels={"population": "{group}", "type": "figure", "result": "headline genes per donor"},
        ),
        paired_pdf="results/figures/de/paired_genes_{group}.pdf",
    params:
        contrast=config["contrast"],
        settings=de_settings(),
        n_label=config["de"]["n_label"],
        headline_genes=config["de"]["headline_genes"],
    log:
        "logs/test_de_group/{group}.log",
    benchmark:
        "benchmarks/test_de_group/{group}.tsv"
    threads: 1
    resources:
        mem_mb=scaled(1500, per_input_mb=3),
        runtime=runtime_min(20, per_input_mb=0.05),
    conda:
        ENV
    script:
        "../scripts/test_de_group.py"


rule summarize_de:
    input:
        summaries=de_group_summaries,
    output:
        summary=report(
            "results/de/summary.tsv",
            caption="../report/de_summary.rst",
            category="5. Differential expression",
            subcategory="Overview",
            labels={"type": "table", "result": "DE summary"},
        ),
        png=report(
            "results/figures/de/summary.png",
            caption="../report/de_counts.rst",
            category="5. Differential expression",
            subcategory="Overview",
            labels={"type": "figure", "result": "genes up and down per population"},
        ),
        pdf="results/figures/de/summary.pdf",
    params:
        alpha=config["de"]["alpha"],
    log:
        "logs/summarize_de.log",
    threads: 1
    resources:
        mem_mb=scaled(1000),
        runtime=runtime_min(5),
    conda:
        ENV
    script:
        "../scripts/summarize_de.py"
