# Per-sample stage: load, QC metrics, MAD thresholds, Scrublet doublets, filtered object.


rule qc_sample:
    input:
        counts=sample_input_files,
    output:
        h5ad="results/qc/{sample}.h5ad",
        removed="results/qc/{sample}.removed.h5ad",
        cells="results/qc/{sample}.cells.tsv.gz",
        summary="results/qc/{sample}.summary.tsv",
        ambient="results/qc/{sample}.ambient.tsv",
        soup="results/qc/{sample}.soup.tsv.gz",
        png=report(
            "results/figures/qc/{sample}.png",
            caption="../report/qc_sample.rst",
            category="1. Quality control",
            subcategory="Per sample",
            labels={"sample": "{sample}", "type": "figure", "result": "QC metrics"},
        ),
        pdf="results/figures/qc/{sample}.pdf",
    log:
        "logs/qc_sample/{sample}.log",
    benchmark:
        "benchmarks/qc_sample/{sample}.tsv"
    conda:
        ENV
    threads: 1
    # Peak memory follows the sample's size (docs/benchmarks.md): sparse Scrublet 1.3 GB for a
    # 22 MB (6,500-cell) sample at 100k, 2.4 GB for 38 MB at 200k; the dense option
    # (doublets.mean_center: true) densifies cells x variable genes: 3.6 and 6.2 GB.
    resources:
        mem_mb=(scaled(1500, per_input_mb=160) if config["doublets"]["mean_center"] else scaled(800, per_input_mb=60)),
        runtime=runtime_min(10, per_input_mb=0.2),
    params:
        path=lambda wc: sample_row(wc)["resolved_path"],
        format=lambda wc: sample_row(wc)["format"],
        counts_layer=lambda wc: sample_row(wc)["counts_layer"],
        raw_path=lambda wc: sample_row(wc)["resolved_raw_path"],
        settings=qc_settings,
        ambient=SETTINGS.ambient,
    script:
        "../scripts/qc_sample.py"


rule aggregate_qc:
    input:
        cells=expand("results/qc/{sample}.cells.tsv.gz", sample=SAMPLES),
        summaries=expand("results/qc/{sample}.summary.tsv", sample=SAMPLES),
    output:
        cells="results/qc/cells.tsv.gz",
        summary=report(
            "results/qc/summary.tsv",
            caption="../report/qc_summary_table.rst",
            category="1. Quality control",
            subcategory="Cohort",
            labels={"type": "table", "result": "QC summary"},
        ),
        png=report(
            "results/figures/qc/summary.png",
            caption="../report/qc_summary.rst",
            category="1. Quality control",
            subcategory="Cohort",
            labels={"type": "figure", "result": "cells kept and removed"},
        ),
        pdf="results/figures/qc/summary.pdf",
    log:
        "logs/aggregate_qc.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=scaled(1000, per_input_mb=20),
        runtime=runtime_min(10),
    params:
        study=SETTINGS.study,
    script:
        "../scripts/aggregate_qc.py"


# After annotation: did QC remove one population more at one timepoint? (results/qc/removal_test.tsv)
rule check_qc_bias:
    input:
        h5ad="results/merged/clustered.h5ad",
        removed=expand("results/qc/{sample}.removed.h5ad", sample=SAMPLES),
        cells="results/annotation/cells.tsv.gz",
        markers=config["annotation"]["marker_table"],
    output:
        removed_cells="results/qc/removed_cells.tsv.gz",
        table=report(
            "results/qc/removed_by_population.tsv",
            caption="../report/qc_removed_by_population.rst",
            category="1. Quality control",
            subcategory="Cohort",
            labels={"type": "table", "result": "removed by population"},
        ),
        test=report(
            "results/qc/removal_test.tsv",
            caption="../report/qc_removal_test.rst",
            category="1. Quality control",
            subcategory="Cohort",
            labels={"type": "table", "result": "removal by timepoint"},
        ),
    log:
        "logs/check_qc_bias.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=scaled(1000, per_input_mb=0.5),
        runtime=runtime_min(10),
    params:
        settings=SETTINGS.qc_bias,
    script:
        "../scripts/check_qc_bias.py"


# Ambient RNA of every sample (results/qc/ambient.tsv): rows from the empty droplets are written
# by QC; samples without a raw matrix are estimated here, once their cells are annotated, from
# gene families their populations cannot make (pbmc_prepost.ambient_cells).
rule estimate_ambient:
    input:
        ambient=expand("results/qc/{sample}.ambient.tsv", sample=SAMPLES),
        soups=expand("results/qc/{sample}.soup.tsv.gz", sample=SAMPLES),
        h5ad="results/merged/merged.h5ad",
        labels="results/annotation/cells.tsv.gz",
        qc_cells="results/qc/cells.tsv.gz",
        families=config["ambient"]["gene_families"],
    output:
        ambient=report(
            "results/qc/ambient.tsv",
            caption="../report/qc_ambient.rst",
            category="1. Quality control",
            subcategory="Cohort",
            labels={"type": "table", "result": "ambient RNA"},
        ),
        by_population=report(
            "results/qc/ambient_by_population.tsv",
            caption="../report/qc_ambient_by_population.rst",
            category="1. Quality control",
            subcategory="Cohort",
            labels={"type": "table", "result": "ambient RNA by population"},
        ),
        soups="results/qc/soups.tsv.gz",
        png=report(
            "results/figures/qc/ambient.png",
            caption="../report/qc_ambient_figure.rst",
            category="1. Quality control",
            subcategory="Cohort",
            labels={"type": "figure", "result": "ambient RNA"},
        ),
        pdf="results/figures/qc/ambient.pdf",
    log:
        "logs/estimate_ambient.log",
    benchmark:
        "benchmarks/estimate_ambient.tsv"
    # On the critical path to the DE: before the module scores and markers that could run beside it.
    priority: 10
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=scaled(1000, per_input_mb=0.4),
        runtime=runtime_min(10),
    params:
        settings=SETTINGS.ambient,
        study=SETTINGS.study,
    script:
        "../scripts/estimate_ambient.py"
