# Composition: cells per sample and population, and each contrast's test of each population's share.


rule compare_composition:
    input:
        cells="results/annotation/cells.tsv.gz",
        clusters="results/annotation/clusters.tsv",
        qc_bias="results/qc/removal_test.tsv",
    output:
        proportions=report(
            "results/composition/proportions.tsv",
            caption="../report/composition_proportions.rst",
            category="4. Composition",
            labels={"type": "table", "result": "proportions"},
        ),
        test=report(
            "results/composition/test.tsv",
            caption="../report/composition_test.rst",
            category="4. Composition",
            labels={"type": "table", "result": "paired test"},
        ),
        bars_lineage_png=composition_figure("lineage", "bars", "composition_bars.rst"),
        bars_lineage_pdf="results/figures/composition/bars_lineage.pdf",
        bars_cell_type_png=composition_figure("cell_type", "bars", "composition_bars.rst"),
        bars_cell_type_pdf="results/figures/composition/bars_cell_type.pdf",
        pairs_lineage_png=per_contrast(
            "results/figures/composition/{contrast}/pairs_lineage.png",
            caption="../report/composition_pairs.rst",
            category="4. Composition",
            labels={"level": "lineage", "type": "figure", "result": "per-donor proportions"},
        ),
        pairs_lineage_pdf=per_contrast("results/figures/composition/{contrast}/pairs_lineage.pdf"),
        pairs_cell_type_png=per_contrast(
            "results/figures/composition/{contrast}/pairs_cell_type.png",
            caption="../report/composition_pairs.rst",
            category="4. Composition",
            labels={"level": "cell_type", "type": "figure", "result": "per-donor proportions"},
        ),
        pairs_cell_type_pdf=per_contrast("results/figures/composition/{contrast}/pairs_cell_type.pdf"),
    log:
        "logs/compare_composition.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=scaled(1000, per_input_mb=10),
        runtime=runtime_min(10),
    params:
        settings=SETTINGS.composition,
    script:
        "../scripts/compare_composition.py"
