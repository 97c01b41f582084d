"""Command line of the simulator: ``python -m pbmc_prepost.simulation --preset example --outdir DIR``."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from pbmc_prepost.simulation import PRESETS, SimulationParams, simulate, write_dataset
from pbmc_prepost.simulation.writers import MIXED_LAYOUTS, PROCESSED_LAYOUT


def main(argv: list[str] | None = None) -> None:
    """Simulate a preset (optionally with changed knobs) and write its files, sheet and truth."""
    parser = argparse.ArgumentParser(description="Simulate PBMC counts before and after IL-7, with truth.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="example")
    parser.add_argument("--outdir", required=True, help="folder for count files and truth/")
    parser.add_argument("--sheet", help="sample sheet to write (default: OUTDIR/samples.tsv)")
    parser.add_argument("--layout", default="mixed", choices=["mixed", *MIXED_LAYOUTS, PROCESSED_LAYOUT])
    parser.add_argument("--relative-to", help="write sheet paths relative to this folder")
    parser.add_argument("--n-donors", type=int)
    parser.add_argument("--cells-per-sample", type=int)
    parser.add_argument("--n-genes", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--library-median", type=float, help="median UMIs per healthy cell")
    parser.add_argument("--null", action="store_true", help="no treatment effect")
    args = parser.parse_args(argv)
    params = PRESETS[args.preset]
    overrides = {
        k: v
        for k, v in {
            "n_donors": args.n_donors,
            "cells_per_sample": args.cells_per_sample,
            "n_genes": args.n_genes,
            "seed": args.seed,
            "library_median": args.library_median,
        }.items()
        if v is not None
    }
    if args.null:
        overrides["treatment_effect"] = False
    params = SimulationParams(**{**asdict(params), **overrides})
    data = simulate(params)
    sheet = args.sheet or str(Path(args.outdir) / "samples.tsv")
    table = write_dataset(data, args.outdir, sheet, layout=args.layout, relative_to=args.relative_to)
    n_cells = sum(a.n_obs for a in data.samples.values())
    print(f"wrote {len(table)} samples, {n_cells} barcodes to {args.outdir}; sheet {sheet}")


if __name__ == "__main__":
    main()
