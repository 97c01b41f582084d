"""Faults a run meets on real machines: the disk fills while a job writes.

(A job killed during DE: tests/test_workflow_resume.py. Read-only inputs: the example run,
tests/conftest.py and tests/test_workflow_example.py. A SLURM job out of memory: tests/test_slurm.py.)
"""

from __future__ import annotations

import os
import subprocess

import anndata as ad
import pytest

from conftest import ROOT, absolute_sheet, marked_incomplete, run_snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.beside_unit]

TARGET = "results/qc/D1_pre.h5ad"


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs, smaller than one sample's QC output (~5 MB), mounted for the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    mount = tmp_path / "small_disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_fails_the_job_clearly_and_the_rerun_completes(small_disk, tmp_path):
    workdir = small_disk / "run"
    workdir.mkdir()
    sheet = absolute_sheet(ROOT / "config" / "samples.tsv", ROOT, tmp_path / "samples.tsv")
    config = ("--config", f"samples={sheet}")

    failed = run_snakemake(workdir, TARGET, *config, check=False)
    message = failed.stdout + failed.stderr
    assert failed.returncode != 0, message[-3000:]
    assert "no space left on the device that holds the run folder" in message, message[-5000:]
    # Nothing half-written counts as finished: the output is gone, or still marked incomplete.
    assert not (workdir / TARGET).exists() or TARGET in marked_incomplete(workdir)

    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    run_snakemake(workdir, TARGET, *config)
    assert ad.read_h5ad(workdir / TARGET).n_obs > 500
    assert not marked_incomplete(workdir)
