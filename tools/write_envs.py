"""Write envs/analysis.yaml from requirements.lock so that conda jobs and the venv pin the same versions.

Usage: python tools/write_envs.py   (run by `make lock`; tests/test_lint_and_environment.py checks
agreement). The Python of the environment is the one the lock was resolved with (PYTHON_VERSION).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The Python the lock is resolved with (the Makefile's interpreter; the scverse stack needs >= 3.12).
PYTHON_VERSION = "3.12"
HEADER = f"""\
# Conda environment of every rule (snakemake --sdm conda), generated from requirements.lock by
# tools/write_envs.py: the same pinned versions as the .venv that `make run` builds.
name: pbmc-prepost-analysis
channels:
  - conda-forge
  - nodefaults
dependencies:
  - python={PYTHON_VERSION}
  - pip
  - pip:
"""


def locked_requirements(lock: Path) -> list[str]:
    """Pinned `name==version` lines of a pip lock file, comments dropped."""
    lines = []
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def main() -> None:
    pins = locked_requirements(ROOT / "requirements.lock")
    text = HEADER + "".join(f"      - {pin}\n" for pin in pins)
    (ROOT / "envs" / "analysis.yaml").write_text(text)
    print(f"envs/analysis.yaml: {len(pins)} pinned packages")


if __name__ == "__main__":
    main()
