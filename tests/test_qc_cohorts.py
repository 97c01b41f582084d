"""QC on whole simulated cohorts: batches that differ in baseline mitochondrial share lose no more
healthy cells than the others, and a planted QC artefact (one population's mitochondrial share
raised after treatment only) is named by the QC bias check and reaches the composition table."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pbmc_prepost import marker_table, qc, qc_bias
from pbmc_prepost.composition import composition_tables
from pbmc_prepost.settings import CompositionSettings, QCBiasSettings, QCSettings, default_config
from pbmc_prepost.simulation import PRESETS, simulate

from conftest import ROOT, settings_of, study_of

MARKERS = marker_table.read_marker_table(ROOT / "resources" / "markers" / "pbmc_markers.tsv")


def cohort_qc(preset: str):
    data = simulate(PRESETS[preset])
    settings = settings_of(QCSettings)
    return data, {s: qc.run_sample_qc(a, s, settings) for s, a in data.samples.items()}


def removal_by_truth(data, results) -> pd.DataFrame:
    """Per sample, barcode: removed or not, with the simulator's truth."""
    frames = []
    for sample, result in results.items():
        truth = data.samples[sample].obs
        cells = result.cells.set_index("barcode").loc[truth.index]
        frames.append(truth.assign(sample=sample, removed=~cells["qc_pass"].to_numpy()))
    return pd.concat(frames)


@pytest.fixture(scope="module")
def batches():
    return cohort_qc("mito_batches")


def test_a_high_mito_batch_loses_no_more_healthy_cells_than_the_other(batches):
    data, results = batches
    table = removal_by_truth(data, results)
    batch = pd.DataFrame(data.truth["samples"]).set_index("sample")["batch"]
    table["batch"] = table["sample"].map(batch).to_numpy()
    healthy = ~(table["is_dying"] | table["is_doublet"])
    lost = table[healthy].groupby("batch")["removed"].mean()
    assert set(lost.index) == {"B1", "B2"}
    # Medians of 5.5 % and 6.9 % mitochondrial reads: each batch loses at most 5 % of its healthy
    # singlets, and the two lose about the same (a fixed 8 % ceiling took 36 % and 16 %).
    assert lost.max() <= 0.05 and abs(lost["B1"] - lost["B2"]) < 0.02, lost.to_dict()
    # Dying cells and doublets still go, in both batches.
    assert table[table["is_dying"] & ~table["is_doublet"]].groupby("batch")["removed"].mean().min() >= 0.9
    assert table[table["is_doublet"]].groupby("batch")["removed"].mean().min() >= 0.5
    # No filter takes a large share of a healthy sample, so no warning.
    assert all(r.summary["qc_warning"] == "" for r in results.values())


def artefact_bias(preset: str):
    """The QC bias check of a cohort as the workflow runs it, with the true labels of the passing
    cells standing in for the annotation."""
    data, results = cohort_qc(preset)
    study = study_of(data)
    genes = [g for g in MARKERS.genes(states=False) if g in data.samples["D1_pre"].var_names]
    passing = ad.concat([r.filtered[:, genes] for r in results.values()])
    passing.X = passing.layers["counts"] if "counts" in passing.layers else passing.X
    passing.obs["sample"] = passing.obs_names.str.split(":").str[0]
    removed = ad.concat([r.removed[:, genes] for r in results.values()])
    truth = pd.concat(
        [a.obs.assign(sample=s, barcode=a.obs_names.astype(str)) for s, a in data.samples.items()]
    ).reset_index(drop=True)
    annotation = truth[~truth["is_doublet"]][["sample", "barcode", "cell_type", "lineage"]]
    settings = QCBiasSettings.from_config(default_config(), study)
    passing_cells = annotation.merge(passing.obs[["sample", "barcode"]].astype(str))
    return qc_bias.qc_bias_tables(passing, removed, annotation, MARKERS.lineage_of, settings), study, passing_cells


def test_a_planted_qc_artefact_is_named_and_reaches_the_composition_notes():
    (_, _, test), study, cells = artefact_bias("qc_artefact")
    lineage = test[test["level"] == "lineage"].set_index("population")
    assert bool(lineage.at["CD14 mono", "differs"]), lineage[["pct_removed_pre", "pct_removed_post", "padj"]]
    assert lineage.at["CD14 mono", "pct_removed_post"] > lineage.at["CD14 mono", "pct_removed_pre"] + 10
    # The lymphocytes are not named. (A small population may be: here the doublet filter takes
    # 9-20 % of the DC-labelled barcodes of pre samples and 0-5 % of post ones.)
    assert not lineage.loc[["CD4 T", "CD8 T", "NK", "B"], "differs"].astype(bool).any()
    notes = qc_bias.bias_notes(test, study.contrast)
    assert "CD14 mono" in notes["lineage"] and "results/qc/removal_test.tsv" in notes["lineage"]["CD14 mono"]
    # The composition table carries it: its CD14 monocyte change is not silently the filter's.
    _, composition = composition_tables(cells, CompositionSettings.from_config(default_config(), study), notes)
    note = composition[composition["level"] == "lineage"].set_index("population")["note"]
    assert "QC removed 12" in note["CD14 mono"] and "QC removed" not in note["CD4 T"]


def test_without_the_artefact_the_same_cohort_raises_no_note():
    (_, _, test), study, _ = artefact_bias("small")
    assert not test["differs"].astype(bool).any(), test[test["differs"].astype(bool)]
    assert qc_bias.bias_notes(test, study.contrast) == {}


def test_batch_and_artefact_presets_leave_every_other_knob_alone():
    base = PRESETS["small"]
    for name in ("mito_batches", "qc_artefact"):
        changed = {k for k, v in vars(PRESETS[name]).items() if v != getattr(base, k)}
        assert changed <= {"mito_by_batch", "mito_artefact", "seed"}, changed
    assert np.isclose(PRESETS["mito_batches"].mito_by_batch, (0.055, 0.069)).all()
