"""How well a run on a simulated trial answers the trial's question, per contrast, against the truth.

Usage:
    python tools/trial_accuracy.py RUN_DIR TRUTH_JSON [--alpha 0.05]

For every contrast of the run (results/provenance/contrasts.tsv) and every lineage the DE tested:
genes called (padj < alpha), precision and recall of the planted genes of that contrast
(pbmc_prepost.simulation.trial.expected_log2fc), and the share of genes that move only with the
disease course (planted in the within-arm change, not in the difference of changes) that were
called. Then the headline sets' calls (monocyte MHC-II, interferon) and the T-cell composition
test. Prints one table per question; the trial tests assert on the same numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))

from pbmc_prepost.design import safe_names
from pbmc_prepost.simulation.biology import CELL_CYCLE_GENES
from pbmc_prepost.simulation.trial import expected_log2fc

MHCII = "IMSUP_MONOCYTE_MHCII_ANTIGEN_PRESENTATION"
INTERFERON = "CTX_TYPE_I_INTERFERON_RESPONSE"
#: Planted changes smaller than this are not counted as planted (half-strength course, rounding).
MIN_PLANTED = 0.2
#: The core planted genes: the strongest effects, which a trial of this size should find.
CORE_PLANTED = 0.8
#: Lineages whose cycling share IL-7 raises: their cell-cycle genes rise with it. They are the
#: drug's effect (planted as a share of cycling cells, not as a fold change), so a call is true,
#: but they are not required for recall.
CYCLING_LINEAGES = ("CD4 T", "CD8 T", "other T")


def _contrasts(run: Path) -> pd.DataFrame:
    table = pd.read_csv(run / "results" / "provenance" / "contrasts.tsv", sep="\t", keep_default_na=False)
    return table[table["status"] == "run"]


def _levels(run: Path, name: str) -> dict:
    import yaml

    config = yaml.safe_load((run / "results" / "provenance" / "config.yaml").read_text())
    return next(c for c in config["contrasts"] if c["name"] == name)


def de_accuracy(run: Path, truth: dict, alpha: float = 0.05) -> pd.DataFrame:
    """One row per contrast x tested lineage: calls, precision, recall and course-only calls."""
    summary = pd.read_csv(run / "results" / "de" / "summary.tsv", sep="\t", keep_default_na=False)
    names = safe_names(summary["population"])
    rows = []
    for contrast in _contrasts(run)["contrast"]:
        spec = _levels(run, contrast)
        args = (spec["reference"], spec["treated"], spec.get("arm"), spec.get("versus_arm"))
        tested = summary[(summary["contrast"] == contrast) & (summary["status"] == "tested")]
        for lineage in tested["population"]:
            table = pd.read_csv(run / "results" / "de" / contrast / f"{names[lineage]}.tsv", sep="\t")
            called = set(table.loc[table["padj"] < alpha, "gene"])
            measured = set(table["gene"])
            expected = expected_log2fc(truth, lineage, *args)
            planted = set(expected.index[expected.abs() >= MIN_PLANTED]) & measured
            core = set(expected.index[expected.abs() >= CORE_PLANTED]) & measured
            drug_moves = expected_log2fc(truth, lineage, *args[:2], "IL7").abs().sum() > 0 if args[2] else True
            allowed = set(CELL_CYCLE_GENES) if lineage in CYCLING_LINEAGES and drug_moves else set()
            true = planted | allowed
            # Genes of the disease course: what moves in the placebo arm (or, without arms, nothing).
            course = expected_log2fc(truth, lineage, spec["reference"], spec["treated"], "placebo")
            course_genes = set(course.index[course.abs() >= MIN_PLANTED]) & measured
            course_only = course_genes - planted - allowed
            rows.append(
                {
                    "contrast": contrast,
                    "lineage": lineage,
                    "n_called": len(called),
                    "n_planted": len(planted),
                    "n_cycling_called": len(called & (allowed - planted)),
                    "precision": len(called & true) / len(called) if called else float("nan"),
                    "false_calls": ",".join(sorted(called - true)),
                    "recall": len(called & planted) / len(planted) if planted else float("nan"),
                    "n_core": len(core),
                    "core_recall": len(called & core) / len(core) if core else float("nan"),
                    "n_course_only": len(course_only),
                    "course_only_called": len(called & course_only) / len(course_only) if course_only else float("nan"),
                    "course_called": len(called & course_genes) / len(course_genes) if course_genes else float("nan"),
                    "share_of_genes_called": len(called) / max(len(measured), 1),
                }
            )
    return pd.DataFrame(rows)


def set_calls(run: Path, sets: tuple[str, ...] = (MHCII, INTERFERON)) -> pd.DataFrame:
    """The enrichment call of each headline set, per contrast and population."""
    gsea = pd.read_csv(run / "results" / "enrichment" / "gsea.tsv", sep="\t", keep_default_na=False)
    keep = gsea["gene_set"].isin(sets)
    return gsea.loc[keep, ["contrast", "population", "gene_set", "NES", "fdr", "donor_shift", "donor_fdr", "call"]]


def t_cell_composition(run: Path) -> pd.DataFrame:
    """The composition test of the T-cell lineages, per contrast."""
    test = pd.read_csv(run / "results" / "composition" / "test.tsv", sep="\t", keep_default_na=False)
    keep = (test["level"] == "lineage") & test["population"].isin(["CD4 T", "CD8 T"])
    return test.loc[keep, ["contrast", "population", "n_pairs", "log2_ratio", "padj"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("truth", type=Path)
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args()
    truth = json.loads(args.truth.read_text())
    pd.set_option("display.width", 200)
    print(de_accuracy(args.run, truth, args.alpha).round(3).to_string(index=False))
    print()
    print(set_calls(args.run).round(3).to_string(index=False))
    print()
    print(t_cell_composition(args.run).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
