"""A run killed with SIGKILL in the merged stage resumes; two runs from scratch give identical results;
a job killed during DE is redone alone.

Run A is the session's ``example_run``; run B starts from scratch in its own folder, is killed in the
merged stage, and resumed up to the composition test. Together they cost most of one extra run. The DE kill reruns one
population of a copy of run A.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import (
    ROOT,
    absolute_sheet,
    marked_incomplete,
    mtimes,
    run_and_kill,
    run_snakemake,
)

pytestmark = pytest.mark.workflow

MERGED = "results/merged/merged.h5ad"
# Run B goes as far as the composition test (QC, merge, embedding, clustering, annotation, QC bias
# check, composition): the DE and enrichment after it are the example run's alone, and their
# tables are checked against the record (tests/data/example_tables.sha256) on every run.
RESUMED_TARGETS = ("results/composition/test.tsv",)
EMBEDDING = "results/merged/embedding.h5ad"


def kill_point_reached(workdir: Path) -> bool:
    """merged.h5ad half written (the case --rerun-incomplete is for); failing that, embed_cells running."""
    marked = marked_incomplete(workdir)
    return (MERGED in marked and (workdir / MERGED).exists()) or EMBEDDING in marked


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory) -> SimpleNamespace:
    """Run B: from scratch, SIGKILLed with its jobs in the merged stage, then resumed."""
    workdir = tmp_path_factory.mktemp("resumed_run")
    sheet = absolute_sheet(ROOT / "config" / "samples.tsv", ROOT, workdir / "samples.tsv")
    config = (*RESUMED_TARGETS, "--config", f"samples={sheet}")
    # merged.h5ad takes ~0.5 s to write: the kill point is polled every 5 ms.
    run_and_kill(workdir, config, lambda: kill_point_reached(workdir), workdir / "killed_run.log")
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
    assert len(b) > 60 and b.keys() <= a.keys(), sorted(b.keys() - a.keys())
    differing = sorted(f for f in b if a[f] != b[f])
    assert not differing, f"{len(differing)} of {len(b)} files differ between two runs: {differing}"


def test_a_job_killed_during_de_is_redone_alone(example_run, tmp_path):
    """SIGKILL while one population's DE job runs: the rerun redoes that population only, and its
    table is the one an uninterrupted run wrote."""
    workdir = tmp_path / "run"
    shutil.copytree(example_run, workdir, symlinks=True)  # copy2 keeps modification times
    population, table = "CD4_T", "results/de/post_vs_pre/CD4_T.tsv"
    (workdir / table).unlink()
    before = mtimes(workdir)
    config = ("--config", f"samples={workdir / 'samples.tsv'}")
    targets = tuple(f"results/de/post_vs_pre/{p}.tsv" for p in ("B", "CD4_T", "CD8_T", "NK"))

    def fitting() -> bool:
        # The job has started (Snakemake marks its outputs incomplete) and is past its imports.
        log = workdir / "logs" / "fit_de" / "CD4_T.log"
        return table in marked_incomplete(workdir) and log.exists() and log.stat().st_size > 0

    run_and_kill(workdir, (*targets, *config), fitting, tmp_path / "killed.log")
    # Killed mid-job: its outputs (written or not yet) are marked incomplete, none counts as done.
    assert table in marked_incomplete(workdir)
    # The killed run's lock is left behind, as a live run's is: a second run on the same folder is
    # refused, before any job, until the first ends or `--unlock` (README, "After a crash or kill").
    killed = mtimes(workdir)
    locked = run_snakemake(workdir, *targets, *config, check=False)
    assert locked.returncode != 0 and "cannot be locked" in locked.stdout + locked.stderr, locked.stderr[-3000:]
    assert mtimes(workdir) == killed
    run_snakemake(workdir, *config, "--unlock")
    rerun = run_snakemake(workdir, *targets, *config)
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(?:.*\n)*?\s+wildcards: (.*)$", rerun.stderr, flags=re.M)
    assert jobs == [("fit_de", f"population={population}")], jobs
    after = mtimes(workdir)
    rewritten = sorted(f for f, t in before.items() if after[f] != t)
    assert all(population in f for f in rewritten), rewritten
    assert (workdir / table).read_bytes() == (example_run / table).read_bytes()
    assert not marked_incomplete(workdir)
