"""What produced a run: the resolved config, the gene sets and the installed software versions."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

import pandas as pd
import yaml


def write_config(config: Mapping[str, Any], path: str | Path) -> None:
    """The run's configuration, every default filled in, as YAML with a header line."""
    Path(path).write_text(
        "# Configuration of this run, every default filled in (config/config.yaml + "
        "command-line overrides).\n" + yaml.safe_dump(dict(config), sort_keys=False)
    )


def concatenate_gene_sets(gmt_paths: Sequence[str | Path], path: str | Path) -> None:
    """Every GMT file of the run in one file, each introduced by a ``# <path>`` line."""
    with open(path, "w") as out:
        for gmt in gmt_paths:
            out.write(f"# {gmt}\n")
            out.write(Path(gmt).read_text())


def software_versions() -> pd.DataFrame:
    """``package``, ``version`` of Python and of every installed distribution, sorted by name."""
    versions = sorted((d.metadata["Name"], d.version) for d in distributions())
    frame = pd.DataFrame(versions, columns=["package", "version"]).drop_duplicates("package")
    return pd.concat([pd.DataFrame([{"package": "python", "version": sys.version.split()[0]}]), frame])
