"""Two variants of one dataset, one after the other in one invocation: the shared part of
``ambient_cost.py`` and ``contrast_cost.py`` (the harness, ``run_benchmarks.py``, measures)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_benchmarks import ROOT, Run, environment, measure, snakemake_command


def run_with_config(sheet: Path, rundir: Path, cores: int, config: dict) -> Run:
    """The whole workflow from scratch with ``config`` as a further ``--configfile`` (a variant of
    the default config: another ambient method, other contrasts); exits when the run fails."""
    shutil.rmtree(rundir, ignore_errors=True)
    rundir.mkdir(parents=True)
    extra = rundir / "variant.yaml"
    extra.write_text(yaml.safe_dump(config, sort_keys=False))
    command = snakemake_command(rundir, sheet, cores)
    command[command.index("--config") : command.index("--config")] = ["--configfile", str(extra)]
    run = measure(command, rundir / "snakemake.log", rundir, environment())
    if run.returncode:
        sys.exit(f"the run in {rundir} failed, see {run.log}")
    return run


def comparison_arguments(description: str, argv: list[str] | None) -> argparse.Namespace:
    """Options of the commands that compare two variants of one dataset (ambient_cost.py,
    contrast_cost.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", type=int, default=100000, help="approximate barcodes")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".benchmark-runs")
    parser.add_argument("--no-warm-up", action="store_true", help="skip compiling numba code first")
    return parser.parse_args(argv)
