"""Snakemake adapter: the resolved config, the sample sheet, the gene sets and software versions."""

import shutil
import sys
from importlib.metadata import distributions
from pathlib import Path

import pandas as pd
import yaml

from pbmc_prepost.runtime import start_job

smk = snakemake  # noqa: F821
log = start_job(smk.log[0])
Path(smk.output.config).write_text(
    "# Configuration of this run, every default filled in (config/config.yaml + command-line overrides).\n"
    + yaml.safe_dump(smk.params.config, sort_keys=False))
shutil.copyfile(smk.input.sheet, smk.output.sheet)
with open(smk.output.gene_sets, "w") as out:
    for path in smk.input.gmt:
        out.write(f"# {path}\n")
        out.write(Path(path).read_text())
versions = sorted((d.metadata["Name"], d.version) for d in distributions())
frame = pd.DataFrame(versions, columns=["package", "version"]).drop_duplicates("package")
frame = pd.concat([pd.DataFrame([{"package": "python", "version": sys.version.split()[0]}]), frame])
frame.to_csv(smk.output.versions, sep="\t", index=False)
