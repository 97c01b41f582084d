"""Cell-type composition: counts with zeros, the paired propeller-style test, and its figures.

Checked on simulated PBMC with known truth (IL-7 expands T cells, so other shares fall) and on
its null twin, plus hand-made tables whose test statistics are computed independently here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pbmc_prepost import composition
from pbmc_prepost.design import Contrast
from pbmc_prepost.plots import composition as composition_plots

from conftest import CONTRAST, study_of

RELATIVE = "proportions are relative: an expansion of one population lowers the others"
TEST_COLUMNS = ["population", "n_pairs", "mean_pre", "mean_post", "log2_ratio", "pvalue", "padj", "test", "note"]


def _obs_and_meta(cells, data) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The annotated cells' labels and the sample metadata (donor, timepoint) of a shared cohort."""
    meta = study_of(data).sample_meta()[["donor", "timepoint"]]
    return cells.obs[["sample", "cell_type", "lineage"]].reset_index(drop=True), meta


@pytest.fixture(scope="module")
def treated(cells, cohort) -> tuple[pd.DataFrame, pd.DataFrame]:
    return _obs_and_meta(cells, cohort)


@pytest.fixture(scope="module")
def null(null_cells, null_cohort) -> tuple[pd.DataFrame, pd.DataFrame]:
    return _obs_and_meta(null_cells, null_cohort)


# --- cell_counts -------------------------------------------------------------------------------


def test_cell_counts_has_every_sample_and_cell_type_including_zeros(treated):
    obs, meta = treated
    # A sample without any plasma cell: the zero must be a row, not a gap.
    obs = obs[~((obs["sample"] == "D3_post") & (obs["lineage"] == "plasma"))]
    props = composition.cell_counts(obs, "lineage", meta, CONTRAST)
    assert list(props.columns) == ["sample", "donor", "timepoint", "population", "n_cells", "proportion"]
    lineages = sorted(obs["lineage"].unique())
    assert len(lineages) == 10
    assert len(props) == len(meta) * len(lineages)
    # sample in sheet order, then population sorted
    assert list(props["sample"].drop_duplicates()) == list(meta.index)
    assert list(props.loc[props["sample"] == "D1_pre", "population"]) == lineages
    zero = props[(props["sample"] == "D3_post") & (props["population"] == "plasma")]
    assert len(zero) == 1 and zero["n_cells"].item() == 0 and zero["proportion"].item() == 0.0
    per_sample = props.groupby("sample", sort=False)
    np.testing.assert_allclose(per_sample["proportion"].sum(), 1.0)
    assert per_sample["n_cells"].sum().to_dict() == obs["sample"].value_counts().to_dict()
    expected = pd.crosstab(obs["sample"], obs["lineage"]).stack()
    got = props.set_index(["sample", "population"])["n_cells"]
    assert (got.loc[expected.index] == expected).all()
    assert (
        props.loc[props["sample"] == "D2_post", ["donor", "timepoint"]].drop_duplicates().to_numpy() == [["D2", "post"]]
    ).all()


def test_cell_counts_without_a_donor_column_and_with_unknown_samples(treated):
    obs, meta = treated
    props = composition.cell_counts(obs, "lineage", meta.drop(columns="donor"), CONTRAST)
    assert (props["donor"] == "").all()
    with pytest.raises(ValueError, match="D1_pre"):
        composition.cell_counts(obs, "lineage", meta.drop(index="D1_pre"), CONTRAST)


# --- the paired test on simulated data -----------------------------------------------------------


def test_il7_raises_t_cell_shares_and_lowers_cd14_mono_share(treated):
    obs, meta = treated
    result = composition.paired_composition_test(composition.cell_counts(obs, "lineage", meta, CONTRAST), CONTRAST)
    assert list(result.columns) == TEST_COLUMNS
    assert sorted(result["population"]) == sorted(obs["lineage"].unique())
    table = result.set_index("population")
    for lineage in ("CD4 T", "CD8 T"):
        assert table.loc[lineage, "log2_ratio"] > 0
        assert table.loc[lineage, "mean_post"] > table.loc[lineage, "mean_pre"]
        assert table.loc[lineage, "padj"] < 0.05
    # Monocytes keep their absolute number in the simulation: only their share falls.
    assert table.loc["CD14 mono", "log2_ratio"] < 0
    assert (result["n_pairs"] == 5).all()
    assert (result["test"] == "paired logit t-test, donor as block").all()
    assert result["note"].str.contains(RELATIVE, regex=False).all()
    p = result["pvalue"].to_numpy()
    assert np.isfinite(p).all() and (np.diff(p) >= 0).all()


@pytest.mark.parametrize("level", ["lineage", "cell_type"])
def test_null_twin_calls_no_composition_change(null, level):
    obs, meta = null
    result = composition.paired_composition_test(composition.cell_counts(obs, level, meta, CONTRAST), CONTRAST)
    assert len(result) == obs[level].nunique()
    assert result["padj"].notna().all()  # tested, not skipped
    assert not (result["padj"] < 0.05).any(), result[result["padj"] < 0.05]


def test_a_donor_missing_its_post_sample_leaves_four_pairs(treated):
    obs, meta = treated
    obs = obs[obs["sample"] != "D5_post"]
    for sheet in (meta.drop(index="D5_post"), meta):  # sample gone, or listed but without cells
        props = composition.cell_counts(obs, "lineage", sheet, CONTRAST)
        result = composition.paired_composition_test(props, CONTRAST)
        assert (result["n_pairs"] == 4).all()
        assert result["pvalue"].notna().all()
        assert result["note"].str.contains("D5_pre").all()
        assert (result.set_index("population").loc[["CD4 T", "CD8 T"], "log2_ratio"] > 0).all()
    assert props.loc[props["sample"] == "D5_post", "proportion"].isna().all()
    assert result["note"].str.contains("without cells ignored: D5_post").all()


def test_fewer_than_min_pairs_gives_nan_with_a_reason(treated):
    obs, meta = treated
    props = composition.cell_counts(obs, "lineage", meta, CONTRAST)
    two = props[props["donor"].isin(["D1", "D2"])]
    result = composition.paired_composition_test(two, CONTRAST, min_pairs=3)
    assert (result["n_pairs"] == 2).all()
    assert result["pvalue"].isna().all() and result["padj"].isna().all()
    assert result["note"].str.contains("min_pairs=3").all()
    assert result["note"].str.contains(RELATIVE, regex=False).all()
    assert result["mean_pre"].notna().all()  # still described, only not tested
    assert composition.paired_composition_test(two, CONTRAST, min_pairs=2)["pvalue"].notna().all()


def test_no_pairing_falls_back_to_an_unpaired_welch_test(treated):
    obs, meta = treated
    props = composition.cell_counts(obs, "lineage", meta, CONTRAST)
    unpaired = props.assign(donor=props["sample"])  # every sample its own donor
    no_column = props.drop(columns="donor")
    for table in (unpaired, no_column):
        result = composition.paired_composition_test(table, CONTRAST)
        assert (result["test"] == "unpaired fallback (no donor pairs)").all()
        assert (result["n_pairs"] == 0).all()
        assert result["note"].str.contains("Welch").all()
        assert result["note"].str.contains(RELATIVE, regex=False).all()
    cd4 = props[props["population"] == "CD4 T"]
    totals = props.groupby("sample")["n_cells"].sum().loc[cd4["sample"]].to_numpy()
    p = (cd4["n_cells"].to_numpy() + 0.5) / (totals + 1)
    logit = np.log(p / (1 - p))
    post = (cd4["timepoint"] == "post").to_numpy()
    expected = stats.ttest_ind(logit[post], logit[~post], equal_var=False).pvalue
    got = result.set_index("population").loc["CD4 T", "pvalue"]
    assert got == pytest.approx(expected, rel=1e-10)


# --- exact arithmetic on a hand-made table -----------------------------------------------------

HAND = {  # sample: (donor, timepoint, {cell type: cells})
    "A_pre": ("A", "pre", {"T": 40, "mono": 50, "B": 10}),
    "A_post": ("A", "post", {"T": 60, "mono": 35, "B": 5}),
    "B_pre": ("B", "pre", {"T": 30, "mono": 60, "B": 10}),
    "B_post": ("B", "post", {"T": 55, "mono": 40, "B": 5}),
    "C_pre": ("C", "pre", {"T": 90, "mono": 100, "B": 10}),
    "C_post": ("C", "post", {"T": 120, "mono": 70, "B": 0}),
}


def hand_props(samples: dict = HAND) -> pd.DataFrame:
    rows = []
    for sample, (donor, timepoint, counts) in samples.items():
        total = sum(counts.values())
        for cell_type, n in sorted(counts.items()):
            rows.append(
                {
                    "sample": sample,
                    "donor": donor,
                    "timepoint": timepoint,
                    "population": cell_type,
                    "n_cells": n,
                    "proportion": n / total,
                }
            )
    return pd.DataFrame(rows)


def hand_values(cell_type: str, timepoint: str, transform: str) -> np.ndarray:
    out = []
    for donor in "ABC":
        counts = HAND[f"{donor}_{timepoint}"][2]
        n, total = counts[cell_type], sum(counts.values())
        if transform == "logit":
            p = (n + 0.5) / (total + 1)
            out.append(np.log(p / (1 - p)))
        else:
            out.append(np.arcsin(np.sqrt(n / total)))
    return np.array(out)


@pytest.mark.parametrize("transform", ["logit", "asin_sqrt"])
def test_paired_test_equals_a_paired_t_test_on_transformed_proportions(transform):
    result = composition.paired_composition_test(hand_props(), CONTRAST, transform=transform)
    table = result.set_index("population")
    pvalues = {}
    for cell_type in ("B", "T", "mono"):
        expected = stats.ttest_rel(
            hand_values(cell_type, "post", transform), hand_values(cell_type, "pre", transform)
        ).pvalue
        assert table.loc[cell_type, "pvalue"] == pytest.approx(expected, rel=1e-9)
        pvalues[cell_type] = expected
    # Benjamini-Hochberg by hand over the three cell types
    ordered = sorted(pvalues.items(), key=lambda kv: kv[1])
    m, running = len(ordered), 1.0
    for rank in range(m, 0, -1):
        cell_type, p = ordered[rank - 1]
        running = min(running, p * m / rank)
        assert table.loc[cell_type, "padj"] == pytest.approx(running, rel=1e-9)
    assert list(result["population"]) == [c for c, _ in ordered]
    # means over samples of raw proportions, and their log2 ratio
    t_pre = np.mean([40 / 100, 30 / 100, 90 / 200])
    t_post = np.mean([60 / 100, 55 / 100, 120 / 190])
    assert table.loc["T", "mean_pre"] == pytest.approx(t_pre)
    assert table.loc["T", "mean_post"] == pytest.approx(t_post)
    assert table.loc["T", "log2_ratio"] == pytest.approx(np.log2(t_post / t_pre), abs=1e-5)
    assert (table["n_pairs"] == 3).all()
    label = "logit" if transform == "logit" else "arcsin-sqrt"
    assert (table["test"] == f"paired {label} t-test, donor as block").all()


def test_other_timepoints_are_ignored_and_a_filtered_table_is_refused():
    base = composition.paired_composition_test(hand_props(), CONTRAST)
    extra = hand_props({**HAND, "A_wk4": ("A", "wk4", {"T": 99, "mono": 1, "B": 0})})
    pd.testing.assert_frame_equal(composition.paired_composition_test(extra, CONTRAST), base)
    filtered = hand_props()
    filtered = filtered[filtered["population"] != "B"]  # totals would silently shrink
    with pytest.raises(ValueError, match="full cell_counts table"):
        composition.paired_composition_test(filtered, CONTRAST)


def test_custom_contrast_names_the_mean_columns():
    props = hand_props().rename(columns={"timepoint": "visit", "donor": "patient"})
    props["visit"] = props["visit"].map({"pre": "baseline", "post": "day28"})
    contrast = Contrast(column="visit", reference="baseline", treated="day28", pair_by="patient")
    result = composition.paired_composition_test(props, contrast)
    assert list(result.columns[2:4]) == ["mean_baseline", "mean_day28"]
    assert (result["test"] == "paired logit t-test, patient as block").all()
    assert result["pvalue"].notna().all()


# --- figures -------------------------------------------------------------------------------------


def test_figures_are_written_deterministically_and_say_proportions_are_relative(treated, tmp_path, monkeypatch):
    obs, meta = treated
    obs = obs[obs["sample"] != "D5_post"]  # a lone point must not break the line figure
    props = composition.cell_counts(obs, "lineage", meta.drop(index="D5_post"), CONTRAST)
    result = composition.paired_composition_test(props, CONTRAST)
    texts: list[str] = []
    save = composition_plots.save

    def recording_save(fig, paths):
        texts.append(" ".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))))
        save(fig, paths)

    monkeypatch.setattr(composition_plots, "save", recording_save)
    for name in ("bars", "lines"):
        for run in (1, 2):
            paths = [tmp_path / f"{name}{run}.png", tmp_path / f"{name}{run}.pdf"]
            if name == "bars":
                composition_plots.stacked_bar_figure(props, CONTRAST, paths)
            else:
                composition_plots.paired_lines_figure(props, result, CONTRAST, paths)
            for path in paths:
                assert path.exists() and path.stat().st_size > 1000
        png1, png2 = (tmp_path / f"{name}1.png").read_bytes(), (tmp_path / f"{name}2.png").read_bytes()
        assert png1.startswith(b"\x89PNG") and png1 == png2
    assert len(texts) == 4 and all(RELATIVE in t for t in texts)
    padj = result.set_index("population").loc["CD4 T", "padj"]
    assert f"CD4 T\n4 pairs, padj {padj:.2g}" in texts[2]
