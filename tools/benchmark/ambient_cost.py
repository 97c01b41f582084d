"""What the ambient RNA step costs: the whole workflow with it (``ambient.method: auto``) and without
(``none``) on the same simulated dataset, one after the other in this invocation.

The dataset is the harness's (``run_benchmarks.simulate``: 8 donors x pre/post, 19,000 genes; donors
D1 and D2 come with raw matrices of their empty droplets, the others are estimated from their cells),
so the step's three parts are all measured: the soup from empty droplets in the QC jobs, the
estimate from the annotated cells (``estimate_ambient``) and the correction of the pseudobulks.
Prints wall seconds, the ratio, the process-tree and merged-stage peaks, and the ambient rules'
own seconds and peak RSS from their ``benchmark:`` files.

Usage::

    python tools/benchmark/ambient_cost.py --size 100000
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_benchmarks as harness
import variants


def main(argv: list[str] | None = None) -> None:
    args = variants.comparison_arguments(__doc__.splitlines()[0], argv)
    sheet = harness.simulate(args.size, args.workdir)
    if not args.no_warm_up:
        harness.warm_up(args.workdir, args.cores)
    runs = {}
    for method in ("none", "auto"):
        print(f"workflow with ambient.method {method} ...", flush=True)
        rundir = args.workdir / f"ambient_{method}_{args.size}"
        runs[method] = variants.run_with_config(sheet, rundir, args.cores, {"ambient": {"method": method}})
    rules = {method: harness.rule_table(run.log.parent) for method, run in runs.items()}
    print(f"\n{harness.n_barcodes(sheet):,} barcodes, --cores {args.cores}, code {harness.code_version()}")
    for method, run in runs.items():
        merged = harness.merged_stage_peak(run)
        print(
            f"ambient.method {method:>4}: {run.seconds:7.1f} s, peak {run.peak_rss_gib:.2f} GiB, "
            f"merged-stage peak {merged:.2f} GiB"
        )
    print(f"time with / without: {runs['auto'].seconds / runs['none'].seconds:.3f}")
    print(f"peak with / without: {runs['auto'].peak_rss_gib / runs['none'].peak_rss_gib:.3f}")
    for rule in ("qc_sample", "estimate_ambient", "pseudobulk_cells"):
        cells = []
        for method in runs:
            if rule in rules[method].index:
                row = rules[method].loc[rule]
                cells.append(f"{method} {row['total_s']:.1f} s (peak {row['peak_rss_mb']:.0f} MB)")
        print(f"  {rule}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
