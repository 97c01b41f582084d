"""Ambient RNA without a raw matrix: the soup from the cells and its share from gene families the
annotated populations cannot make, against the simulator's planted contamination."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pbmc_prepost import ambient_cells
from pbmc_prepost.simulation import PRESETS, simulate

FAMILIES = ambient_cells.read_families(Path(__file__).parents[1] / "resources/markers/ambient_genes.tsv")
HAEMOGLOBIN = r"^HB(?:A1|A2|B|D|G1|G2|M)$"


@pytest.fixture(scope="module")
def soupy():
    """A small cohort: one sample with much more soup, one with none (no empty droplets needed)."""
    return simulate(replace(PRESETS["tiny"], ambient_by_sample={"D2_post": 0.08, "D3_pre": 0.0}))


def estimate(data, sample: str, lineage: str = "lineage", families=FAMILIES):
    """The estimate on the cells QC keeps (no doublets, no dying cells), labelled with ``lineage``."""
    cells = data.samples[sample]
    kept = cells[~cells.obs["is_doublet"].to_numpy() & ~cells.obs["is_dying"].to_numpy()]
    genes = kept.var_names.to_numpy()
    profile = pd.Series(ambient_cells.pooled_profile(kept.X, genes, HAEMOGLOBIN), index=genes)
    umis = np.asarray(kept.X.sum(1)).ravel()
    found, table = ambient_cells.estimate_from_cells(
        kept.X, genes, umis, kept.obs[lineage].to_numpy(), profile, families, HAEMOGLOBIN, sample
    )
    return found, table, kept.obs["ambient_fraction"].mean()


def test_each_samples_fraction_lies_within_a_point_of_the_planted_mean(soupy):
    for sample in soupy.samples:
        found, table, planted = estimate(soupy, sample)
        assert abs(found.rho - planted) < (0.01 if planted < 0.05 else 0.015), (sample, found.rho, planted)
        assert found.lower <= planted <= found.upper or planted == 0, (sample, found, planted)
        # Several populations and families agree: each used pair within 2 points of the planted.
        assert table.loc[table["used"], "family"].nunique() >= 2
        well_measured = table[table["used"] & (table["expected_per_unit"] > 300)]
        assert len(well_measured) >= 1
        assert (well_measured["contamination"] - planted).abs().max() < 0.02, well_measured
    assert estimate(soupy, "D2_post")[0].rho > 0.06 and estimate(soupy, "D3_pre")[0].rho < 0.005


def test_the_soup_profile_puts_the_soup_only_genes_at_their_measured_share(soupy):
    found, _, _ = estimate(soupy, "D1_pre")
    genes = soupy.samples["D1_pre"].var_names
    hb = genes.str.match(HAEMOGLOBIN)
    assert found.profile.sum() == pytest.approx(1.0)
    # Haemoglobin reaches the cells only through the soup: its share of the soup is its share of
    # the cells' UMIs over the contamination (the simulator puts 0.2-2 % of the soup there).
    assert 0.001 < found.profile[hb].sum() < 0.03
    assert found.soup_only_share == pytest.approx(found.profile[hb].sum() * found.rho)


def test_a_population_that_makes_a_family_is_not_taken_for_soup(soupy):
    # Mislabel every CD14 monocyte as CD4 T: their LYZ/S100A8/S100A9 are their own, and the pair
    # (CD4 T, myeloid) must be dropped rather than turn the estimate into 50 %.
    data = soupy.samples["D1_pre"]
    data.obs["mislabelled"] = data.obs["lineage"].astype(str).replace({"CD14 mono": "CD4 T"})
    found, table, planted = estimate(soupy, "D1_pre", lineage="mislabelled")
    row = table.set_index(["population", "family"]).loc[("CD4 T", "myeloid")]
    monocytes = int((data.obs["lineage"] == "CD14 mono").sum())
    # Left out cell by cell (far more than soup can give), or the pair as a whole.
    assert row["cells_expressing"] >= 0.9 * monocytes or not row["used"]
    assert abs(found.rho - planted) < 0.01


def test_no_family_gives_no_estimate_rather_than_a_guess(soupy):
    found, table, _ = estimate(soupy, "D1_pre", families=[ambient_cells.GeneFamily("none", ("NOTAGENE",), ("B",))])
    assert np.isnan(found.rho) and table.empty
