"""Shared fixtures: the project root, the workflow runner, settings and the simulated cohorts.

Every dataset of the suite comes from the simulator's presets (``pbmc_prepost.simulation``) and is
built once per session: ``cohort`` is the simulation behind the embedded example, ``null_cohort``
its twin without treatment effect, ``cells``/``null_cells`` their singlets as the annotated merged
object looks (true labels as annotation, raw counts in ``layers["counts"]``, log-normalized ``X``).
Tests that change an object take a copy.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import psutil
import pytest
import scipy.sparse as sp

from pbmc_prepost.design import Contrast, Study, cell_key
from pbmc_prepost.settings import default_config
from pbmc_prepost.simulation import PRESETS, SimulatedData, simulate, write_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from table_hashes import host_cpu, read_hashes, recorded_cpu, table_hashes  # noqa: E402

SNAKEMAKE = Path(sys.executable).with_name("snakemake")
#: The shipped configuration's contrast: timepoint post vs pre, paired by donor.
CONTRAST = Contrast.from_config(default_config())

# The numba compile cache of the project, shared by every workflow run of the suite.
SNAKEMAKE_ENV = {**os.environ, "NUMBA_CACHE_DIR": str(ROOT / ".cache" / "numba")}


def settings_of(kind, **changes):
    """A settings object of ``kind`` (a class of :mod:`pbmc_prepost.settings`) from the schema's
    defaults, with ``changes`` replacing fields."""
    extra = [changes.pop("study")] if "study" in kind._fields else []
    return kind.from_config(default_config(), *extra)._replace(**changes)


def study_of(data: SimulatedData, contrast: Contrast = CONTRAST) -> Study:
    """The design of a simulated cohort: donor, timepoint and one batch per sample."""
    samples = pd.DataFrame(data.truth["samples"]).set_index("sample")[["donor", "timepoint"]]
    return Study.from_sheet(samples.assign(batch="batch_1"), contrast)


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    """The project's workflow through Snakemake's command line, run in ``workdir`` on 2 cores."""
    return [
        str(SNAKEMAKE),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(ROOT / "config" / "config.yaml"),
        "--cores",
        "2",
        *args,
    ]


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 1500) -> subprocess.CompletedProcess:
    """Run :func:`snakemake_command` and wait for it."""
    result = subprocess.run(
        snakemake_command(workdir, *args),
        cwd=workdir,
        env=SNAKEMAKE_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
        )
    return result


def marked_incomplete(workdir: Path) -> set[str]:
    """Outputs of jobs Snakemake started and has not finished (.snakemake/incomplete/<base64 of path>)."""
    folder = workdir / ".snakemake" / "incomplete"
    names = os.listdir(folder) if folder.is_dir() else []
    return {base64.urlsafe_b64decode(name).decode() for name in names if name != "migration_underway"}


def alive_in_group(pgid: int) -> list[int]:
    alive = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (OSError, psutil.Error):
            pass
    return alive


def run_and_kill(workdir: Path, args: tuple[str, ...], kill_point: Callable[[], bool], log: Path) -> None:
    """Start the workflow with ``args``, SIGKILL it and its jobs once ``kill_point()`` holds, and
    wait until every process of the run is gone (as a node crash or ``kill -9`` leaves a run)."""
    with open(log, "w") as out:
        # A process group of its own, so that one kill takes the jobs too.
        proc = subprocess.Popen(
            snakemake_command(workdir, *args),
            cwd=workdir,
            env=SNAKEMAKE_ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 1200
            while not kill_point():
                assert proc.poll() is None, log.read_text()[-4000:]
                assert time.monotonic() < deadline, "the kill point was never reached"
                time.sleep(0.005)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for _ in range(100):
        if not alive_in_group(proc.pid):
            break
        time.sleep(0.1)
    assert not alive_in_group(proc.pid), "job processes outlived the kill"


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[bool]:
    """Make ``folder`` read-only while the block runs: a read-only bind mount onto itself when
    running as root (root ignores file modes), which the block's processes cannot write through.
    Yields whether the mount was made (False: not root, or mounts are not allowed here)."""
    mounted = os.geteuid() == 0 and all(
        subprocess.run(command, capture_output=True).returncode == 0
        for command in (
            ["mount", "--bind", str(folder), str(folder)],
            ["mount", "-o", "remount,ro,bind", str(folder)],
        )
    )
    try:
        yield mounted
    finally:
        if os.geteuid() == 0:
            # The bind (when only the first command worked) or the read-only bind.
            while subprocess.run(["mountpoint", "-q", str(folder)]).returncode == 0:
                if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
                    break


def mtimes(workdir: Path) -> dict[str, int]:
    return {
        p.relative_to(workdir).as_posix(): p.stat().st_mtime_ns for p in (workdir / "results").rglob("*") if p.is_file()
    }


def apt_install(*packages: str) -> None:
    """apt-get install Debian packages (CI starts from a fresh machine), waiting for another apt's lock."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    for command, timeout in (
        (["apt-get", *lock, "update"], 600),
        (["apt-get", *lock, "install", "-y", "--no-install-recommends", *packages], 900),
    ):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )


def absolute_sheet(sheet: Path, base: Path, out: Path) -> Path:
    """Copy a sample sheet with its relative paths made absolute against ``base``."""
    table = pd.read_csv(sheet, sep="\t", dtype=str, keep_default_na=False)
    for column in ("path", "raw_path"):
        if column in table:
            table[column] = [str((base / p).resolve()) if p else "" for p in table[column]]
    table.to_csv(out, sep="\t", index=False)
    return out


def write_cohort(data: SimulatedData, folder: Path, drop: tuple[str, ...] = (), layout: str = "10x_h5") -> Path:
    """Write a simulated cohort's files and a sample sheet without the ``drop`` samples."""
    sheet = write_dataset(data, folder / "data", folder / "all_samples.tsv", layout=layout)
    sheet[~sheet["sample"].isin(drop)].to_csv(folder / "samples.tsv", sep="\t", index=False)
    return folder / "samples.tsv"


def recorded_tables_differ(run, record: str) -> list[str]:
    """Tables of ``run`` whose sha256 differs from ``tests/data/<record>`` (or that one side lacks).

    Jobs pin the CPU-dependent kernels (runtime.pin_blas_kernels), so the tables should not depend
    on the machine; where they still differ on a CPU model other than the recording one, the test
    is skipped with the tables named (the resume test checks identity on this machine), and it
    fails only on the recording CPU model."""
    path = ROOT / "tests" / "data" / record
    recorded, current = read_hashes(path), table_hashes(run)
    changed = sorted(name for name in recorded.keys() | current.keys() if recorded.get(name) != current.get(name))
    made_on, here = recorded_cpu(path), host_cpu()
    if changed and made_on is not None and made_on != here:
        pytest.skip(
            f"{len(changed)} tables differ from tests/data/{record}, recorded on a {made_on} CPU; this is a "
            f"{here}: {', '.join(changed[:8])}{' ...' if len(changed) > 8 else ''}"
        )
    return changed


def annotated_cells(data: SimulatedData) -> ad.AnnData:
    """The singlets of a cohort as the annotated merged object looks: obs ``sample``, ``barcode``,
    ``donor``, ``timepoint``, ``batch`` and the true ``cell_type``/``lineage``/``cycling``; raw
    counts in ``layers["counts"]`` and shifted-log values (median library size) in ``X``."""
    parts = []
    for sample, adata in data.samples.items():
        keep = ~adata.obs["is_doublet"].to_numpy() & ~adata.obs["is_dying"].to_numpy()
        part = adata[keep].copy()
        donor, timepoint = sample.rsplit("_", 1)
        part.obs = part.obs[["cell_type", "lineage", "cycling"]].assign(
            sample=sample, barcode=part.obs_names.astype(str), donor=donor, timepoint=timepoint, batch="batch_1"
        )
        part.obs_names = cell_key([sample] * part.n_obs, part.obs_names)
        parts.append(part)
    cells = ad.concat(parts)
    cells.layers["counts"] = sp.csr_matrix(cells.X, dtype=np.float32)
    library = np.asarray(cells.X.sum(1)).ravel()
    scale = np.median(library) / library
    cells.X = sp.csr_matrix(cells.X.multiply(scale[:, None]).log1p().astype(np.float32))
    return cells


@pytest.fixture(scope="session")
def cohort() -> SimulatedData:
    """The simulation behind the embedded example (5 donors x pre/post IL-7)."""
    return simulate(PRESETS["example"])


@pytest.fixture(scope="session")
def null_cohort() -> SimulatedData:
    """The example's twin without any treatment effect."""
    return simulate(PRESETS["null"])


@pytest.fixture(scope="session")
def cells(cohort) -> ad.AnnData:
    return annotated_cells(cohort)


@pytest.fixture(scope="session")
def null_cells(null_cohort) -> ad.AnnData:
    return annotated_cells(null_cohort)


@pytest.fixture(scope="session")
def example_run(tmp_path_factory) -> Path:
    """The whole workflow run once on the embedded example, in a scratch folder, with its inputs
    (``resources/``: matrices, markers, gene sets) read-only and hashed before and after
    (``inputs.json`` in the run folder: tests/test_workflow_example.py)."""
    workdir = tmp_path_factory.mktemp("example_run")
    sheet = absolute_sheet(ROOT / "config" / "samples.tsv", ROOT, workdir / "samples.tsv")
    inputs = ROOT / "resources"
    before = {**file_digests(inputs), "samples.tsv": file_digests(workdir)["samples.tsv"]}
    with read_only(inputs) as mounted:
        run_snakemake(workdir, "--config", f"samples={sheet}")
    after = {**file_digests(inputs), "samples.tsv": file_digests(workdir)["samples.tsv"]}
    (workdir / "inputs.json").write_text(json.dumps({"read_only_mount": mounted, "before": before, "after": after}))
    return workdir


@pytest.fixture(scope="session")
def example_truth() -> pd.DataFrame:
    """Per-barcode ground truth of the embedded example."""
    return pd.read_csv(
        ROOT / "resources" / "example" / "truth" / "cells.tsv.gz",
        sep="\t",
        dtype={"barcode": str},
        keep_default_na=False,
    )
