"""The sheet's trial-design columns: each donor's arm and the covariates, checked against the
contrasts, and what each contrast rests on (complete donors per arm)."""

from __future__ import annotations

import pandas as pd

from pbmc_prepost.design import Design


def check_design_columns(table: pd.DataFrame, lines: dict[str, int], design: Design, msgs) -> None:
    """Arms and covariates: filled in, one arm per donor, the contrasts' arms present.

    ``msgs`` collects the problems and warnings (:class:`pbmc_prepost.samplesheet._Messages`)."""
    pair = design.pair_by
    has_pair = pair in table.columns and (table[pair] != "").any()
    if design.arm:
        for sample in table.index[table[design.arm] == ""]:
            msgs.problem(
                f"empty '{design.arm}' (the arm, config `design.arm`)",
                f"fill in the arm of this sample's {pair}",
                lines[sample],
                str(sample),
            )
        if has_pair:
            with_arm = table[(table[design.arm] != "") & (table[pair] != "")]
            for donor, group in with_arm.groupby(pair, sort=True):
                arms = list(dict.fromkeys(group[design.arm]))
                if len(arms) > 1:
                    other = group.index[group[design.arm] != arms[0]][0]
                    msgs.problem(
                        f"{pair} '{donor}' is in two arms ({', '.join(repr(a) for a in arms)}; line "
                        f"{lines[group.index[0]]} says '{arms[0]}')",
                        f"give every sample of a {pair} the same {design.arm}",
                        lines[other],
                        str(other),
                    )
        present = set(table[design.arm])
        for c in design.contrasts:
            for key, arm in (("arm", c.arm), ("versus_arm", c.versus_arm)):
                if arm is not None and arm not in present:
                    msgs.problem(
                        f"contrast {c.name} names {key} '{arm}' but no sample has {design.arm} '{arm}' "
                        f"(arms found: {', '.join(repr(a) for a in sorted(present - {''})) or 'none'})",
                        f"correct the contrast's {key} in the config, or the sheet's {design.arm} values",
                    )
    for covariate in design.covariates:
        for sample in table.index[table[covariate] == ""]:
            msgs.problem(
                f"empty covariate '{covariate}' (config `design.covariates`)",
                "fill it in for every sample, or remove the covariate from the config",
                lines[sample],
                str(sample),
            )
        if has_pair:
            varying = table[table[pair] != ""].groupby(pair)[covariate].nunique()
            varying = sorted(varying.index[varying > 1])
            if varying:
                msgs.warn(
                    f"covariate '{covariate}' varies within {pair} {', '.join(map(str, varying[:5]))}"
                    f"{' ...' if len(varying) > 5 else ''}: it enters the pseudobulk DE model per sample; the "
                    f"donor-level tests of a two-arm contrast leave it out",
                    "nothing, if it is a per-sample covariate; otherwise correct the values",
                )


def contrast_support(samples: pd.DataFrame, design: Design) -> pd.DataFrame:
    """Complete donors of every contrast, per arm.

    Parameters
    ----------
    samples
        The validated sheet (:attr:`SheetReport.samples`).
    design
        Design with its contrasts.

    Returns
    -------
    pandas.DataFrame
        One row per contrast: ``contrast``, ``description``, ``arm`` (the arms it uses, or 'all'),
        ``n_donors`` (complete donors: both levels, in one of its arms), ``donors_per_arm`` (text,
        e.g. ``IL7: 8; placebo: 8``) and ``min_donors_per_arm``.
    """
    rows = []
    pair = design.pair_by
    for c in design.contrasts:
        arms = c.arms or ("all",)
        per_arm = c.pairs_per_arm(samples) if pair in samples.columns else dict.fromkeys(arms, 0)
        rows.append(
            {
                "contrast": c.name,
                "description": c.describe(),
                "arm": " vs ".join(arms),
                "n_donors": sum(per_arm.values()),
                "donors_per_arm": "; ".join(f"{a}: {n}" for a, n in per_arm.items()),
                "min_donors_per_arm": min(per_arm.values()),
            }
        )
    return pd.DataFrame(rows)
