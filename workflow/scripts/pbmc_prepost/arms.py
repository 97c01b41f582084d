"""Difference of changes between two arms: each donor's change, compared between the arms.

A two-arm contrast (config ``contrasts[].versus_arm``) asks whether cells changed more under the
treatment than under the control: the change in ``arm`` minus the change in ``versus_arm``. In
critically ill patients much changes without any drug (monocyte HLA-DR recovers as sepsis
resolves, interferon tone fades); the control arm's change is that course, and only the excess is
the drug's. The unit is the donor: one change per donor (treated minus reference), compared
between the arms by least squares, ``change ~ arm + donor-level covariates`` (a two-sample t-test
when there are no covariates). The pseudobulk DE fits the same question as the arm x time
interaction of ``~donor + time + time:arm`` (:func:`pbmc_prepost.de_design.choose_design`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import statsmodels.api as sm

from pbmc_prepost.design import Contrast


def donor_changes(values: pd.DataFrame, contrast: Contrast, value: str) -> pd.DataFrame:
    """Each donor's change (treated minus reference) of ``value``, with the donor's arm.

    Parameters
    ----------
    values
        One row per sample (or per sample x group, with the group in the index of the caller's
        groupby): columns ``contrast.pair_by``, ``contrast.column``, ``contrast.arm_column`` and
        ``value``. Several samples of one donor and level are averaged.
    contrast
        A two-arm contrast.
    value
        The column to difference.

    Returns
    -------
    pandas.DataFrame
        Index = donors with both levels in one of the contrast's arms; columns ``arm``,
        ``reference``, ``treated`` (the donor's means) and ``change``.
    """
    table = values.copy()
    table = table[table[contrast.pair_by].astype(str) != ""]
    table = table[contrast.sample_mask(table)]
    means = table.groupby([table[contrast.pair_by].astype(str), table[contrast.column].astype(str)])[value].mean()
    wide = means.unstack().reindex(columns=list(contrast.levels)).dropna()
    arm_of = table.groupby(table[contrast.pair_by].astype(str))[contrast.arm_column].first().astype(str)
    out = pd.DataFrame(
        {
            "arm": arm_of.reindex(wide.index).to_numpy(),
            "reference": wide[contrast.reference].to_numpy(dtype=float),
            "treated": wide[contrast.treated].to_numpy(dtype=float),
        },
        index=wide.index,
    )
    out["change"] = out["treated"] - out["reference"]
    return out


def compare_changes(
    changes: pd.DataFrame, contrast: Contrast, min_pairs: int, covariates: pd.DataFrame | None = None
) -> dict:
    """Test the difference of the arms' mean changes.

    Parameters
    ----------
    changes
        :func:`donor_changes` (``arm`` and ``change`` per donor).
    contrast
        ``arm`` (treated arm) and ``versus_arm`` (control arm).
    min_pairs
        Fewest donors with a change in each arm for a p-value.
    covariates
        Optional donor-level covariates (index = donor); factors are dummy-coded, numbers enter
        as slopes; a covariate constant over the donors is left out and named in ``note``.

    Returns
    -------
    dict
        ``n_arm``, ``n_versus_arm`` (donors per arm), ``change_arm``, ``change_versus_arm`` (mean
        changes), ``difference`` (the arm coefficient: difference of changes, adjusted for the
        covariates), ``t``, ``pvalue`` (NaN when not testable), ``note`` (why not, the test in words).
    """
    arm, versus = contrast.arm, contrast.versus_arm
    in_arm = changes["arm"] == arm
    in_versus = changes["arm"] == versus
    data = changes[in_arm | in_versus]
    n_arm, n_versus = int(in_arm.sum()), int(in_versus.sum())
    result = {
        "n_arm": n_arm,
        "n_versus_arm": n_versus,
        "change_arm": float(changes.loc[in_arm, "change"].mean()) if n_arm else math.nan,
        "change_versus_arm": float(changes.loc[in_versus, "change"].mean()) if n_versus else math.nan,
        "difference": math.nan,
        "t": math.nan,
        "pvalue": math.nan,
        "note": "",
    }
    words = f"donors' changes compared between arms ({n_arm} {arm}, {n_versus} {versus})"
    if min(n_arm, n_versus) < max(min_pairs, 2):
        result["note"] = f"{words}: fewer than {max(min_pairs, 2)} donors with both levels in an arm, not tested"
        return result
    columns = [np.ones(len(data)), (data["arm"] == arm).to_numpy(dtype=float)]
    used, left_out = [], []
    for name in covariates.columns if covariates is not None else []:
        values = covariates[name].reindex(data.index)
        number = pd.to_numeric(values, errors="coerce")
        block = number.to_numpy(dtype=float)[:, None] if number.notna().all() else None
        if block is None:
            block = pd.get_dummies(values.astype(str), drop_first=True, dtype=float).to_numpy()
        trial = np.column_stack([*columns, block]) if block.size else None
        if trial is None or np.linalg.matrix_rank(trial) < trial.shape[1] or len(data) - trial.shape[1] < 1:
            left_out.append(name)
            continue
        columns = list(trial.T)
        used.append(name)
    design = np.column_stack(columns)
    y = data["change"].to_numpy(dtype=float)
    fit = sm.OLS(y, design).fit()
    result["difference"] = float(fit.params[1])
    notes = [words + (f", adjusted for {', '.join(used)}" if used else "")]
    if left_out:
        notes.append(f"covariate(s) {', '.join(left_out)} left out (not estimable at the donor level)")
    if fit.df_resid < 1 or fit.ssr <= 1e-20 * max(1.0, float(np.sum((y - y.mean()) ** 2))):
        notes.append("no residual variance: not tested")
    else:
        result["t"], result["pvalue"] = float(fit.tvalues[1]), float(fit.pvalues[1])
    result["note"] = "; ".join(notes)
    return result


def donor_covariates(meta: pd.DataFrame, contrast: Contrast) -> pd.DataFrame | None:
    """The contrast's covariates that are constant within every donor, one row per donor (None when
    there are none): only these can enter a model of donors' changes."""
    names: Sequence[str] = [c for c in contrast.covariates if c in meta.columns]
    if not names:
        return None
    table = meta[meta[contrast.pair_by].astype(str) != ""]
    donor = table[contrast.pair_by].astype(str)
    constant = [c for c in names if (table.groupby(donor)[c].nunique() <= 1).all()]
    if not constant:
        return None
    return table.groupby(donor)[constant].first()
