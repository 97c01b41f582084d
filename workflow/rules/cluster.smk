# Merged stage: concatenate, normalize, HVG, PCA, (Harmony), neighbours; then Leiden and the UMAP
# side by side (the DE waits on the clusters, not on the display); markers.
# Each step writes only what it adds, so a failed or killed step reruns alone.


rule merge_samples:
    input:
        h5ads=expand("results/qc/{sample}.h5ad", sample=SAMPLES),
    output:
        h5ad="results/merged/merged.h5ad",
    log:
        "logs/merge_samples.log",
    benchmark:
        "benchmarks/merge_samples.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=scaled(1000, per_input_mb=0.1),
        runtime=runtime_min(10, per_input_mb=0.002),
    params:
        settings=SETTINGS.merge,
    script:
        "../scripts/merge_samples.py"


rule embed_cells:
    input:
        h5ad="results/merged/merged.h5ad",
    output:
        h5ad="results/merged/embedding.h5ad",
        hvg_batches="results/merged/hvg_batches.tsv",
    log:
        "logs/embed_cells.log",
    benchmark:
        "benchmarks/embed_cells.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=scaled(1500, per_input_mb=0.7),
        runtime=runtime_min(15, per_input_mb=0.003),
    params:
        settings=SETTINGS.embed,
    script:
        "../scripts/embed_cells.py"


# The layout is for figures only: it runs beside clustering, off the path to the DE.
rule layout_cells:
    input:
        h5ad="results/merged/embedding.h5ad",
    output:
        h5ad="results/merged/umap.h5ad",
        table="results/clustering/umap.tsv.gz",
    log:
        "logs/layout_cells.log",
    benchmark:
        "benchmarks/layout_cells.tsv"
    conda:
        ENV
    # seeded UMAP optimises on one thread
    threads: 1
    resources:
        mem_mb=scaled(1500, per_input_mb=4),
        runtime=runtime_min(15, per_input_mb=0.02),
    params:
        settings=SETTINGS.embed,
    script:
        "../scripts/layout_cells.py"


rule cluster_cells:
    input:
        h5ad="results/merged/embedding.h5ad",
    output:
        clusters="results/clustering/clusters.tsv.gz",
    log:
        "logs/cluster_cells.log",
    benchmark:
        "benchmarks/cluster_cells.tsv"
    # On the critical path to the DE: before the layout when one core is free.
    priority: 10
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=scaled(1500, per_input_mb=6.5),
        runtime=runtime_min(10, per_input_mb=0.05),
    params:
        settings=SETTINGS.cluster,
    script:
        "../scripts/cluster_cells.py"


rule assemble_clustered:
    input:
        merged="results/merged/merged.h5ad",
        embedding="results/merged/embedding.h5ad",
        layout="results/merged/umap.h5ad",
        clusters="results/clustering/clusters.tsv.gz",
    output:
        h5ad="results/merged/clustered.h5ad",
    log:
        "logs/assemble_clustered.log",
    benchmark:
        "benchmarks/assemble_clustered.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=scaled(1500, per_input_mb=0.3),
        runtime=runtime_min(10, per_input_mb=0.001),
    script:
        "../scripts/assemble_clustered.py"


rule find_cluster_markers:
    input:
        h5ad="results/merged/clustered.h5ad",
    output:
        markers=report(
            "results/clustering/markers.tsv",
            caption="../report/markers_table.rst",
            category="2. Clustering",
            labels={"type": "table", "result": "cluster markers"},
        ),
        untested="results/clustering/markers_untested.tsv",
        png=report(
            "results/figures/clustering/marker_dotplot.png",
            caption="../report/marker_dotplot.rst",
            category="2. Clustering",
            labels={"type": "figure", "result": "marker dot plot"},
        ),
        pdf="results/figures/clustering/marker_dotplot.pdf",
    log:
        "logs/find_cluster_markers.log",
    benchmark:
        "benchmarks/find_cluster_markers.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=scaled(1500, per_input_mb=0.15),
        runtime=runtime_min(15, per_input_mb=0.0005),
    params:
        settings=SETTINGS.markers,
    script:
        "../scripts/find_cluster_markers.py"


rule plot_umaps:
    input:
        h5ad="results/merged/clustered.h5ad",
        cells="results/annotation/cells.tsv.gz",
    output:
        sample_png=report(
            "results/figures/clustering/umap_sample.png",
            caption="../report/umap_sample.rst",
            category="2. Clustering",
            labels={"type": "figure", "result": "UMAP by sample"},
        ),
        sample_pdf="results/figures/clustering/umap_sample.pdf",
        condition_png=report(
            "results/figures/clustering/umap_condition.png",
            caption="../report/umap_condition.rst",
            category="2. Clustering",
            labels={"type": "figure", "result": "UMAP by condition"},
        ),
        condition_pdf="results/figures/clustering/umap_condition.pdf",
        cluster_png=report(
            "results/figures/clustering/umap_clusters.png",
            caption="../report/umap_clusters.rst",
            category="2. Clustering",
            labels={"type": "figure", "result": "UMAP by cluster"},
        ),
        cluster_pdf="results/figures/clustering/umap_clusters.pdf",
        cell_type_png=report(
            "results/figures/annotation/umap_cell_type.png",
            caption="../report/umap_cell_type.rst",
            category="3. Annotation",
            labels={"type": "figure", "result": "UMAP by cell type"},
        ),
        cell_type_pdf="results/figures/annotation/umap_cell_type.pdf",
    log:
        "logs/plot_umaps.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=scaled(1000, per_input_mb=0.1),
        runtime=runtime_min(10),
    params:
        settings=SETTINGS.figures,
    script:
        "../scripts/plot_umaps.py"
