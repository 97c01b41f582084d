# Composition: cells per sample and population, and a paired test of each population's share.


rule test_composition:
    input:
        cells="results/annotation/cells.tsv.gz",
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
        lineage_bars_png=composition_figure("lineage", "bars", "composition_bars.rst"),
        lineage_bars_pdf="results/figures/composition/bars_lineage.pdf",
        cell_type_bars_png=composition_figure("cell_type", "bars", "composition_bars.rst"),
        cell_type_bars_pdf="results/figures/composition/bars_cell_type.pdf",
        lineage_pairs_png=composition_figure("lineage", "pairs", "composition_pairs.rst"),
        lineage_pairs_pdf="results/figures/composition/pairs_lineage.pdf",
        cell_type_pairs_png=composition_figure("cell_type", "pairs", "composition_pairs.rst"),
        cell_type_pairs_pdf="results/figures/composition/pairs_cell_type.pdf",
    params:
        contrast=config["contrast"],
        sample_meta=SAMPLE_META,
        transform=config["composition"]["transform"],
        min_pairs=config["composition"]["min_pairs"],
    log:
        "logs/test_composition.log",
    threads: 1
    resources:
        mem_mb=scaled(1000, per_input_mb=10),
        runtime=runtime_min(10),
    conda:
        ENV
    script:
        "../scripts/test_composition.py"
