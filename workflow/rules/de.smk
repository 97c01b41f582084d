# Pseudobulk differential expression of every contrast, one job per population (all contrasts).
# The populations are known only once cells are annotated, hence the checkpoint.


wildcard_constraints:
    population="(?!summary$)[A-Za-z0-9][A-Za-z0-9._-]*",


checkpoint pseudobulk_cells:
    input:
        h5ad="results/merged/merged.h5ad",
        cells="results/annotation/cells.tsv.gz",
        ambient="results/qc/ambient.tsv",
        soups="results/qc/soups.tsv.gz",
    output:
        h5ad="results/de/pseudobulk/pseudobulk.h5ad",
        populations="results/de/pseudobulk/populations.tsv",
    log:
        "logs/pseudobulk_cells.log",
    benchmark:
        "benchmarks/pseudobulk_cells.tsv"
    # On the critical path to the DE: before the module scores and markers that could run beside it.
    priority: 10
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=scaled(1500, per_input_mb=0.4),
        runtime=runtime_min(10, per_input_mb=0.001),
    params:
        settings=SETTINGS.de,
        ambient=SETTINGS.ambient,
    script:
        "../scripts/pseudobulk_cells.py"


rule fit_de:
    input:
        h5ad="results/de/pseudobulk/pseudobulk.h5ad",
        populations="results/de/pseudobulk/populations.tsv",
    output:
        tables=per_contrast(
            "results/de/{contrast}/{population}.tsv",
            caption="../report/de_table.rst",
            category="5. Differential expression",
            labels={"population": "{population}", "type": "table", "result": "DE results"},
        ),
        summaries=per_contrast("results/de/per_population/{contrast}/{population}.summary.tsv"),
        volcano_png=per_contrast(
            "results/figures/de/{contrast}/volcano_{population}.png",
            caption="../report/de_volcano.rst",
            category="5. Differential expression",
            labels={"population": "{population}", "type": "figure", "result": "volcano"},
        ),
        volcano_pdf=per_contrast("results/figures/de/{contrast}/volcano_{population}.pdf"),
        paired_png=per_contrast(
            "results/figures/de/{contrast}/paired_genes_{population}.png",
            caption="../report/de_paired_genes.rst",
            category="5. Differential expression",
            labels={"population": "{population}", "type": "figure", "result": "headline genes per donor"},
        ),
        paired_pdf=per_contrast("results/figures/de/{contrast}/paired_genes_{population}.pdf"),
    log:
        "logs/fit_de/{population}.log",
    benchmark:
        "benchmarks/fit_de/{population}.tsv"
    # On the critical path to the DE: before the module scores and markers that could run beside it.
    priority: 10
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=scaled(1500, per_input_mb=3),
        runtime=runtime_min(20, per_input_mb=0.05),
    params:
        settings=SETTINGS.de,
    script:
        "../scripts/fit_de.py"


rule summarize_de:
    input:
        summaries=de_summaries,
        clusters="results/annotation/clusters.tsv",
    output:
        summary=report(
            "results/de/summary.tsv",
            caption="../report/de_summary.rst",
            category="5. Differential expression",
            subcategory="Overview",
            labels={"type": "table", "result": "DE summary"},
        ),
        png=per_contrast(
            "results/figures/de/{contrast}/summary.png",
            caption="../report/de_counts.rst",
            category="5. Differential expression",
            labels={"type": "figure", "result": "genes up and down per population"},
        ),
        pdf=per_contrast("results/figures/de/{contrast}/summary.pdf"),
    log:
        "logs/summarize_de.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=scaled(1000),
        runtime=runtime_min(5),
    params:
        settings=SETTINGS.de,
    script:
        "../scripts/summarize_de.py"
