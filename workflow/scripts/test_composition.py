"""Snakemake adapter: proportions per sample and the paired composition test, at both label levels."""

import pandas as pd

from pbmc_prepost import composition
from pbmc_prepost.runtime import start_job
from pbmc_prepost.samplesheet import Contrast

smk = snakemake  # noqa: F821
p = smk.params
log = start_job(smk.log[0])
contrast = Contrast(**p.contrast)
meta = pd.DataFrame(p.sample_meta).set_index("sample")
cells = pd.read_csv(smk.input.cells, sep="\t", dtype={"barcode": str}, usecols=["sample", "cell_type", "lineage"])
proportions, tests = [], []
for level in ("lineage", "cell_type"):
    props = composition.cell_counts(cells, level, meta, contrast)
    test = composition.paired_composition_test(props, contrast, p.transform, p.min_pairs)
    figures = smk.output[f"{level}_bars_png"], smk.output[f"{level}_bars_pdf"]
    composition.stacked_bar_figure(props, contrast, figures, title=f"Composition per sample ({level})")
    figures = smk.output[f"{level}_pairs_png"], smk.output[f"{level}_pairs_pdf"]
    composition.paired_lines_figure(props, test, contrast, figures, title=f"Proportion per donor ({level})")
    proportions.append(props.assign(level=level))
    tests.append(test.assign(level=level))
    log.info("%s composition:\n%s", level, test.to_string(index=False))
columns = lambda frame: ["level"] + [c for c in frame.columns if c != "level"]  # noqa: E731
proportions = pd.concat(proportions, ignore_index=True)
tests = pd.concat(tests, ignore_index=True)
proportions[columns(proportions)].to_csv(smk.output.proportions, sep="\t", index=False, float_format="%.6g")
tests[columns(tests)].to_csv(smk.output.test, sep="\t", index=False, float_format="%.6g")
