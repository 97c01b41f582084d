"""Time the annotation job of this checkout against that of another revision, on the same cells.

The annotation rule's script (``workflow/scripts/annotate_cells.py``: read the clustered object,
label, check, write the tables, draw the UMAP and the dot plot) runs as Snakemake would run it, once
per code version and repeat, alternating, in fresh processes; wall seconds and the peak RSS of each
process are measured in this one invocation, so the ratio compares like with like. The clustered
object comes from the workflow run on the benchmark dataset of ``--size`` barcodes (simulated and
cached as ``run_benchmarks.py`` does, under ``--workdir``).

Usage::

    python tools/benchmark/time_annotation.py --size 100000 --baseline-rev 3f980ae --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import anndata as ad
import h5py

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_benchmarks import ROOT, environment, measure, simulate, snakemake_command

#: What the annotation rule reads, as the workflow writes it.
CLUSTERED = Path("results") / "merged" / "clustered.h5ad"

#: Runs one revision's rule script with a ``snakemake`` object like the one Snakemake injects.
RUNNER = textwrap.dedent(
    """
    import runpy, sys, types
    from pathlib import Path
    tree, h5ad, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    from pbmc_prepost.settings import AnnotationSettings, default_config
    markers = tree / "resources" / "markers"
    names = ["cells", "clusters", "consistency", "umap_png", "umap_pdf", "dotplot_png", "dotplot_pdf"]
    results = Path(h5ad).parent.parent  # from 0.13 the rule reads the merged counts, graph and clusters
    merged, embedding = results / "merged" / "merged.h5ad", results / "merged" / "embedding.h5ad"
    suffix = {"cells": ".tsv.gz", "clusters": ".tsv", "consistency": ".tsv"}
    smk = types.SimpleNamespace(
        input=types.SimpleNamespace(
            h5ad=h5ad, merged=str(merged), embedding=str(embedding),
            clusters=str(results / "clustering" / "clusters.tsv.gz"),
            markers=str(markers / "pbmc_markers.tsv"), overrides=[],
            checks=str(markers / "consistency_checks.tsv"),
        ),
        output=types.SimpleNamespace(**{n: str(out / (n + suffix.get(n, "." + n.split("_")[-1]))) for n in names}),
        params=types.SimpleNamespace(settings=AnnotationSettings.from_config(default_config())),
        log=[str(out / "annotate.log")],
    )
    runpy.run_path(str(tree / "workflow" / "scripts" / "annotate_cells.py"), init_globals={"snakemake": smk})
    """
)


def checkout(revision: str, folder: Path) -> Path:
    """The workflow, resources and config of ``revision`` extracted into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "workflow", "resources", "config"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def clustered_object(size: int, workdir: Path, cores: int) -> Path:
    """The workflow's clustered object for the ``size``-barcode benchmark dataset (cached)."""
    sheet = simulate(size, workdir)
    rundir = workdir / f"annotation_{size}"
    target = rundir / CLUSTERED
    if not target.exists():
        rundir.mkdir(parents=True, exist_ok=True)
        print(f"running the workflow up to {CLUSTERED} ...", flush=True)
        subprocess.run(
            snakemake_command(rundir, sheet, cores, str(CLUSTERED)), check=True, env=environment(), cwd=rundir
        )
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000, help="barcodes of the benchmark dataset")
    parser.add_argument("--baseline-rev", default="3f980ae", help="git revision to compare with")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2, help="cores of the workflow run that clusters the cells")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".benchmark-runs")
    args = parser.parse_args(argv)

    h5ad = clustered_object(args.size, args.workdir, args.cores)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        trees = {"this checkout": ROOT, args.baseline_rev: checkout(args.baseline_rev, scratch / "baseline")}
        runner = scratch / "run_rule.py"
        runner.write_text(RUNNER)
        runs: dict[str, list] = {name: [] for name in trees}
        for repeat in range(args.repeats):
            for name, tree in trees.items():
                out = scratch / f"out_{len(runs[name])}_{name.replace(' ', '_')}"
                out.mkdir()
                env = environment() | {"PYTHONPATH": str(tree / "workflow" / "scripts")}
                run = measure([sys.executable, str(runner), str(tree), str(h5ad), str(out)], out / "job.log", out, env)
                if run.returncode:
                    raise SystemExit(f"{name} failed:\n{(out / 'job.log').read_text()[-3000:]}")
                runs[name].append(run)
                print(f"repeat {repeat + 1} {name}: {run.seconds:.1f} s, peak {run.peak_rss_gib:.2f} GiB", flush=True)
    with h5py.File(h5ad) as handle:
        cells = len(ad.io.read_elem(handle["obs"]))
    seconds = {name: statistics.median(r.seconds for r in group) for name, group in runs.items()}
    peaks = {name: max(r.peak_rss_gib for r in group) for name, group in runs.items()}
    current, baseline = seconds["this checkout"], seconds[args.baseline_rev]
    print(
        f"\nannotation job on {cells:,} cells ({args.size:,} barcodes), median of {args.repeats}:\n"
        f"  this checkout        {current:6.1f} s   peak {peaks['this checkout']:.2f} GiB\n"
        f"  {args.baseline_rev:<20} {baseline:6.1f} s   peak {peaks[args.baseline_rev]:.2f} GiB\n"
        f"  ratio (this / baseline) {current / baseline:.2f}"
    )


if __name__ == "__main__":
    main()
