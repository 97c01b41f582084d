"""What more contrasts cost: a placebo-controlled trial run with one contrast and with three.

A simulated trial of about ``--size`` barcodes (the simulator's ``trial`` preset: 16 patients, 8 on
IL-7 and 8 on placebo, pre and post; 19,000 genes, a median of 4,000 UMIs) runs from scratch twice,
one after the other in this invocation: with the difference of changes only (``il7_vs_placebo``)
and with the three contrasts of ``config/examples/placebo_controlled.yaml`` (that one, and the
change within each arm). Prints the wall seconds and their ratio, the peaks, and per stage the
rules' seconds from their ``benchmark:`` files; the DE seconds per contrast come from each
``fit_de`` job's log (one line as each contrast's fit ends), the enrichment's from the difference
between the two runs (one ``enrich_de`` job fits every contrast).

Usage::

    python tools/benchmark/contrast_cost.py --size 100000
"""

from __future__ import annotations

import re
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_benchmarks as harness
import variants

THREE = harness.ROOT / "config" / "examples" / "placebo_controlled.yaml"
#: The rules whose work grows with the contrasts (one job each fits every contrast).
PER_CONTRAST_RULES = ("fit_de", "summarize_de", "compare_composition", "enrich_de", "score_gene_sets")


def de_seconds_per_contrast(rundir: Path) -> pd.Series:
    """Seconds each contrast's fits took, summed over the ``fit_de`` jobs: from the job's start
    (its benchmark file's end minus its seconds) to its first contrast's log line, then between
    consecutive contrasts' lines."""
    jobs = harness.benchmark_jobs(rundir)
    totals: dict[str, float] = {}
    for job in jobs[jobs["rule"] == "fit_de"].itertuples():
        start = job.end - job.s
        for line in (rundir / "logs" / "fit_de" / f"{job.key}.log").read_text().splitlines():
            found = re.match(r"(\S+ \S+) INFO job: ([^,]+), ", line)
            if found:
                when = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                totals[found.group(2)] = totals.get(found.group(2), 0.0) + when - start
                start = when
    return pd.Series(totals)


def main(argv: list[str] | None = None) -> None:
    args = variants.comparison_arguments(__doc__.splitlines()[0], argv)
    # The trial preset: 16 patients (8 on IL-7, 8 on placebo) x pre/post.
    sheet = harness.simulate(args.size, args.workdir, preset="trial", n_donors=16)
    if not args.no_warm_up:
        harness.warm_up(args.workdir, args.cores)
    three = yaml.safe_load(THREE.read_text())
    one = {**three, "contrasts": three["contrasts"][:1]}
    runs = {}
    for name, design in (("one", one), ("three", three)):
        print(f"workflow with {len(design['contrasts'])} contrast(s) ...", flush=True)
        runs[name] = variants.run_with_config(sheet, args.workdir / f"contrasts_{name}_{args.size}", args.cores, design)
    rules = {name: harness.rule_table(run.log.parent) for name, run in runs.items()}
    print(f"\n{harness.n_barcodes(sheet):,} barcodes, --cores {args.cores}, code {harness.code_version()}")
    for name, run in runs.items():
        merged = harness.merged_stage_peak(run)
        print(f"{name:>5} contrast(s): {run.seconds:7.1f} s, peak {run.peak_rss_gib:.2f} GiB, merged {merged:.2f} GiB")
    print(f"time three / one: {runs['three'].seconds / runs['one'].seconds:.3f}")
    print(f"peak three / one: {runs['three'].peak_rss_gib / runs['one'].peak_rss_gib:.3f}")
    for rule in PER_CONTRAST_RULES:
        one_s, three_s = (rules[name].loc[rule, "total_s"] if rule in rules[name].index else 0.0 for name in runs)
        print(f"  {rule}: one {one_s:.1f} s, three {three_s:.1f} s, each added contrast {(three_s - one_s) / 2:.1f} s")
    for name in runs:
        per_contrast = de_seconds_per_contrast(runs[name].log.parent)
        cells = ", ".join(f"{contrast} {seconds:.1f} s" for contrast, seconds in per_contrast.items())
        print(f"  fit_de per contrast ({name}; the first includes reading the pseudobulks): {cells}")


if __name__ == "__main__":
    main()
