"""Benchmark the workflow against the single-process scanpy script, at several dataset sizes.

For each size it simulates 8 donors x pre/post (16 samples, 10x .h5 files) with the project's
simulator, runs the whole workflow from scratch (QC to enrichment, every cell type) with
``--cores N``, then runs ``scanpy_baseline.py`` (the script a user would write instead) on the same
files. Both are timed wall-clock in this one invocation; peak memory is sampled every 0.2 s as the
summed RSS of each run's process tree (for the workflow: Snakemake plus every job it runs at once).
Per-rule seconds and peak RSS come from the rules' ``benchmark:`` files. It also times the
per-sample stage alone with ``--cores 1`` and ``--cores N``.

Usage (``make benchmark`` runs the default sizes)::

    python tools/benchmark/run_benchmarks.py --sizes 10000 50000 100000 200000 --out docs/benchmarks.md

Simulated data are cached under ``--workdir`` (default ``.benchmark-runs/``, git-ignored) and
reused; workflow and script outputs there are redone every time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import date
from importlib.metadata import version
from pathlib import Path

import h5py
import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
from trial_cohort import resample_cohort  # noqa: E402

from pbmc_prepost import io as count_io  # noqa: E402
from pbmc_prepost.simulation.writers import write_10x_h5  # noqa: E402

BIN = Path(sys.executable).parent
N_DONORS = 8
N_GENES = 19000  # nearly all protein-coding genes of the simulator's universe (real data: ~20k detected)
LIBRARY_MEDIAN = 4000.0  # UMIs per cell, typical of 10x 3' v3 PBMC
#: Sizes from here on are trial cohorts (27 donors x 4 days) resampled from simulated cells.
TRIAL_MIN_BARCODES = 500_000
DOUBLET_AND_SIZE_FACTOR = 1.03  # barcodes per requested cell: +5 % doublets, log-normal sizes, empty droplets dropped (1.07 gave 192,687 for 200k)


@dataclass
class Run:
    """Wall seconds and peak memory of one measured command."""

    seconds: float
    peak_rss_gib: float
    returncode: int
    log: Path
    trace: list[tuple[float, int]]  # (epoch seconds, summed RSS bytes) every 0.2 s


def tree_rss(process: psutil.Process) -> int:
    """Summed resident memory of a process and all its descendants, in bytes."""
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def measure(command: list[str], log: Path, cwd: Path, env: dict | None = None) -> Run:
    """Run ``command``, sampling the peak summed RSS of its process tree."""
    log.parent.mkdir(parents=True, exist_ok=True)
    peak = 0
    trace: list[tuple[float, int]] = []
    with open(log, "w") as handle:
        start = time.perf_counter()
        child = subprocess.Popen(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
        process = psutil.Process(child.pid)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                try:
                    rss = tree_rss(process)
                except psutil.NoSuchProcess:
                    return
                peak = max(peak, rss)
                trace.append((time.time(), rss))
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        returncode = child.wait()
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    return Run(seconds, peak / 2**30, returncode, log, trace)


def merged_stage_peak(run: Run) -> float | None:
    """Peak summed RSS (GiB) after the last per-sample QC job ended: the merged stage's peak.

    A ``benchmark:`` file is written when its job ends, so its modification time is the job's end.
    """
    ends = [path.stat().st_mtime for path in (run.log.parent / "benchmarks" / "qc_sample").glob("*.tsv")]
    after = [rss for when, rss in run.trace if ends and when > max(ends)]
    return max(after) / 2**30 if after else None


def environment() -> dict:
    """Environment for every run: the project's numba cache, so no job recompiles."""
    return {
        **os.environ,
        "NUMBA_CACHE_DIR": str(ROOT / ".cache" / "numba"),
        "MPLCONFIGDIR": str(ROOT / ".cache" / "matplotlib"),
        "PYTHONPATH": str(ROOT / "workflow" / "scripts"),
    }


def run_simulator(outdir: Path, sheet: Path, *options: str) -> None:
    """The project's simulator (``python -m pbmc_prepost.simulation``) writing 10x .h5 files."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pbmc_prepost.simulation",
            *options,
            "--layout",
            "10x_h5",
            "--outdir",
            str(outdir),
            "--sheet",
            str(sheet),
        ],
        check=True,
        env=environment(),
        cwd=ROOT,
    )


def simulate(size: int, workdir: Path, preset: str = "example", n_donors: int = N_DONORS) -> Path:
    """Simulate (once; cached) a dataset of about ``size`` barcodes, ``n_donors`` x pre/post of the
    simulator's ``preset``, and return its sample sheet (``data_<size>`` for the example preset,
    ``<preset>_<size>`` for another)."""
    folder = workdir / (f"data_{size}" if preset == "example" else f"{preset}_{size}")
    sheet = folder / "samples.tsv"
    if sheet.exists():
        return sheet
    shutil.rmtree(folder, ignore_errors=True)
    cells_per_sample = round(size / (2 * n_donors) / DOUBLET_AND_SIZE_FACTOR)
    print(f"simulating {size} cells ({preset}) ...", flush=True)
    run_simulator(
        folder / "counts",
        folder / "tmp.tsv",
        *("--preset", preset, "--n-donors", str(n_donors), "--cells-per-sample", str(cells_per_sample)),
        *("--n-genes", str(N_GENES), "--library-median", str(LIBRARY_MEDIAN)),
    )
    (folder / "tmp.tsv").rename(sheet)  # the sheet last: its presence marks a complete dataset
    return sheet


def subsample(source: Path, size: int, workdir: Path) -> Path:
    """A smaller dataset (cached): the first share of every sample's barcodes of a larger one.

    The simulator writes barcodes in random order, so this is a random subsample of each sample
    that keeps composition and effects; it saves simulating every size (minutes per size).
    """
    folder = workdir / f"data_{size}"
    sheet = folder / "samples.tsv"
    if sheet.exists():
        return sheet
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "counts").mkdir(parents=True)
    table = pd.read_csv(source, sep="\t", dtype=str, keep_default_na=False)
    share = size / n_barcodes(source)
    paths = []
    for row in table.itertuples():
        adata = count_io.read_counts(row.path, "10x_h5")
        adata = adata[: max(1, round(adata.n_obs * share))].copy()
        path = folder / "counts" / Path(row.path).name
        write_10x_h5(adata, path, compression_level=1)
        paths.append(str(path))
    table["path"] = paths
    shutil.copytree(source.parent / "counts" / "truth", folder / "counts" / "truth")  # the barcodes are kept
    table.to_csv(folder / "tmp.tsv", sep="\t", index=False)
    (folder / "tmp.tsv").rename(sheet)
    return sheet


def snakemake_command(rundir: Path, sheet: Path, cores: int, *targets: str) -> list[str]:
    return [
        str(BIN / "snakemake"),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(rundir),
        "--configfile",
        str(ROOT / "config" / "config.yaml"),
        "--config",
        f"samples={sheet}",
        "--cores",
        str(cores),
        *targets,
        "--quiet",
        "progress",
    ]  # targets first: --quiet takes several words


def run_workflow(sheet: Path, rundir: Path, cores: int, *targets: str) -> Run:
    shutil.rmtree(rundir, ignore_errors=True)
    rundir.mkdir(parents=True)
    return measure(snakemake_command(rundir, sheet, cores, *targets), rundir / "snakemake.log", rundir, environment())


def run_baseline(sheet: Path, outdir: Path) -> Run:
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir(parents=True)
    script = ROOT / "tools" / "benchmark" / "scanpy_baseline.py"
    # A numba cache of its own: a user's script shares none with the workflow, and the workflow's
    # cache index holds sparse-matrix types only its jobs define (unpickling it failed here).
    env = environment() | {"NUMBA_CACHE_DIR": str(ROOT / ".cache" / "numba-baseline")}
    return measure([sys.executable, str(script), str(sheet), str(outdir)], outdir / "baseline.log", outdir, env)


def benchmark_jobs(rundir: Path) -> pd.DataFrame:
    """One row per job from its ``benchmark:`` file: rule, wildcard value ('' without), s, max_rss_mb, end.

    Files are ``benchmarks/<rule>.tsv`` or, for rules with a wildcard, ``benchmarks/<rule>/<value>.tsv``.
    ``end`` is the file's modification time: Snakemake writes it when the job ends.
    """
    rows = []
    for path in sorted((rundir / "benchmarks").rglob("*.tsv")):
        nested = path.parent.name != "benchmarks"
        table = pd.read_csv(path, sep="\t")
        rows.append(
            {
                "rule": path.parent.name if nested else path.stem,
                "key": path.stem if nested else "",
                "s": float(table["s"].iloc[-1]),
                "max_rss_mb": float(table["max_rss"].iloc[-1]),
                "end": path.stat().st_mtime,
            }
        )
    return pd.DataFrame(rows)


def rule_table(rundir: Path) -> pd.DataFrame:
    """Per rule: jobs, summed and longest job seconds, wall seconds, largest job peak RSS (benchmark files).

    Wall seconds run from the first job's start (its end minus its seconds) to the last job's end:
    for a rule whose jobs run side by side it is what the rule cost the run.
    """
    frame = benchmark_jobs(rundir).assign(start=lambda f: f["end"] - f["s"])
    return (
        frame.groupby("rule", sort=False)
        .agg(
            jobs=("s", "size"),
            total_s=("s", "sum"),
            longest_s=("s", "max"),
            first_start=("start", "min"),
            last_end=("end", "max"),
            peak_rss_mb=("max_rss_mb", "max"),
        )
        .assign(wall_s=lambda f: f["last_end"] - f["first_start"])
        .drop(columns=["first_start", "last_end"])
        .sort_values("total_s", ascending=False)
    )


def rule_records(rundir: Path) -> list[dict]:
    """:func:`rule_table` as the record stores it (one dict per rule)."""
    return json.loads(rule_table(rundir).reset_index().to_json(orient="records"))


def code_version() -> str:
    """The measured code: the project's commit, with "+changes" when tracked files differ from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode != 0
    return commit + ("+changes" if dirty else "")


def measure_speedup(sheet: Path, workdir: Path, cores: int, repeats: int = 1) -> dict:
    """The per-sample stage (every ``qc_sample`` job, then ``aggregate_qc``) with ``--cores 1`` and ``--cores N``.

    Each repeat runs both, one after the other. Returns, per repeat, both runs' wall seconds and,
    from the ``qc_sample`` benchmark files, the span from the first job's start to the last job's
    end and the summed job seconds (the span ratio is the speed-up of the per-sample jobs
    themselves, without Snakemake's start-up and the aggregation); the top-level values are the
    medians over repeats.
    """
    measured = []
    for _ in range(repeats):
        result = {}
        for name, n in (("one", 1), ("many", cores)):
            run = run_workflow(sheet, workdir / f"qc_cores{n}", n, "aggregate_qc")
            if run.returncode:
                sys.exit(f"per-sample stage failed with --cores {n}, see {run.log}")
            qc_jobs = rule_table(run.log.parent).loc["qc_sample"]
            result.update(
                {
                    name: run.seconds,
                    f"{name}_jobs_span": float(qc_jobs["wall_s"]),
                    f"{name}_jobs_sum": float(qc_jobs["total_s"]),
                }
            )
        print(
            f"per-sample stage: --cores 1 {result['one']:.1f} s, --cores {cores} {result['many']:.1f} s, "
            f"speed-up {result['one'] / result['many']:.2f}x; qc_sample jobs alone "
            f"{result['one_jobs_span'] / result['many_jobs_span']:.2f}x",
            flush=True,
        )
        measured.append(result)
    table = pd.DataFrame(measured)
    return {
        "barcodes": n_barcodes(sheet),
        "cores": cores,
        **table.median().to_dict(),
        "speedups": [round(r["one"] / r["many"], 3) for r in measured],
        "job_speedups": [round(r["one_jobs_span"] / r["many_jobs_span"], 3) for r in measured],
    }


def cells_after_qc(rundir: Path) -> int | None:
    summary = rundir / "results" / "qc" / "summary.tsv"
    if not summary.exists():
        return None
    table = pd.read_csv(summary, sep="\t")
    return int(table["cells_out"].sum())


def populations_tested(rundir: Path) -> int | None:
    """Populations the paired DE tested (how much DE and enrichment work the run did)."""
    summary = rundir / "results" / "de" / "summary.tsv"
    if not summary.exists():
        return None
    return int((pd.read_csv(summary, sep="\t")["status"] == "tested").sum())


def lineage_accuracy(rundir: Path, truth: Path) -> float | None:
    """Share of QC-passed cells whose called lineage is the simulated one (``truth/cells.tsv.gz``)."""
    called = rundir / "results" / "annotation" / "cells.tsv.gz"
    if not called.exists() or not truth.exists():
        return None
    calls = pd.read_csv(called, sep="\t", usecols=["sample", "barcode", "lineage"], dtype=str)
    planted = pd.read_csv(truth, sep="\t", usecols=["sample", "barcode", "lineage"], dtype=str)
    both = calls.merge(planted, on=["sample", "barcode"], suffixes=("_called", "_true"))
    return float((both["lineage_called"] == both["lineage_true"]).mean()) if len(both) else None


#: Planted DE group of the simulator's truth -> the lineages whose DE tables it is planted in.
PLANTED_LINEAGES = {"T cells (all T subsets)": ("CD4 T", "CD8 T"), "NK": ("NK",), "CD14 mono": ("CD14 mono",)}


def de_recall(rundir: Path, truth_json: Path, alpha: float = 0.05) -> tuple[int, int] | None:
    """Planted genes called (padj < alpha with the planted sign) and planted, over the lineages
    they are planted in (``truth.json`` ``de_log2fc``; the default contrast post vs pre)."""
    from pbmc_prepost.design import safe_names

    folder = rundir / "results" / "de" / "post_vs_pre"
    if not folder.is_dir() or not truth_json.exists():
        return None
    planted = json.loads(truth_json.read_text())["de_log2fc"]
    found = total = 0
    for group, effects in planted.items():
        for lineage in PLANTED_LINEAGES.get(group, ()):
            table_path = folder / f"{safe_names([lineage])[lineage]}.tsv"
            total += len(effects)
            if not table_path.exists():
                continue
            table = pd.read_csv(table_path, sep="\t").set_index("gene")
            for gene, log2fc in effects.items():
                if gene in table.index and table.at[gene, "padj"] < alpha:
                    found += int((table.at[gene, "log2FoldChange"] > 0) == (log2fc > 0))
    return found, total


def n_barcodes(sheet: Path) -> int:
    """Barcodes in every count file of a sheet (10x .h5: the length of the barcodes dataset)."""
    table = pd.read_csv(sheet, sep="\t", dtype=str, keep_default_na=False)
    total = 0
    for path in table["path"]:
        with h5py.File(path, "r") as handle:
            total += handle["matrix"]["barcodes"].shape[0]
    return total


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = psutil.virtual_memory().total / 2**30
    packages = ", ".join(
        f"{p} {version(p)}"
        for p in ("snakemake", "scanpy", "anndata", "pynndescent", "umap-learn", "leidenalg", "pydeseq2", "gseapy")
    )
    return (
        f"{cpu}; {os.cpu_count()} logical CPUs; {memory:.1f} GiB RAM; {platform.platform()}; "
        f"Python {platform.python_version()}; {packages}"
    )


def scaling_exponent(cells: list[int], values: list[float]) -> float | None:
    """Slope of log(value) against log(cells): 1 means linear."""
    if len(cells) < 2:
        return None
    xs, ys = [math.log(c) for c in cells], [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def warm_up(workdir: Path, cores: int) -> None:
    """Compile numba code once (cached in .cache/numba) so no measured run pays for it."""
    folder = workdir / "warmup"
    sheet = folder / "samples.tsv"
    if not sheet.exists():
        run_simulator(folder / "counts", sheet, "--preset", "tiny")
    print("warming the numba cache (workflow and script on a tiny dataset) ...", flush=True)
    for run in (run_workflow(sheet, folder / "workflow", cores), run_baseline(sheet, folder / "baseline")):
        if run.returncode != 0:
            sys.exit(f"warm-up failed, see {run.log}")
    # The tiny dataset stays under scanpy's 8,192-cell threshold for pynndescent (euclidean): compile that too.
    subprocess.run([sys.executable, "-c", WARM_KNN], env=environment(), check=True)


WARM_KNN = """
import numpy as np, anndata as ad, scanpy as sc
from pbmc_prepost.runtime import cache_numba_compilation
cache_numba_compilation()
adata = ad.AnnData(np.random.default_rng(0).normal(size=(9000, 30)).astype(np.float32))
sc.pp.neighbors(adata, use_rep="X")
sc.tl.umap(adata)
"""


def load_record(path: Path) -> dict:
    """Measurements kept so far (``docs/benchmarks.json``): rows by size, speed-up, provenance."""
    return json.loads(path.read_text()) if path.exists() else {"rows": {}, "speedup": None}


def save_record(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


#: The machine of the rows measured before rows named theirs (2026-11-29).
OLD_MACHINE = "AMD EPYC; 2 logical CPUs; 23.5 GiB RAM; Python 3.11.7; snakemake 9.27.1, scanpy 1.11.5, anndata 0.12.19"


def write_markdown(path: Path, record: dict) -> None:
    """docs/benchmarks.md from the record: every row names the invocation that measured it."""
    rows = sorted(record["rows"].values(), key=lambda r: r["barcodes"])
    runs = [*rows, *([record["speedup"]] if record["speedup"] else [])]
    invocations = sorted({(r["date"], r["command"], r.get("commit"), r.get("machine")) for r in runs}, key=str)
    lines = [
        "# Benchmarks",
        "",
        "Written by `tools/benchmark/run_benchmarks.py` (`make benchmark`) from `docs/benchmarks.json`. "
        "Each row's workflow and script were measured one after the other in the same invocation, "
        "so each ratio comes from one run; the invocations:",
        "",
        *[
            f"- {day}: `{command}`" + (f" (code at commit {commit})" if commit else "") + f"; {host or OLD_MACHINE}"
            for day, command, commit, host in invocations
        ],
        "",
        f"Data: the project's simulator (`pbmc_prepost.simulation`), {N_DONORS} donors x pre/post = 16 samples "
        f"as 10x `.h5` files, {N_GENES} genes, median {LIBRARY_MEDIAN:.0f} UMIs per cell, 5 % doublets, "
        "4 % dying cells, ambient RNA, the planted IL-7 effects; the largest dataset is simulated and the "
        "smaller ones are random subsamples of each of its samples. From 500,000 barcodes on, a trial "
        "cohort of 27 donors x 4 sampling days (108 samples) resampled from the 100,000-barcode cells "
        "(`tools/benchmark/trial_cohort.py`: cells drawn with replacement, each thinned to 75-100 % of its "
        "UMIs, new barcodes; donors sharing a source donor are not independent, so its DE measures the "
        "workflow at that size, not power). The workflow runs from scratch with "
        "the default config (QC to enrichment, every cell type) and `--cores 2`; the numba cache is warm "
        "for both contestants.",
        "",
        "Baseline: `tools/benchmark/scanpy_baseline.py`, the single-process script a user would write "
        "with each library's defaults: the same steps (QC, Scrublet, HVG, PCA, neighbors, UMAP, Leiden at "
        "4 resolutions, Wilcoxon markers on all cells, marker-score labels, pseudobulk PyDESeq2 per "
        "lineage, GSEA prerank, set scores) in one process.",
        "",
        "Annotation is checked against the simulator's truth in every run: 'lineage accuracy' is the "
        "share of cells kept by QC whose called lineage equals the planted one (doublets that pass QC "
        "count as errors); 'populations tested for DE' counts the lineages with enough donor pairs; "
        "'DE recall' is the share of the planted genes (IL-7 effects in CD4 T and CD8 T, NK, CD14 mono) "
        "called at padj < 0.05 with the planted sign.",
        "",
        "Peak memory is the largest summed RSS of each run's process tree, sampled every 0.2 s (for the "
        "workflow: Snakemake plus every job running at that moment); the merged-stage peak is the same "
        "after the last per-sample QC job ended (merge, embedding, clustering, annotation, pseudobulk, "
        "DE, enrichment).",
        "",
        "## Whole run",
        "",
        "| barcodes | samples | cells after QC | lineage accuracy | DE recall | populations tested for DE | workflow s | workflow peak GiB | merged-stage peak GiB | script s | script peak GiB | workflow / script time | measured |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = f"{r['workflow_s'] / r['script_s']:.2f}" if r.get("script_s") else "n/a"
        script_s = f"{r['script_s']:.0f}" if r.get("script_s") else r.get("script_note", "not run")
        recall = f"{r['de_recall'][0]}/{r['de_recall'][1]}" if r.get("de_recall") else "n/a"
        script_gib = f"{r['script_gib']:.2f}" if r.get("script_gib") else "n/a"
        cells = f"{r['cells']:,}" if r.get("cells") is not None else "n/a"
        tested = r.get("populations_tested")
        accuracy = f"{r['lineage_accuracy']:.2f}" if r.get("lineage_accuracy") is not None else "n/a"
        merged = f"{r['merged_stage_gib']:.2f}" if r.get("merged_stage_gib") is not None else "n/a"
        lines.append(
            f"| {r['barcodes']:,} | {r.get('samples', 16)} | {cells} | {accuracy} | {recall} | "
            f"{tested if tested is not None else 'n/a'} | "
            f"{r['workflow_s']:.0f} | {r['workflow_gib']:.2f} | {merged} | "
            f"{script_s} | {script_gib} | {ratio} | {r['date']} |"
        )
    # One machine and code generation only: rows of an older version would bend the slope.
    newest = max(rows, key=lambda r: r["date"]) if rows else None
    fitted = [r for r in rows if newest and r.get("machine") == newest.get("machine")]
    sizes = [r["barcodes"] for r in fitted]
    time_exp = scaling_exponent(sizes, [r["workflow_s"] for r in fitted])
    mem_exp = scaling_exponent(sizes, [r["workflow_gib"] for r in fitted])
    merged_exp = scaling_exponent(sizes, [r["merged_stage_gib"] for r in fitted])
    if time_exp is not None:
        left_out = sorted({r["date"] for r in rows if r not in fitted})
        lines += [
            "",
            f"Scaling of the workflow with cells (slope of a log-log fit; 1 = linear) over the rows measured "
            f"on the newest row's machine ({', '.join(f'{s:,}' for s in sizes)} barcodes): time {time_exp:.2f}, "
            f"peak memory {mem_exp:.2f}, merged-stage peak {merged_exp:.2f}"
            + (f"; rows of {', '.join(left_out)} (another machine and version) left out." if left_out else "."),
        ]
    speedup = record["speedup"]
    if speedup:
        lines += [
            "",
            "## Parallel per-sample stage",
            "",
            f"The per-sample stage alone (`qc_sample` for the 16 samples of the "
            f"{speedup['barcodes']:,}-barcode dataset, target `aggregate_qc`): "
            f"`--cores 1` {speedup['one']:.0f} s, `--cores {speedup['cores']}` {speedup['many']:.0f} s, "
            f"speed-up {speedup['one'] / speedup['many']:.2f}x ({speedup['date']})"
            + (
                f"; times are medians of {len(speedup['speedups'])} repeats, whose speed-ups were "
                + ", ".join(f"{s:.2f}x" for s in speedup["speedups"])
                if "speedups" in speedup
                else ""
            )
            + ".",
        ]
        if "one_jobs_span" in speedup:
            lines += [
                "",
                f"The `qc_sample` jobs alone (first start to last end, from their benchmark files): "
                f"{speedup['one_jobs_span']:.0f} s and {speedup['many_jobs_span']:.0f} s, speed-up "
                f"{speedup['one_jobs_span'] / speedup['many_jobs_span']:.2f}x; their summed seconds "
                f"{speedup['one_jobs_sum']:.0f} s one at a time and {speedup['many_jobs_sum']:.0f} s "
                f"{speedup['cores']} at a time (the difference is what running side by side costs each job). "
                "The rest of the stage is serial: Snakemake's start-up and `aggregate_qc`."
                + (
                    " Per repeat: " + ", ".join(f"{s:.2f}x" for s in speedup["job_speedups"]) + "."
                    if "job_speedups" in speedup
                    else ""
                ),
            ]
    for r in rows:
        lines += [
            "",
            f"## Per rule, {r['barcodes']:,} barcodes",
            "",
            "From the `benchmark:` files: jobs of the rule, summed and longest job wall seconds, "
            "wall seconds from the first job's start to the last job's end (jobs run side by side), "
            "largest peak RSS of one job.",
            "",
            "| rule | jobs | total s | longest s | wall s | peak RSS MB |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for rule in r["rules"]:
            wall = f"{rule['wall_s']:.1f}" if "wall_s" in rule else "n/a"
            lines.append(
                f"| {rule['rule']} | {rule['jobs']} | {rule['total_s']:.1f} | {rule['longest_s']:.1f} | "
                f"{wall} | {rule['peak_rss_mb']:.0f} |"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[10000, 50000, 100000, 200000],
        help="approximate barcodes per dataset, measured in this order",
    )
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".benchmark-runs")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument(
        "--record",
        type=Path,
        default=ROOT / "docs" / "benchmarks.json",
        help="measurements in machine-readable form; the markdown is written from it",
    )
    parser.add_argument(
        "--append", action="store_true", help="keep the record's rows of other sizes (default: start a new record)"
    )
    parser.add_argument(
        "--speedup-size",
        type=int,
        help="dataset for the --cores 1 vs --cores N per-sample comparison "
        "(default: the largest size up to 100000; 0 = skip)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the single-process script")
    parser.add_argument("--baseline-max", type=int, help="run the single-process script only up to this size")
    parser.add_argument("--baseline-skipped", help="why the script was not run (shown in the table)")
    parser.add_argument(
        "--trial-source",
        type=int,
        default=100000,
        help=f"simulated dataset the trial cohorts (sizes from {TRIAL_MIN_BARCODES:,}) are resampled from",
    )
    parser.add_argument(
        "--no-warm-up", action="store_true", help="skip compiling numba code first (when .cache/numba is already warm)"
    )
    parser.add_argument(
        "--speedup-repeats",
        type=int,
        default=3,
        help="times the per-sample comparison is repeated (the table gives the median)",
    )
    parser.add_argument(
        "--speedup-only",
        action="store_true",
        help="measure only the per-sample stage on --speedup-size; the record's rows are kept",
    )
    parser.add_argument(
        "--refresh-rules",
        action="store_true",
        help="recompute the record's per-rule tables from the run folders in --workdir and "
        "rewrite the markdown; runs nothing",
    )
    args = parser.parse_args(argv)
    if args.refresh_rules:
        record = load_record(args.record)
        for size, row in record["rows"].items():
            rundir = args.workdir / f"workflow_{size}"
            if (rundir / "benchmarks").is_dir():
                row["rules"] = rule_records(rundir)
        save_record(args.record, record)
        write_markdown(args.out, record)
        print(f"rewrote {args.out}")
        return
    if args.speedup_size is None:
        args.speedup_size = max([s for s in args.sizes if s <= 100000] or [min(args.sizes)])
    if args.speedup_only:
        args.sizes = [args.speedup_size]
    if args.speedup_size and args.speedup_size not in args.sizes:
        parser.error(f"--speedup-size {args.speedup_size} must be one of --sizes (it runs after that size)")
    command = "python tools/benchmark/run_benchmarks.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.workdir.mkdir(parents=True, exist_ok=True)
    # Simulate the largest dataset up to TRIAL_MIN_BARCODES; smaller ones are subsamples of it, larger
    # ones trial cohorts resampled from its cells (tools/benchmark/trial_cohort.py).
    simulated = sorted({s for s in args.sizes if s < TRIAL_MIN_BARCODES} | {args.trial_source}, reverse=True)
    sheets = {simulated[0]: simulate(simulated[0], args.workdir)}
    for size in simulated[1:]:
        sheets[size] = subsample(sheets[simulated[0]], size, args.workdir)
    for size in (s for s in args.sizes if s >= TRIAL_MIN_BARCODES):
        sheets[size] = resample_cohort(sheets[args.trial_source], args.workdir / f"trial_cohort_{size}", size)
    if not args.no_warm_up:
        warm_up(args.workdir, args.cores)

    # The table is rewritten after every measurement, so a run stopped early still leaves what it measured.
    record = load_record(args.record) if args.append or args.speedup_only else {"rows": {}, "speedup": None}
    stamp = {"date": date.today().isoformat(), "command": command, "commit": code_version()}

    def publish() -> None:
        save_record(args.record, record)
        write_markdown(args.out, record)

    if args.speedup_only:
        record["speedup"] = {
            **measure_speedup(sheets[args.speedup_size], args.workdir, args.cores, args.speedup_repeats),
            **stamp,
        }
        publish()
        return

    for size in args.sizes:
        sheet = sheets[size]
        truth = sheet.parent / "counts" / "truth"
        flow = run_workflow(sheet, args.workdir / f"workflow_{size}", args.cores)
        if flow.returncode != 0:
            sys.exit(f"workflow failed at {size} cells, see {flow.log}")
        recall = de_recall(flow.log.parent, truth / "truth.json")
        result = {
            "barcodes": n_barcodes(sheet),
            "samples": len(pd.read_csv(sheet, sep="\t")),
            "machine": machine(),
            "cells": cells_after_qc(flow.log.parent),
            "populations_tested": populations_tested(flow.log.parent),
            "lineage_accuracy": lineage_accuracy(flow.log.parent, truth / "cells.tsv.gz"),
            "de_recall": None if recall is None else list(recall),
            "workflow_s": flow.seconds,
            "workflow_gib": flow.peak_rss_gib,
            "merged_stage_gib": merged_stage_peak(flow),
            "rules": rule_records(flow.log.parent),
            **stamp,
        }
        line = f"{result['barcodes']:>8,} barcodes: workflow {flow.seconds:7.1f} s, peak {flow.peak_rss_gib:5.2f} GiB"
        record["rows"][str(size)] = result
        publish()  # the workflow's row stands even if the script is stopped
        if args.no_baseline or (args.baseline_max is not None and size > args.baseline_max):
            result["script_note"] = args.baseline_skipped or "not run"
        else:
            script = run_baseline(sheet, args.workdir / f"baseline_{size}")
            if script.returncode != 0:
                sys.exit(f"baseline script failed at {size} cells, see {script.log}")
            result.update(script_s=script.seconds, script_gib=script.peak_rss_gib)
            line += (
                f"; script {script.seconds:7.1f} s, peak {script.peak_rss_gib:5.2f} GiB; "
                f"ratio workflow/script {flow.seconds / script.seconds:.2f}"
            )
            publish()
        print(line, flush=True)
        if size == args.speedup_size:
            record["speedup"] = {**measure_speedup(sheet, args.workdir, args.cores, args.speedup_repeats), **stamp}
            publish()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
