"""The QC bias check: removed barcodes get their true lineage, and a removal rate that differs
between timepoints is found (and only then)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pbmc_prepost import marker_table, qc, qc_bias
from pbmc_prepost.design import Contrast
from pbmc_prepost.settings import QCSettings

from conftest import CONTRAST, ROOT, settings_of, study_of

MARKERS = marker_table.read_marker_table(ROOT / "resources" / "markers" / "pbmc_markers.tsv")


@pytest.fixture(scope="module")
def qc_of_four_samples(cohort):
    """QC of four samples of the shared cohort: passing and removed barcodes, with their truth."""
    settings = settings_of(QCSettings)
    results = {s: qc.run_sample_qc(cohort.samples[s], s, settings) for s in ["D1_pre", "D1_post", "D2_pre", "D2_post"]}
    truth = pd.concat(
        [cohort.samples[s].obs.assign(sample=s, barcode=cohort.samples[s].obs_names.astype(str)) for s in results]
    ).set_index(["sample", "barcode"])
    return results, truth


def test_removed_barcodes_take_the_lineage_of_their_true_population(qc_of_four_samples):
    results, truth = qc_of_four_samples
    genes = [g for g in MARKERS.genes(states=False) if g in results["D1_pre"].filtered.var_names]
    passing = ad.concat([r.filtered[:, genes] for r in results.values()])
    removed = ad.concat([r.removed[:, genes] for r in results.values()])
    key = lambda obs: list(zip(obs["sample"], obs["barcode"]))  # noqa: E731
    passing.obs["sample"] = passing.obs_names.str.split(":").str[0]
    passing_truth = truth.loc[key(passing.obs)]
    labels = qc_bias.label_removed_cells(passing.X, passing_truth["cell_type"].to_numpy(), removed.X)
    removed_truth = truth.loc[key(removed.obs)]
    dying = (removed_truth["is_dying"] & ~removed_truth["is_doublet"]).to_numpy()
    assert dying.sum() >= 50
    lineage = pd.Series(labels).map(MARKERS.lineage_of).fillna(qc_bias.UNLABELLED).to_numpy()
    gate = pd.Series(labels).map(MARKERS.identity["gate"]).to_numpy()
    true_gate = removed_truth["cell_type"].map(MARKERS.identity["gate"]).to_numpy()
    labelled = lineage != qc_bias.UNLABELLED
    # Dying cells keep a median of about 5 marker UMIs: most carry enough to be labelled; their
    # compartment (T, NK, B, monocytes, DC ...) is nearly always right, CD4 vs CD8 T less often.
    assert labelled[dying].mean() > 0.6
    both = dying & labelled
    assert (gate[both] == true_gate[both]).mean() > 0.85
    assert (lineage[both] == removed_truth["lineage"].to_numpy()[both]).mean() > 0.7


def removal_cohort(rates: dict[tuple[str, str], float], n_donors: int = 6, cells: int = 400, seed: int = 0):
    """A removal table as :func:`qc_bias.removal_table` writes it: per donor, timepoint and
    population, removed cells drawn at ``rates[(population, timepoint)]``; donors differ in their
    baseline (a donor effect the pairing absorbs)."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(n_donors):
        donor_effect = rng.normal(0, 0.3)
        for timepoint in ("pre", "post"):
            for population in ("CD4 T", "CD14 mono", "NK"):
                logit = np.log(rates[population, timepoint] / (1 - rates[population, timepoint])) + donor_effect
                n_before = int(rng.integers(cells // 2, cells))
                removed = rng.binomial(n_before, 1 / (1 + np.exp(-logit)))
                rows.append(
                    {
                        "level": "lineage",
                        "sample": f"D{d}_{timepoint}",
                        "donor": f"D{d}",
                        "timepoint": timepoint,
                        "population": population,
                        "cells_before_qc": n_before,
                        "removed": removed,
                    }
                )
    return pd.DataFrame(rows)


def test_a_population_removed_more_after_treatment_is_found_and_noted():
    rates = {(p, t): 0.08 for p in ("CD4 T", "CD14 mono", "NK") for t in ("pre", "post")}
    rates["CD14 mono", "post"] = 0.25  # e.g. a mitochondrial ceiling that bites only after treatment
    test = qc_bias.removal_test(removal_cohort(rates), CONTRAST, min_pairs=3).set_index("population")
    assert bool(test.at["CD14 mono", "differs"]) and not test.drop("CD14 mono")["differs"].any()
    assert test.at["CD14 mono", "pct_removed_post"] > test.at["CD14 mono", "pct_removed_pre"] + 10
    notes = qc_bias.bias_notes(test.reset_index(), CONTRAST)
    assert list(notes["lineage"]) == ["CD14 mono"] and "removal_test.tsv" in notes["lineage"]["CD14 mono"]


def test_equal_removal_rates_give_no_call_across_many_null_cohorts():
    rates = {(p, t): 0.1 for p in ("CD4 T", "CD14 mono", "NK") for t in ("pre", "post")}
    calls = [qc_bias.removal_test(removal_cohort(rates, seed=s), CONTRAST, 3)["differs"].any() for s in range(40)]
    # Three populations per cohort at FDR 5 %: a call in at most a few of 40 null cohorts.
    assert sum(calls) <= 5, sum(calls)


INTERACTION = Contrast("timepoint", "pre", "post", "donor", "il7_vs_placebo", "arm", "IL7", "placebo")
WITHIN_IL7 = Contrast("timepoint", "pre", "post", "donor", "within_il7", "arm", "IL7")


def two_arm_cohort(mono_post_il7: float, mono_post_placebo: float, seed: int = 0) -> pd.DataFrame:
    """Donors D0-D7 on IL-7, D8-D15 on placebo; CD14 monocytes removed at 8 % before and at the
    given rates after treatment, every other population at 8 %."""
    rates = {(p, t): 0.08 for p in ("CD4 T", "CD14 mono", "NK") for t in ("pre", "post")}
    frames = []
    for arm, post, offset in (("IL7", mono_post_il7, 0), ("placebo", mono_post_placebo, 8)):
        table = removal_cohort(rates | {("CD14 mono", "post"): post}, n_donors=8, seed=seed + offset)
        rename = {f"D{d}": f"D{d + offset}" for d in range(8)}
        table["donor"] = table["donor"].map(rename)
        table["sample"] = table["donor"] + "_" + table["timepoint"]
        frames.append(table.assign(arm=arm))
    return pd.concat(frames, ignore_index=True)


def test_a_removal_change_shared_by_both_arms_is_noted_within_arms_but_not_against_placebo():
    """Handling that lost monocytes after treatment in both arms alike biases each arm's change,
    not the difference of changes; a loss only under IL-7 biases the difference too."""
    tests = qc_bias.removal_tests(two_arm_cohort(0.25, 0.25), [INTERACTION, WITHIN_IL7], 3, 0.05, 0.1)
    differs = tests[tests["differs"]]
    assert list(zip(differs["contrast"], differs["population"])) == [("within_il7", "CD14 mono")]
    assert list(tests.columns[:6]) == [
        "contrast",
        "level",
        "population",
        "n_pairs",
        "pct_removed_pre",
        "pct_removed_post",
    ]
    mono = tests.set_index(["contrast", "population"]).loc[("il7_vs_placebo", "CD14 mono")]
    assert mono["n_pairs"] == 16 and abs(mono["share_change_from_qc"]) < 0.05
    only_il7 = qc_bias.removal_tests(two_arm_cohort(0.25, 0.08), [INTERACTION], 3, 0.05, 0.1)
    mono = only_il7.set_index("population").loc["CD14 mono"]
    assert bool(mono["differs"]) and mono["share_change_from_qc"] < -0.1 and "between arms" in mono["note"]
    note = qc_bias.bias_notes(only_il7, INTERACTION)["lineage"]["CD14 mono"]
    assert "differs between IL7 and placebo" in note and "difference of changes" in note
    assert qc_bias.bias_notes(only_il7, WITHIN_IL7) == {}


def test_too_few_pairs_and_unlabelled_barcodes_are_reported_not_tested():
    rates = {(p, t): 0.1 for p in ("CD4 T", "CD14 mono", "NK") for t in ("pre", "post")}
    table = removal_cohort(rates, n_donors=2)
    table.loc[table["population"] == "NK", "population"] = qc_bias.UNLABELLED
    test = qc_bias.removal_test(table, Contrast("timepoint", "pre", "post", "donor"), min_pairs=3)
    assert test["pvalue"].isna().all() and not test["differs"].any()
    assert test.set_index("population").at[qc_bias.UNLABELLED, "note"].startswith("barcodes with fewer")


def test_removal_table_counts_every_filter_and_keeps_absent_populations(cells, cohort):
    study = study_of(cohort)
    barcodes = pd.DataFrame(
        {
            "sample": ["D1_pre"] * 4 + ["D1_post"] * 2,
            "lineage": ["B", "B", "NK", "B", "B", "B"],
            "cell_type": ["B naive"] * 2 + ["NK CD56dim"] + ["B naive"] * 3,
            "qc_pass": [True, False, False, True, True, False],
            "fail_reason": ["", "high_pct_mt;low_counts", "doublet", "", "", "low_counts"],
        }
    )
    table = qc_bias.removal_table(barcodes, study.sample_meta(), study.contrast)
    lineage = table[table["level"] == "lineage"].set_index(["sample", "population"])
    assert lineage.at[("D1_pre", "B"), "cells_before_qc"] == 3 and lineage.at[("D1_pre", "B"), "removed"] == 1
    assert (
        lineage.at[("D1_pre", "B"), "removed_high_pct_mt"] == 1
        and lineage.at[("D1_pre", "B"), "removed_low_counts"] == 1
    )
    assert lineage.at[("D1_post", "NK"), "cells_before_qc"] == 0  # absent, still listed
    assert lineage.at[("D1_pre", "NK"), "removed_doublet"] == 1 and lineage.at[("D1_post", "B"), "pct_removed"] == 50.0
