"""Compare the resources the rules declare with what their jobs used, in finished benchmark runs.

Every rule declares ``mem_mb`` and ``runtime`` as functions of its input size and the attempt
(``workflow/rules/common.smk``). On SLURM a job that uses more memory than it declared is killed
and retried with more, so the first attempt should cover what the job needs. This script asks
Snakemake, in a dry run over each finished run folder, what every job would declare for the
inputs it had, and sets that beside the peak RSS and seconds its ``benchmark:`` file recorded.

Usage::

    python tools/benchmark/check_resources.py .benchmark-runs/workflow_100000 .benchmark-runs/workflow_200000

Prints one row per rule and run: jobs, the largest measured peak RSS and the declared memory of
that job, the smallest headroom (declared / measured) over the rule's jobs, and the same for time.
Exits 1 when a job used more memory than it declared.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
from run_benchmarks import BIN, ROOT, benchmark_jobs  # the same folder: sys.path[0] when run as a script


def declared(rundir: Path, sheet: Path) -> pd.DataFrame:
    """Every job's rule, wildcards, mem_mb and runtime as a dry run over ``rundir`` computes them."""
    command = [
        str(BIN / "snakemake"),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(rundir.resolve()),
        "--configfile",
        str(ROOT / "config" / "config.yaml"),
        "--config",
        f"samples={sheet.resolve()}",
        "--forceall",
        "--dry-run",
        "--cores",
        "2",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"dry run failed in {rundir}:\n{done.stderr[-3000:]}")
    out = done.stdout
    rows, job = [], None
    for line in out.splitlines():
        if m := re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):", line):
            job = {"rule": m.group(1), "wildcards": ""}
            rows.append(job)
        elif job is not None and (m := re.match(r"\s+wildcards: (.*)", line)):
            job["wildcards"] = m.group(1).strip()
        elif job is not None and (m := re.match(r"\s+resources: (.*)", line)):
            values = dict(part.split("=", 1) for part in m.group(1).split(", ") if "=" in part)
            job["mem_mb"] = float(values.get("mem_mb", "nan"))
            job["runtime_min"] = float(values.get("runtime", "nan"))
    return pd.DataFrame(rows)


def benchmark_sheet(rundir: Path) -> Path:
    """The sheet of a harness run: ``workflow_N`` ran on ``data_N/samples.tsv`` beside it, or on
    ``trial_cohort_N/samples.tsv`` for the trial-sized cohorts."""
    for prefix in ("data_", "trial_cohort_"):
        sheet = rundir.parent / rundir.name.replace("workflow_", prefix) / "samples.tsv"
        if sheet.exists():
            return sheet
    sys.exit(f"{rundir}: no data_* or trial_cohort_* folder with samples.tsv beside it")


def compare(rundir: Path, sheet: Path) -> pd.DataFrame:
    """One row per rule: largest measured peak and what that job declared; least headroom."""
    plan = declared(rundir, sheet)
    plan["key"] = plan["wildcards"].str.replace(r"^\w+=", "", regex=True)
    used = benchmark_jobs(rundir)
    jobs = used.merge(plan.drop_duplicates(["rule", "key"]), on=["rule", "key"], how="left")
    jobs["mem_headroom"] = jobs["mem_mb"] / jobs["max_rss_mb"]
    jobs["time_headroom"] = jobs["runtime_min"] * 60 / jobs["s"]
    rows = []
    for rule, group in jobs.groupby("rule", sort=False):
        peak = group.loc[group["max_rss_mb"].idxmax()]
        rows.append(
            {
                "run": rundir.name,
                "rule": rule,
                "jobs": len(group),
                "peak_rss_mb": round(peak["max_rss_mb"]),
                "declared_mb": peak["mem_mb"],
                "min_mem_headroom": round(group["mem_headroom"].min(), 2),
                "longest_s": round(group["s"].max(), 1),
                "min_time_headroom": round(group["time_headroom"].min(), 1),
            }
        )
    return pd.DataFrame(rows).sort_values("peak_rss_mb", ascending=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rundirs", type=Path, nargs="+", help="finished workflow run folders")
    parser.add_argument("--sheet", type=Path, help="sample sheet of a single run (default: the harness's data_N)")
    args = parser.parse_args(argv)
    tables = [compare(rundir, args.sheet or benchmark_sheet(rundir)) for rundir in args.rundirs]
    table = pd.concat(tables, ignore_index=True)
    print(table.to_string(index=False))
    unplanned = sorted(set(table.loc[table["declared_mb"].isna(), "rule"]))
    if unplanned:
        print(f"\nNot planned by a dry run (their jobs follow a checkpoint): {', '.join(unplanned)}")
    short = table[table["min_mem_headroom"] < 1]
    if len(short):
        print(
            f"\n{len(short)} rule(s) used more memory than declared: "
            + ", ".join(f"{r.rule} ({r.run})" for r in short.itertuples())
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
