"""The simulator: deterministic, planted effects present, the null twin without them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pbmc_prepost import io as count_io
from pbmc_prepost.simulation import PRESETS, SimulationParams, simulate, write_dataset
from pbmc_prepost.simulation.biology import IL7_T_EFFECTS, LINEAGE

from conftest import ROOT


@pytest.fixture(scope="module")
def treated(cohort):
    return cohort


@pytest.fixture(scope="module")
def null(null_cohort):
    return null_cohort


@pytest.fixture(scope="module")
def tiny():
    return simulate(PRESETS["tiny"])


def t_cell_fraction(data, timepoint):
    obs = pd.concat([a.obs for s, a in data.samples.items() if s.endswith(timepoint)])
    singlets = obs[~obs["is_doublet"]]
    return singlets["lineage"].isin(["CD4 T", "CD8 T", "other T"]).mean()


def pseudobulk_log2fc(data, gene, lineages):
    values = {}
    for sample, adata in data.samples.items():
        keep = adata.obs["lineage"].isin(lineages).to_numpy() & ~adata.obs["is_doublet"].to_numpy()
        counts = np.asarray(adata.X[keep].sum(0)).ravel()
        values[sample] = counts[adata.var_names.get_loc(gene)] / counts.sum() * 1e6
    donors = sorted({s.split("_")[0] for s in values})
    return float(np.mean([np.log2(values[f"{d}_post"] / values[f"{d}_pre"]) for d in donors]))


def test_same_seed_same_counts(tiny):
    again = simulate(PRESETS["tiny"])
    for sample in tiny.samples:
        a, b = tiny.samples[sample], again.samples[sample]
        assert (a.X != b.X).nnz == 0 and list(a.obs_names) == list(b.obs_names)


def test_the_embedded_example_is_the_example_preset(treated):
    """resources/example is what `make example` writes from the preset: same barcodes and truth."""
    truth = pd.read_csv(
        ROOT / "resources" / "example" / "truth" / "cells.tsv.gz",
        sep="\t",
        dtype={"barcode": str},
        keep_default_na=False,
    )
    simulated = pd.concat([a.obs.assign(sample=s, barcode=a.obs_names) for s, a in treated.samples.items()])
    assert list(truth["barcode"]) == list(simulated["barcode"])
    assert list(truth["cell_type"]) == list(simulated["cell_type"])


def test_counts_are_integers_with_real_symbols_and_artefacts(treated):
    adata = treated.samples["D1_pre"]
    assert np.allclose(adata.X.data, np.round(adata.X.data))
    names = set(adata.var_names)
    assert {"MT-CO1", "RPL13", "CD3E", "LYZ", "IL7R", "HBB"} <= names
    assert adata.var["gene_ids"].str.startswith("ENSG").all()
    assert adata.obs["is_dying"].mean() > 0.01 and adata.obs["is_doublet"].mean() > 0.02
    assert set(adata.obs.loc[~adata.obs["is_doublet"], "cell_type"]) <= set(LINEAGE)


def test_planted_il7_effects_are_in_the_counts(treated):
    assert t_cell_fraction(treated, "post") - t_cell_fraction(treated, "pre") > 0.1
    t_cells = ["CD4 T", "CD8 T"]
    assert pseudobulk_log2fc(treated, "IL7R", t_cells) < -0.5
    assert pseudobulk_log2fc(treated, "CISH", t_cells) > 0.5
    assert pseudobulk_log2fc(treated, "HLA-DRA", ["CD14 mono"]) < -0.4


def test_null_twin_has_no_treatment_effect(null):
    assert abs(t_cell_fraction(null, "post") - t_cell_fraction(null, "pre")) < 0.06
    assert abs(pseudobulk_log2fc(null, "IL7R", ["CD4 T", "CD8 T"])) < 0.3
    assert abs(pseudobulk_log2fc(null, "CISH", ["CD4 T", "CD8 T"])) < 0.3
    assert null.truth["de_log2fc"]["T cells (all T subsets)"] == {}


def test_truth_records_the_planted_effects(treated):
    assert treated.truth["de_log2fc"]["T cells (all T subsets)"] == IL7_T_EFFECTS
    assert len(treated.truth["samples"]) == 2 * PRESETS["example"].n_donors


def test_written_dataset_reads_back_in_every_layout(treated, tmp_path):
    table = write_dataset(treated, tmp_path / "data", tmp_path / "samples.tsv", layout="mixed")
    assert set(table["format"]) == {"10x_mtx", "10x_h5", "h5ad"}
    for row in table.itertuples():
        adata = count_io.read_counts(row.path, row.format, row.counts_layer or None)
        original = treated.samples[row.sample]
        assert list(adata.obs_names) == list(original.obs_names)
        assert (adata[:, original.var_names].X != original.X).nnz == 0
    truth = pd.read_csv(tmp_path / "data" / "truth" / "cells.tsv.gz", sep="\t")
    assert len(truth) == sum(a.n_obs for a in treated.samples.values())


def test_same_seed_same_counts_in_another_process(tiny):
    """Python randomizes string hashing per process; the simulation must not depend on it."""
    import hashlib
    import os
    import subprocess
    import sys

    code = (
        "import hashlib; from pbmc_prepost.simulation import simulate, PRESETS; "
        "d = simulate(PRESETS['tiny']); "
        "print(hashlib.md5(b''.join(a.X.toarray().tobytes() for a in d.samples.values())).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT / "workflow" / "scripts")}
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    here = hashlib.md5(b"".join(a.X.toarray().tobytes() for a in tiny.samples.values())).hexdigest()
    assert other.stdout.strip() == here


def marker_share(data, lineage: str, markers: list[str]) -> float:
    """Share of the UMIs of singlet, healthy cells of a lineage that fall on its markers."""
    shares = []
    for adata in data.samples.values():
        keep = (
            (adata.obs["lineage"] == lineage).to_numpy()
            & ~adata.obs["is_doublet"].to_numpy()
            & ~adata.obs["is_dying"].to_numpy()
        )
        counts = np.asarray(adata.X[keep].sum(0)).ravel()
        shares.append(counts[[adata.var_names.get_loc(g) for g in markers]].sum() / counts.sum())
    return float(np.mean(shares))


def test_markers_keep_their_share_of_umis_at_realistic_gene_counts():
    """With 6x more genes than the example (about the genes 10x detects in PBMC), markers and
    cell-type programs keep their share of each cell's UMIs instead of drowning in extra genes."""
    small = simulate(SimulationParams(n_donors=1, cells_per_sample=300, n_genes=3000, seed=3))
    large = simulate(SimulationParams(n_donors=1, cells_per_sample=300, n_genes=18000, seed=3))
    for lineage, markers in {
        "CD14 mono": ["LYZ", "S100A8", "S100A9", "CD14"],
        "B": ["MS4A1", "CD79A", "CD79B"],
        "CD8 T": ["CD3E", "CD8A", "CD8B"],
    }.items():
        ratio = marker_share(large, lineage, markers) / marker_share(small, lineage, markers)
        assert 0.7 < ratio < 1.4, (lineage, ratio)
