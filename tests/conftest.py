"""Shared fixtures: the project root, the workflow runner and simulated datasets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


# The numba compile cache of the project, shared by every workflow run of the suite.
SNAKEMAKE_ENV = {**os.environ, "NUMBA_CACHE_DIR": str(ROOT / ".cache" / "numba")}


def snakemake_command(workdir: Path, *args: str) -> list[str]:
    """The project's workflow through Snakemake's command line, run in ``workdir`` on 2 cores."""
    return [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(ROOT / "config" / "config.yaml"), "--cores", "2", *args]


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 1500) -> subprocess.CompletedProcess:
    """Run :func:`snakemake_command` and wait for it."""
    result = subprocess.run(snakemake_command(workdir, *args), cwd=workdir, env=SNAKEMAKE_ENV,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


def apt_install(*packages: str) -> None:
    """apt-get install Debian packages (CI starts from a fresh machine), waiting for another apt's lock."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    for command, timeout in ((["apt-get", *lock, "update"], 600),
                             (["apt-get", *lock, "install", "-y", "--no-install-recommends", *packages], 900)):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                               f"{result.stderr[-3000:]}")


def absolute_sheet(sheet: Path, base: Path, out: Path) -> Path:
    """Copy a sample sheet with its relative paths made absolute against ``base``."""
    table = pd.read_csv(sheet, sep="\t", dtype=str, keep_default_na=False)
    table["path"] = [str((base / p).resolve()) for p in table["path"]]
    table.to_csv(out, sep="\t", index=False)
    return out


@pytest.fixture(scope="session")
def example_run(tmp_path_factory) -> Path:
    """The whole workflow run once on the embedded example, in a scratch folder."""
    workdir = tmp_path_factory.mktemp("example_run")
    sheet = absolute_sheet(ROOT / "config" / "samples.tsv", ROOT, workdir / "samples.tsv")
    run_snakemake(workdir, "--config", f"samples={sheet}")
    return workdir


@pytest.fixture(scope="session")
def example_truth() -> pd.DataFrame:
    """Per-barcode ground truth of the embedded example."""
    return pd.read_csv(ROOT / "resources" / "example" / "truth" / "cells.tsv.gz", sep="\t",
                       dtype={"barcode": str}, keep_default_na=False)
