# Cell types: cluster-level marker evidence (gates, then subsets), cycling flag, user overrides, checks.


rule annotate_cells:
    # The merged counts, the graph and the clusters: the annotation (and the DE after it) need not
    # wait for the UMAP and clustered.h5ad.
    input:
        merged="results/merged/merged.h5ad",
        embedding="results/merged/embedding.h5ad",
        clusters="results/clustering/clusters.tsv.gz",
        markers=config["annotation"]["marker_table"],
        checks=config["annotation"]["consistency_checks"],
        overrides=annotation_overrides,
    output:
        cells="results/annotation/cells.tsv.gz",
        clusters=report(
            "results/annotation/clusters.tsv",
            caption="../report/annotation_clusters.rst",
            category="3. Annotation",
            labels={"type": "table", "result": "cluster labels"},
        ),
        consistency=report(
            "results/annotation/consistency.tsv",
            caption="../report/annotation_consistency.rst",
            category="3. Annotation",
            labels={"type": "table", "result": "label checks"},
        ),
        dotplot_png=report(
            "results/figures/annotation/marker_dotplot_by_cell_type.png",
            caption="../report/marker_dotplot_cell_type.rst",
            category="3. Annotation",
            labels={"type": "figure", "result": "marker dot plot by cell type and condition"},
        ),
        dotplot_pdf="results/figures/annotation/marker_dotplot_by_cell_type.pdf",
    log:
        "logs/annotate_cells.log",
    benchmark:
        "benchmarks/annotate_cells.tsv"
    # On the critical path to the DE: before the clustered file, markers and figures.
    priority: 10
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=scaled(1500, per_input_mb=0.3),
        runtime=runtime_min(10, per_input_mb=0.001),
    params:
        settings=SETTINGS.annotation,
    script:
        "../scripts/annotate_cells.py"
