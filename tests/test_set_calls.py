"""The headline call's multiplicity (pbmc_prepost.set_calls): the donor-level FDR is adjusted within
a set category over every population and contrast of the run, on hand-made p-values."""

from __future__ import annotations

import pandas as pd

from pbmc_prepost.genesets import GeneSetLibrary
from pbmc_prepost.set_calls import STRESS_SET, confirm_calls, donor_fdr_by_family

POPULATIONS = ["CD4 T", "CD8 T", "NK", "B", "CD14 mono", "CD16 mono", "DC", "platelets", "other T"]
CONTRASTS = ["il7_vs_placebo", "within_il7", "within_placebo"]
LIBRARY = GeneSetLibrary(
    {"IFN": ["A"], "MHCII": ["B"], STRESS_SET: ["C"]},
    pd.DataFrame({"category": ["context", "hypothesis", "artefact_control"]}, index=["IFN", "MHCII", STRESS_SET]),
)


def rows(pvalues: dict[tuple[str, str, str], float]) -> pd.DataFrame:
    """Every contrast x population x set, p 0.5 unless given, GSEA FDR 0 and both tests up."""
    frame = pd.DataFrame(
        [
            {"contrast": c, "population": p, "gene_set": s, "donor_pvalue": pvalues.get((c, p, s), 0.5)}
            for c in CONTRASTS
            for p in POPULATIONS
            for s in LIBRARY.sets
        ]
    )
    return frame.assign(fdr=0.0, NES=2.0, donor_shift=0.3, ambient_note="", stress_control="not tested")


def test_a_chance_shift_shared_by_one_arms_populations_is_not_called():
    """The null trial's pattern: interferon tone rose in one arm's 4 donors (p 0.01-0.04 in the
    populations they share); with a family per population each of these was a call."""
    shared = {("within_il7", p, "IFN"): q for p, q in zip(POPULATIONS[:4], [0.0096, 0.011, 0.017, 0.04])}
    gsea, _ = confirm_calls(rows(shared), pd.DataFrame(columns=["contrast", "population"]), LIBRARY, 0.05)
    assert (gsea["call"] == "ns").all()
    # Per population and contrast, the same p-values would each have been called.
    assert all(q < 0.05 for q in shared.values())


def test_a_strong_effect_is_called_and_carries_its_family_size():
    planted = {("il7_vs_placebo", "CD14 mono", "MHCII"): 1e-5, ("within_placebo", "CD14 mono", "MHCII"): 2e-4}
    table = rows(planted)
    fdr = donor_fdr_by_family(table, LIBRARY)
    # 27 hypothesis tests in the family: the smaller p-value times 27, the larger times 27 / 2.
    mono = (table["population"] == "CD14 mono") & (table["gene_set"] == "MHCII")
    by_contrast = fdr[mono].set_axis(table.loc[mono, "contrast"])
    assert (
        abs(by_contrast["il7_vs_placebo"] - 27e-5) < 1e-12
        and abs(by_contrast["within_placebo"] - 2e-4 * 27 / 2) < 1e-12
    )
    called, _ = confirm_calls(table, pd.DataFrame(columns=["contrast", "population"]), LIBRARY, 0.05)
    hits = called[called["call"] != "ns"]
    assert set(zip(hits["contrast"], hits["population"], hits["gene_set"])) == set(planted)
    assert hits["donor_fdr"].max() < 0.01 and (hits["call"] == "up").all()


def test_the_stress_control_is_carried_per_contrast_and_population_and_the_soup_vetoes():
    table = rows({("within_il7", "B", STRESS_SET): 1e-6, ("within_il7", "CD4 T", "MHCII"): 1e-6})
    table.loc[(table["contrast"] == "within_il7") & (table["population"] == "CD4 T"), "ambient_note"] = "soup"
    ora = pd.DataFrame({"contrast": ["within_il7", "within_placebo"], "population": ["B", "B"]})
    gsea, ora = confirm_calls(table, ora, LIBRARY, 0.05)
    b = gsea[gsea["population"] == "B"].set_index(["contrast", "gene_set"])["stress_control"]
    assert b[("within_il7", "IFN")] == "up" and b[("within_placebo", "IFN")] == "ns"
    assert list(ora["stress_control"]) == ["up", "ns"]
    # A set the soup explains is never called, however small its p-value.
    assert gsea.loc[(gsea["population"] == "CD4 T") & (gsea["gene_set"] == "MHCII"), "call"].eq("ns").all()
