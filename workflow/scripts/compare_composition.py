"""Snakemake adapter: proportions per sample and the paired composition test, at both label levels."""

from pbmc_prepost import composition, qc_bias
from pbmc_prepost.annotation_checks import population_notes
from pbmc_prepost.plots.composition import composition_figures
from pbmc_prepost.runtime import start_job
from pbmc_prepost.tables import FLOAT_FORMAT, read_tsv, write_tsv

smk = snakemake  # noqa: F821
settings = smk.params.settings
log = start_job(smk.log[0])
cells = read_tsv(smk.input.cells, dtype={"barcode": str}, usecols=["sample", *composition.LEVELS])
clusters = read_tsv(smk.input.clusters, dtype=str, keep_default_na=False)
notes = {level: population_notes(clusters, level) for level in composition.LEVELS}
qc_test = read_tsv(smk.input.qc_bias)
qc_notes = {contrast.name: qc_bias.bias_notes(qc_test, contrast) for contrast in settings.study.contrasts}
proportions, tests = composition.composition_tables(cells, settings, notes, contrast_notes=qc_notes)
write_tsv(proportions, smk.output.proportions, FLOAT_FORMAT)
write_tsv(tests, smk.output.test, FLOAT_FORMAT)
contrasts = settings.study.contrasts
figures = {name: [smk.output[f"{name}_png"], smk.output[f"{name}_pdf"]] for name in ("bars_lineage", "bars_cell_type")}
for level in composition.LEVELS:
    for i, contrast in enumerate(contrasts):
        figures[f"pairs_{level}_{contrast.name}"] = [
            smk.output[f"pairs_{level}_png"][i],
            smk.output[f"pairs_{level}_pdf"][i],
        ]
composition_figures(proportions, tests, contrasts, figures)
