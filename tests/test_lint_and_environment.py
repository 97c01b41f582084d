"""The workflow passes Snakemake's linter, and the lock file and conda env pin the same versions."""

from __future__ import annotations

import subprocess
import sys

import yaml

from conftest import ROOT, SNAKEMAKE

sys.path.insert(0, str(ROOT / "tools"))
from write_envs import locked_requirements


def test_snakemake_lint_is_clean():
    result = subprocess.run([str(SNAKEMAKE), "--lint"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_conda_env_pins_exactly_the_locked_versions():
    lock = sorted(locked_requirements(ROOT / "requirements.lock"))
    env = yaml.safe_load((ROOT / "envs" / "analysis.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip_section) == lock
    assert "python=3.12" in env["dependencies"]


def test_direct_requirements_are_locked_at_their_pinned_versions():
    locked = {
        line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
        for line in locked_requirements(ROOT / "requirements.lock")
    }
    for line in locked_requirements(ROOT / "requirements.in"):
        name, _, version = line.partition("==")
        key = name.lower().replace("_", "-")
        assert key in locked, f"{name} missing from requirements.lock"
        if version:
            assert locked[key] == version, f"{name}: requirements.in pins {version}, lock has {locked[key]}"


def test_installed_versions_match_the_lock():
    from importlib.metadata import version

    for line in locked_requirements(ROOT / "requirements.lock"):
        name, _, pinned = line.partition("==")
        assert version(name) == pinned, f"{name}: installed {version(name)}, locked {pinned}"
