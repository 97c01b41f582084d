"""Per-sample QC logic: MAD bounds, thresholds, failure reasons, doublets, on data with known truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pbmc_prepost import qc
from pbmc_prepost.settings import QCSettings, default_config

from conftest import settings_of

DEFAULTS = settings_of(QCSettings)


def test_mad_bounds_use_the_unscaled_mad():
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    low, high = qc.mad_bounds(values, 2)
    # median 3, absolute deviations 2,1,0,1,97 -> MAD 1
    assert (low, high) == (1.0, 5.0)


def test_mad_bounds_of_a_constant_metric_flag_nothing_inside():
    low, high = qc.mad_bounds(np.full(10, 4.0), 5)
    assert low == high == 4.0


def obs_frame(total, genes, top, mt):
    return pd.DataFrame(
        {
            "total_counts": total,
            "log1p_total_counts": np.log1p(total),
            "n_genes_by_counts": genes,
            "log1p_n_genes_by_counts": np.log1p(genes),
            "pct_counts_in_top_20_genes": top,
            "pct_counts_mt": mt,
        }
    )


def test_thresholds_combine_mad_and_absolute_limits():
    rng = np.random.default_rng(0)
    n = 500
    obs = obs_frame(
        np.exp(rng.normal(8, 0.3, n)),
        np.exp(rng.normal(7, 0.2, n)),
        rng.normal(30, 3, n),
        rng.normal(3, 0.5, n).clip(0),
    )
    settings = DEFAULTS._replace(min_counts=2500, max_pct_mt=4.0)
    thresholds = qc.metric_thresholds(obs, settings)
    assert thresholds["min_total_counts"] == 2500  # absolute floor above the MAD bound
    assert thresholds["max_pct_mt"] == 4.0  # absolute ceiling below median + 3 MADs
    failures = qc.metric_failures(obs, thresholds)
    assert failures["low_counts"].sum() == (obs["total_counts"] < 2500).sum()
    assert failures["high_pct_mt"].sum() == (obs["pct_counts_mt"] > 4.0).sum()


def test_mito_outliers_are_flagged_per_sample_not_pooled():
    # Sample A has a low mito baseline and 5 % damaged cells at 5 %; sample B sits at 6 %.
    # Per sample, A's damaged cells stand out; pooled with B they hide inside a wide MAD.
    rng = np.random.default_rng(1)
    mt_a = np.concatenate([rng.normal(2, 0.2, 285), np.full(15, 5.0)])
    a = obs_frame(np.full(300, 3000.0), np.full(300, 1000.0), np.full(300, 30.0), mt_a)
    b = obs_frame(np.full(300, 3000.0), np.full(300, 1000.0), np.full(300, 30.0), rng.normal(6, 0.3, 300))
    settings = DEFAULTS
    damaged = np.arange(300) >= 285
    per_sample = qc.metric_failures(a, qc.metric_thresholds(a, settings))["high_pct_mt"].to_numpy()
    pooled = pd.concat([a, b], ignore_index=True)
    pooled_calls = qc.metric_failures(a, qc.metric_thresholds(pooled, settings))["high_pct_mt"].to_numpy()
    assert per_sample[damaged].all() and per_sample[~damaged].mean() < 0.05
    assert not pooled_calls[damaged].any()


def healthy_and_damaged(median_mt: float, n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """A sample as real PBMC look: healthy cells log-normal around ``median_mt`` % mitochondrial
    (spread 0.3: about 3-8 % around 5 %), 5 % damaged cells at 20-60 %."""
    rng = np.random.default_rng(seed)
    damaged = np.arange(n) >= int(0.95 * n)
    mt = median_mt * np.exp(rng.normal(0, 0.3, n))
    mt[damaged] = rng.uniform(20, 60, damaged.sum())
    obs = obs_frame(np.exp(rng.normal(8, 0.3, n)), np.exp(rng.normal(7, 0.2, n)), rng.normal(30, 3, n), mt)
    return obs, damaged


def test_default_mito_rule_treats_a_high_baseline_batch_like_the_others():
    # Two batches of healthy cells at median 5.5 % and 6.9 % mitochondrial (the case of a fixed
    # 8 % ceiling that removed 36 % of one batch and 16 % of the other).
    removed = {}
    for median_mt, seed in ((5.5, 2), (6.9, 3)):
        obs, damaged = healthy_and_damaged(median_mt, 2000, seed)
        failed = qc.metric_failures(obs, qc.metric_thresholds(obs, DEFAULTS))["high_pct_mt"].to_numpy()
        assert failed[damaged].all()  # the damaged cells still go
        removed[median_mt] = failed[~damaged].mean()
    assert max(removed.values()) < 0.05 and abs(removed[5.5] - removed[6.9]) < 0.02, removed
    # The old fixed ceiling, for contrast: it is what made the batches differ.
    obs, damaged = healthy_and_damaged(6.9, 2000, 3)
    old = qc.metric_failures(obs, qc.metric_thresholds(obs, DEFAULTS._replace(max_pct_mt=8)))["high_pct_mt"]
    assert old.to_numpy()[~damaged].mean() > 0.2


def test_default_mito_ceiling_costs_a_high_baseline_sample_almost_nothing():
    # Healthy cells at a median of 8 %: the ceiling alone (MAD rule switched off) takes < 1 %.
    obs, damaged = healthy_and_damaged(8.0, 4000, 4)
    thresholds = qc.metric_thresholds(obs, DEFAULTS._replace(nmads_mt=1e6))
    failed = qc.metric_failures(obs, thresholds)["high_pct_mt"].to_numpy()
    assert thresholds["max_pct_mt"] == DEFAULTS.max_pct_mt
    assert failed[~damaged].mean() < 0.01 and failed[damaged].mean() > 0.9


def test_broken_sample_is_caught_by_the_ceiling_and_named_in_a_warning(caplog):
    # Most cells damaged: the MAD bound widens with them, the ceiling still removes them, and the
    # filter's share is named with its threshold.
    obs, _ = healthy_and_damaged(6.0, 1000, 5)
    obs.loc[:599, "pct_counts_mt"] = np.random.default_rng(6).uniform(25, 60, 600)
    thresholds = qc.metric_thresholds(obs, DEFAULTS)
    failures = qc.metric_failures(obs, thresholds)
    assert thresholds["max_pct_mt"] == DEFAULTS.max_pct_mt and failures["high_pct_mt"].mean() >= 0.6
    with caplog.at_level("WARNING"):
        warnings = qc.filter_warnings(failures, thresholds, "S1", DEFAULTS.warn_share_removed)
    assert len(warnings) == 1 and warnings[0].startswith("high_pct_mt removes 6")
    assert "max_pct_mt 20" in warnings[0] and "S1" in caplog.text and "qc.sample_overrides" in caplog.text
    healthy, _ = healthy_and_damaged(6.0, 1000, 7)
    thresholds = qc.metric_thresholds(healthy, DEFAULTS)
    assert qc.filter_warnings(qc.metric_failures(healthy, thresholds), thresholds, "S2", 0.15) == []


@pytest.fixture(scope="module")
def tiny_sample(cohort):
    """One raw sample of the shared cohort: every barcode, dying cells and doublets included."""
    return cohort.samples["D1_pre"]


def test_run_sample_qc_finds_planted_dying_cells_and_doublets(tiny_sample):
    result = qc.run_sample_qc(tiny_sample, "D1_pre", DEFAULTS)
    truth = tiny_sample.obs
    cells = result.cells.set_index("barcode").loc[truth.index]
    removed = ~cells["qc_pass"].to_numpy()
    assert removed[truth["is_dying"].to_numpy()].mean() >= 0.9
    assert removed[truth["is_doublet"].to_numpy()].mean() >= 0.5
    healthy = ~(truth["is_dying"] | truth["is_doublet"]).to_numpy()
    assert removed[healthy].mean() <= 0.08
    # The tables agree with the filtered object.
    assert result.summary["cells_out"] == result.filtered.n_obs == cells["qc_pass"].sum()
    assert list(result.cells.columns) == qc.CELL_TABLE_COLUMNS
    assert set(result.filtered.obs["barcode"]) == set(cells.index[cells["qc_pass"]])
    assert all(name.startswith("D1_pre:") for name in result.filtered.obs_names)
    reasons = set(";".join(result.cells["fail_reason"]).split(";")) - {""}
    assert reasons <= set(qc.FAIL_REASONS) and "high_pct_mt" in reasons and "doublet" in reasons


def test_run_sample_qc_is_deterministic_and_keeps_doublets_when_asked(tiny_sample):
    first = qc.run_sample_qc(tiny_sample, "s", DEFAULTS)
    again = qc.run_sample_qc(tiny_sample, "s", DEFAULTS)
    pd.testing.assert_frame_equal(first.cells, again.cells)
    kept = qc.run_sample_qc(tiny_sample, "s", DEFAULTS._replace(remove_doublets=False))
    assert kept.summary["failed_doublet"] == 0
    assert kept.cells["predicted_doublet"].sum() == first.cells["predicted_doublet"].sum() > 0
    # Calls at the expected rate: about 5 % of the cells scored.
    scored = first.cells["doublet_score"].notna().sum()
    assert abs(first.cells["predicted_doublet"].sum() - 0.05 * scored) <= 1


def test_sparse_scrublet_finds_the_same_doublets(tiny_sample):
    """doublets.mean_center=false (our default: Scrublet's sparse truncated-SVD pipeline) finds the
    planted doublets about as well as scanpy's default dense PCA (mean_center=true)."""
    recall, scores = {}, {}
    for mean_center in (True, False):
        settings = QCSettings.from_config(default_config(doublets={"mean_center": mean_center}))
        assert settings.mean_center is mean_center
        result = qc.run_sample_qc(tiny_sample, "D1_pre", settings)
        cells = result.cells.set_index("barcode").loc[tiny_sample.obs.index]
        recall[mean_center] = cells["predicted_doublet"].to_numpy()[tiny_sample.obs["is_doublet"].to_numpy()].mean()
        scores[mean_center] = cells["doublet_score"].to_numpy()
    assert not np.allclose(scores[True], scores[False], equal_nan=True)  # the option reaches Scrublet
    assert recall[False] >= 0.5 and abs(recall[False] - recall[True]) <= 0.15, recall


def test_small_sample_skips_doublet_calling_with_nan_scores(tiny_sample):
    small = tiny_sample[:60].copy()
    result = qc.run_sample_qc(small, "small", DEFAULTS._replace(min_cells_for_doublets=100))
    assert result.cells["doublet_score"].isna().all()
    assert not result.cells["predicted_doublet"].any()


def test_settings_from_config_apply_sample_overrides():
    config = default_config(
        qc={"max_pct_mt": 8, "sample_overrides": {"D3_post": {"max_pct_mt": 15}}}, doublets={"remove": False}, seed=3
    )
    settings = QCSettings.from_config(config, "D3_post")
    assert settings.max_pct_mt == 15 and settings.nmads_mt == 3
    assert settings.remove_doublets is False and settings.seed == 3
    assert QCSettings.from_config(config, "D1_pre").max_pct_mt == 8
