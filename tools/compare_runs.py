"""Compare every table under results/ of two runs, modulo the documented renames of the output contract.

Usage: python tools/compare_runs.py REFERENCE_RUN NEW_RUN

Prints one line per table that is missing, has other columns or other values, and a last line
"N tables compared, M differ". Renames known to this version: ``cell_type`` -> ``population`` (and
``group`` -> ``population``) in every table whose rows are populations (not in qc/ or annotation/,
where ``cell_type`` is a per-cell label), ``de/pseudobulk/groups.tsv`` -> ``populations.tsv``,
``de/per_group/`` -> ``de/per_population/``; a ``level`` column present only in the new table is
ignored. Provenance paths differ between checkouts and are compared after replacing the
reference run's project folder with the new one's (``--reference-root``/``--new-root``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

RENAMED_PATHS = {"de/pseudobulk/groups.tsv": "de/pseudobulk/populations.tsv"}
RENAMED_COLUMNS = {"cell_type": "population", "group": "population"}
PER_CELL_TABLES = ("annotation/", "qc/")


def new_path(relative: str) -> str:
    return RENAMED_PATHS.get(relative, relative).replace("de/per_group/", "de/per_population/")


def compare(reference: Path, new: Path, reference_root: str = "", new_root: str = "") -> int:
    """Print the differences; return how many tables differ."""
    differ = compared = 0
    for path in sorted(reference.rglob("*.tsv*")):
        relative = str(path.relative_to(reference))
        other = new / new_path(relative)
        compared += 1
        if not other.exists():
            print("MISSING", relative)
            differ += 1
            continue
        a = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        b = pd.read_csv(other, sep="\t", dtype=str, keep_default_na=False)
        if reference_root and new_root:
            a = a.apply(lambda column: column.str.replace(reference_root, new_root, regex=False))
        if not relative.startswith(PER_CELL_TABLES):
            a = a.rename(columns=RENAMED_COLUMNS)
        if "level" in b.columns and "level" not in a.columns:
            b = b.drop(columns="level")
        if list(a.columns) != list(b.columns) or a.shape != b.shape:
            print("SHAPE", relative, a.shape, list(a.columns)[:8], b.shape, list(b.columns)[:8])
            differ += 1
        elif not a.equals(b):
            rows = int((a != b).any(axis=1).sum())
            print("VALUES", relative, f"{rows} rows differ")
            differ += 1
    print(f"{compared} tables compared, {differ} differ")
    return differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--reference-root", default="", help="project folder of the reference run's checkout")
    parser.add_argument("--new-root", default="", help="project folder of the new run's checkout")
    args = parser.parse_args()
    compare(args.reference / "results", args.new / "results", args.reference_root, args.new_root)


if __name__ == "__main__":
    main()
