"""A run killed with SIGKILL in the merged stage resumes; two runs from scratch give identical results.

Run A is the session's ``example_run``; run B starts from scratch in its own folder, is killed in the
merged stage, and resumed. Together they cost one extra workflow run.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import psutil
import pytest

from conftest import ROOT, SNAKEMAKE_ENV, absolute_sheet, run_snakemake, snakemake_command

pytestmark = pytest.mark.workflow

MERGED = "results/merged/merged.h5ad"
EMBEDDING = "results/merged/embedding.h5ad"


def marked_incomplete(workdir: Path) -> set[str]:
    """Outputs of jobs Snakemake started and has not finished (.snakemake/incomplete/<base64 of path>)."""
    folder = workdir / ".snakemake" / "incomplete"
    names = os.listdir(folder) if folder.is_dir() else []
    return {base64.urlsafe_b64decode(name).decode() for name in names if name != "migration_underway"}


def kill_point_reached(workdir: Path) -> bool:
    """merged.h5ad half written (the case --rerun-incomplete is for); failing that, embed_cells running."""
    marked = marked_incomplete(workdir)
    return (MERGED in marked and (workdir / MERGED).exists()) or EMBEDDING in marked


def alive_in_group(pgid: int) -> list[int]:
    alive = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (OSError, psutil.Error):
            pass
    return alive


def mtimes(workdir: Path) -> dict[str, int]:
    return {
        p.relative_to(workdir).as_posix(): p.stat().st_mtime_ns for p in (workdir / "results").rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory) -> SimpleNamespace:
    """Run B: from scratch, SIGKILLed with its jobs in the merged stage, then resumed."""
    workdir = tmp_path_factory.mktemp("resumed_run")
    sheet = absolute_sheet(ROOT / "config" / "samples.tsv", ROOT, workdir / "samples.tsv")
    config = ("--config", f"samples={sheet}")
    with open(workdir / "killed_run.log", "w") as log:
        # A process group of its own, so that one kill takes the jobs too.
        proc = subprocess.Popen(
            snakemake_command(workdir, *config),
            cwd=workdir,
            env=SNAKEMAKE_ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 1200
            while not kill_point_reached(workdir):
                assert proc.poll() is None, (workdir / "killed_run.log").read_text()[-4000:]
                assert time.monotonic() < deadline, "the merged stage never started"
                time.sleep(0.005)  # merged.h5ad takes ~0.5 s to write
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for _ in range(100):
        if not alive_in_group(proc.pid):
            break
        time.sleep(0.1)
    assert not alive_in_group(proc.pid), "job processes outlived the kill"

    run = SimpleNamespace(workdir=workdir, killed=marked_incomplete(workdir), before=mtimes(workdir))
    run.partial = {f for f in run.killed if f in run.before}
    # A SIGKILLed Snakemake cannot remove its lock: without --unlock the rerun stops with LockException.
    run_snakemake(workdir, *config, "--unlock")
    # Without the profile's rerun-incomplete: the half-written files must be refused, not used.
    run.refused = run_snakemake(workdir, *config, "--workflow-profile", "none", "-n", check=False)
    run.rerun = run_snakemake(workdir, *config, "--rerun-incomplete")
    run.after = mtimes(workdir)
    run.nothing_left = run_snakemake(workdir, *config, "-n").stdout
    return run


def test_kill_landed_in_the_merged_stage(resumed_run):
    run = resumed_run
    assert run.killed & {MERGED, EMBEDDING}, run.killed
    samples = pd.read_csv(run.workdir / "samples.tsv", sep="\t")["sample"]
    per_sample = {
        f"results/{folder}/{s}{suffix}"
        for s in samples
        for folder, suffixes in [("qc", (".h5ad", ".cells.tsv.gz", ".summary.tsv")), ("figures/qc", (".png", ".pdf"))]
        for suffix in suffixes
    }
    finished = run.before.keys() - run.killed
    assert per_sample <= finished, "every qc_sample job had finished"
    assert EMBEDDING not in finished and "results/clustering/clusters.tsv.gz" not in run.before


def test_half_written_outputs_are_refused_without_rerun_incomplete(resumed_run):
    run = resumed_run
    if not run.partial:
        pytest.skip("killed during embed_cells, before it wrote anything: no half-written file")
    message = run.refused.stdout + run.refused.stderr  # a dry run reports on stdout
    assert run.refused.returncode != 0 and "IncompleteFilesException" in message, message[-3000:]
    assert all(f in message.split("Incomplete files:")[-1] for f in run.partial), message[-3000:]


def test_rerun_finishes_redoing_only_unfinished_jobs(resumed_run):
    run = resumed_run
    ran = set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):$", run.rerun.stderr, flags=re.M))
    # The per-sample jobs had finished before the kill (provenance, which gathers the merged stage's
    # fallbacks, now runs after it; jobs finished but not listed here are checked by mtime below).
    assert "qc_sample" not in ran, ran
    assert "embed_cells" in ran and (MERGED not in run.killed or "merge_samples" in ran), ran
    rewritten = sorted(f for f, t in run.before.items() if f not in run.killed and run.after[f] != t)
    assert not rewritten, f"finished outputs written again: {rewritten}"
    not_redone = sorted(f for f in run.killed if run.after.get(f, 0) == run.before.get(f, 0))
    assert not not_redone, f"outputs of killed jobs not redone: {not_redone}"
    assert not marked_incomplete(run.workdir)
    assert "Nothing to be done" in run.nothing_left


def digests(workdir: Path) -> dict[str, str]:
    """sha256 of every file under results/, as bytes: gzip (mtime=0) and figures carry no dates."""
    out = {}
    for path in sorted((workdir / "results").rglob("*")):
        if path.is_file():
            # provenance/config.yaml names the sample sheet, which lies in each run's folder.
            data = path.read_bytes().replace(str(workdir).encode(), b"<run>")
            out[path.relative_to(workdir).as_posix()] = hashlib.sha256(data).hexdigest()
    return out


def test_two_runs_from_scratch_give_identical_results(example_run, resumed_run):
    a, b = digests(example_run), digests(resumed_run.workdir)
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())
    differing = sorted(f for f in a if a[f] != b[f])
    assert not differing, f"{len(differing)} of {len(a)} files differ between two runs: {differing}"
