"""Agreement of a run's cell labels with the simulator's truth, per lineage and overall.

Prints the share of cells whose ``lineage`` and ``cell_type`` agree with the truth, for all cells
and for the lineages a PBMC study reports (:data:`PANEL`), each lineage's own agreement and the
confusion table, then the cluster table's decisions and flags.

Usage::

    python tools/annotation_accuracy.py RUN [--truth resources/example/truth/cells.tsv.gz]

``RUN`` is a workflow folder (with ``results/annotation/``); the truth defaults to
``RUN/data/truth/cells.tsv.gz`` or ``RUN/cohort/data/truth/cells.tsv.gz`` (cohorts the tests and
benchmarks simulate), else the example's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

#: Lineages a PBMC study reports (the issue's lineage panel), as the marker table names them.
PANEL = ["CD4 T", "CD8 T", "NK", "B", "CD14 mono", "CD16 mono", "DC", "platelets"]


def agreement(cells: pd.DataFrame, truth: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """Cells joined with their truth, and the agreement shares (``lineage_all``, ``lineage_panel``,
    ``cell_type_all`` and one ``<lineage>`` per lineage of :data:`PANEL` present)."""
    joined = cells.merge(truth, on=["sample", "barcode"], suffixes=("", "_true"))
    if joined.empty:
        raise SystemExit("no cell of the run is in the truth table: pass the cohort's truth with --truth")
    panel = joined[joined["lineage_true"].isin(PANEL)]
    shares = {
        "cells": float(len(joined)),
        "lineage_all": float((joined["lineage"] == joined["lineage_true"]).mean()),
        "lineage_panel": float((panel["lineage"] == panel["lineage_true"]).mean()),
        "cell_type_all": float((joined["cell_type"] == joined["cell_type_true"]).mean()),
    }
    for lineage, group in panel.groupby("lineage_true"):
        shares[str(lineage)] = float((group["lineage"] == lineage).mean())
    return joined, shares


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--truth", type=Path)
    args = parser.parse_args(argv)
    truth_path = args.truth or next(
        p
        for p in (
            args.run / "data" / "truth" / "cells.tsv.gz",
            args.run / "cohort" / "data" / "truth" / "cells.tsv.gz",
            ROOT / "resources" / "example" / "truth" / "cells.tsv.gz",
        )
        if p.exists()
    )
    read = lambda path: pd.read_csv(path, sep="\t", dtype={"barcode": str}, keep_default_na=False)  # noqa: E731
    joined, shares = agreement(read(args.run / "results" / "annotation" / "cells.tsv.gz"), read(truth_path))
    print(f"{int(shares.pop('cells')):,} cells; truth {truth_path}")
    for name, share in shares.items():
        print(f"  {name:<14} {share:.4f}")
    pd.set_option("display.width", 250)
    panel = joined[joined["lineage_true"].isin(PANEL)]
    print("\ntruth (rows) x label (columns), panel lineages:")
    print(pd.crosstab(panel["lineage_true"], panel["lineage"]).to_string())
    clusters = read(args.run / "results" / "annotation" / "clusters.tsv")
    columns = ["cluster", "cell_type", "how", "n_cells", "gate", "gate_margin", "subset_margin", "flag", "flag_reason"]
    print("\n" + clusters[[c for c in columns if c in clusters]].to_string(index=False))


if __name__ == "__main__":
    main()
