"""sha256 of every table a run wrote, so that a refactoring can show it changed no result.

Usage:
    python tools/table_hashes.py RUN_DIR                  # print "<sha256>  <path>" per table
    python tools/table_hashes.py RUN_DIR --write FILE     # record them (tests/data/*.sha256)

Tables are the ``.tsv`` and ``.tsv.gz`` files under ``RUN_DIR/results`` (gzipped ones hashed after
decompression, so the compressor's version does not matter), except ``results/provenance/``,
which holds paths and software versions of the machine. The workflow tests compare the example's
and the null cohort's tables with the recorded hashes; a change meant to alter results records
them anew with ``--write`` and says why in its commit.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
from pathlib import Path

EXCLUDED = ("provenance/",)


def table_hashes(run: Path) -> dict[str, str]:
    """Relative path under ``results/`` -> sha256 of the table's text."""
    results = run / "results"
    hashes = {}
    for path in sorted(results.rglob("*")):
        relative = path.relative_to(results).as_posix()
        if not path.is_file() or not relative.endswith((".tsv", ".tsv.gz")) or relative.startswith(EXCLUDED):
            continue
        data = gzip.decompress(path.read_bytes()) if relative.endswith(".gz") else path.read_bytes()
        hashes[relative] = hashlib.sha256(data).hexdigest()
    return hashes


def read_hashes(path: Path) -> dict[str, str]:
    """A file written by ``--write``: ``<sha256>  <relative path>`` per line."""
    pairs = (line.split("  ", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {relative: digest for digest, relative in pairs}


def host_cpu() -> str:
    """The CPU model LLVM names for this machine (e.g. ``znver3``), recorded with the hashes."""
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_name()


def recorded_cpu(path: Path) -> str | None:
    """The ``# cpu:`` line of a record, or None for a record without one."""
    for line in path.read_text().splitlines():
        if line.startswith("# cpu:"):
            return line.split(":", 1)[1].strip()
    return None


def format_hashes(hashes: dict[str, str]) -> str:
    return "".join(f"{digest}  {relative}\n" for relative, digest in hashes.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="folder the workflow ran in (holds results/)")
    parser.add_argument("--write", type=Path, help="record the hashes in this file")
    args = parser.parse_args()
    text = format_hashes(table_hashes(args.run))
    if args.write:
        header = "# sha256 of each results table (tools/table_hashes.py); provenance/ excluded\n"
        args.write.write_text(f"{header}# cpu: {host_cpu()}\n" + text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
