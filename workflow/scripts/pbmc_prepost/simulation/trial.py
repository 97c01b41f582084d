"""Trial designs in the simulator: a placebo arm, a disease course in both arms, several timepoints.

A placebo-controlled trial (``SimulationParams(n_placebo=8, disease_course=True)``) plants the
IL-7 effects only in the IL-7 arm and the disease course (:data:`biology.COURSE_MONO_EFFECTS`,
interferon down, a few dozen other genes, T cells up a little) in every donor. The truth says,
per contrast, which genes move in which population (:func:`expected_log2fc`), so that tests can
ask whether the difference of changes finds the drug and only the drug.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pbmc_prepost.simulation.biology import (
    COURSE_IFN_LOG2FC,
    COURSE_MONO_EFFECTS,
    COURSE_N_OTHER_GENES,
    COURSE_OTHER_LOG2FC,
    COURSE_T_EXPANSION,
    IFN_GENES,
    IL7_NK_EFFECTS,
    IL7_T_EFFECTS,
    LINEAGE,
    MONO_EFFECTS,
    T_SUBSETS,
)

#: Names of the two arms: treated first.
ARMS = ("IL7", "placebo")


def donor_arms(n_donors: int, n_placebo: int) -> list[str]:
    """Each donor's arm: placebo for donors 3-4, 7-8, ... (sexes alternate by donor, so both arms
    hold both sexes), then from the last donor down until ``n_placebo`` are placebo."""
    if not 0 <= n_placebo <= n_donors:
        raise ValueError(f"n_placebo must be between 0 and n_donors ({n_donors}), not {n_placebo}")
    placebo = [d for d in range(n_donors) if (d // 2) % 2 == 1][:n_placebo]
    for d in reversed(range(n_donors)):
        if len(placebo) >= n_placebo:
            break
        if d not in placebo:
            placebo.append(d)
    return [ARMS[1] if d in placebo else ARMS[0] for d in range(n_donors)]


def strengths(values: Sequence[float], n_timepoints: int) -> list[float]:
    """Effect strength per timepoint: the given values, or 0 at the first timepoint and 1 after."""
    if values:
        if len(values) != n_timepoints:
            raise ValueError(f"{len(values)} strengths given for {n_timepoints} timepoints")
        return [float(v) for v in values]
    return [0.0] + [1.0] * (n_timepoints - 1)


def course_genes(genes: pd.DataFrame, seed: int) -> dict[str, float]:
    """The other genes of the disease course (not named by any planted effect), with their log2 fold
    change: half up, half down, drawn from the fill genes with their own seed."""
    pool = genes.loc[~genes["named"].to_numpy(), "symbol"].to_numpy()
    rng = np.random.default_rng([seed, 7])
    chosen = rng.choice(pool, size=min(COURSE_N_OTHER_GENES, len(pool)), replace=False)
    return {str(g): COURSE_OTHER_LOG2FC * (1 if i % 2 == 0 else -1) for i, g in enumerate(sorted(chosen))}


def course_effects(genes: pd.DataFrame, other: dict[str, float]) -> np.ndarray:
    """log2 disease-course effect per subset x gene."""
    index = {g: i for i, g in enumerate(genes["symbol"])}
    subsets = list(LINEAGE)
    effect = np.zeros((len(subsets), len(index)))
    for k, subset in enumerate(subsets):
        table = {**other, **dict.fromkeys(IFN_GENES, COURSE_IFN_LOG2FC)}
        if subset == "CD14 mono":
            table.update(COURSE_MONO_EFFECTS)
        for g, fc in table.items():
            if g in index:
                effect[k, index[g]] = fc
    return effect


def course_expansion(subset: str) -> float:
    """Absolute expansion of a subset through the disease course alone."""
    return COURSE_T_EXPANSION if subset in T_SUBSETS else 1.0


def _drug_table(lineage: str) -> dict[str, float]:
    if lineage in ("CD4 T", "CD8 T", "other T"):
        return IL7_T_EFFECTS
    return {"NK": IL7_NK_EFFECTS, "CD14 mono": MONO_EFFECTS}.get(lineage, {})


def expected_log2fc(
    truth: dict, lineage: str, reference: str, treated: str, arm: str | None = None, versus_arm: str | None = None
) -> pd.Series:
    """The planted log2 fold change of every moving gene of one lineage, for one contrast.

    Parameters
    ----------
    truth
        ``SimulatedData.truth``.
    lineage
        A lineage (``CD4 T``, ``CD14 mono`` ...).
    reference, treated
        Timepoints compared.
    arm, versus_arm
        As in config ``contrasts``: only ``arm``'s donors, or the change in ``arm`` minus that in
        ``versus_arm``. Without ``arm``: over every donor, weighted by how many are in each arm.

    Returns
    -------
    pandas.Series
        gene -> expected log2 fold change (before per-donor response noise); genes that do not
        move are left out.
    """
    params = truth["params"]
    timepoints = list(params["timepoints"])
    t0, t1 = timepoints.index(reference), timepoints.index(treated)
    drug = truth["timepoint_strength"]["drug"]
    course = truth["timepoint_strength"]["course"]
    drug_table = pd.Series(_drug_table(lineage) if params["treatment_effect"] else {}, dtype=float)
    course_table = pd.Series(truth["course_log2fc"].get(lineage, truth["course_log2fc"].get("all", {})), dtype=float)
    arms = list(truth["donor_arms"].values())

    def change(in_arm: str | None) -> pd.Series:
        share_drug = (arms.count(ARMS[0]) / len(arms)) if in_arm is None else float(in_arm == ARMS[0])
        total = drug_table * share_drug * (drug[t1] - drug[t0])
        return total.add(course_table * (course[t1] - course[t0]), fill_value=0.0)

    fc = change(arm) - change(versus_arm) if versus_arm is not None else change(arm)
    return fc[fc.abs() > 1e-9].sort_index()
