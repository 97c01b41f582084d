"""Compare Scrublet's dense (mean-centred PCA) and sparse (truncated SVD) pipelines on real-sized samples.

``doublets.mean_center`` chooses between them (default false, the sparse one). This script runs the
workflow's own per-sample QC (``qc.run_sample_qc``) once per setting, each in a fresh process so
its peak RSS is its own, and scores the called doublets against the simulator's truth.

Usage (on a benchmark dataset made by ``run_benchmarks.py``)::

    python tools/benchmark/compare_scrublet.py .benchmark-runs/data_100000 \\
        --truth .benchmark-runs/data_200000/counts/truth/cells.tsv.gz --samples D1_pre D5_post

Prints one row per sample and setting: cells scored, planted doublets among them, recall and
precision of the called doublets, seconds and peak RSS of the process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def one_run(counts: str, sample: str, mean_center: bool, truth: str) -> dict:
    """QC one sample with one setting in this process; return doublet recall/precision, time, peak."""
    sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
    import pandas as pd

    from pbmc_prepost import io, qc
    from pbmc_prepost.settings import QCSettings, default_config

    adata = io.read_counts(counts, "10x_h5")
    settings = QCSettings.from_config(default_config(doublets={"mean_center": mean_center}))
    start = time.perf_counter()
    result = qc.run_sample_qc(adata, sample, settings)
    seconds = time.perf_counter() - start
    cells = result.cells[result.cells["doublet_score"].notna()].set_index("barcode")
    planted = pd.read_csv(truth, sep="\t", usecols=["sample", "barcode", "is_doublet"])
    planted = planted[planted["sample"] == sample].set_index("barcode")["is_doublet"]
    is_doublet = planted.reindex(cells.index).fillna(False).astype(bool).to_numpy()
    called = cells["predicted_doublet"].to_numpy().astype(bool)
    hits = int((called & is_doublet).sum())
    return {
        "sample": sample,
        "mean_center": mean_center,
        "cells_scored": len(cells),
        "planted_doublets": int(is_doublet.sum()),
        "recall": round(hits / max(is_doublet.sum(), 1), 3),
        "precision": round(hits / max(called.sum(), 1), 3),
        "seconds": round(seconds, 1),
        "peak_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "data", type=Path, help="a benchmark dataset folder (counts/<sample>_filtered_feature_bc_matrix.h5)"
    )
    parser.add_argument("--truth", type=Path, required=True, help="the simulator's truth/cells.tsv.gz")
    parser.add_argument("--samples", nargs="+", default=["D1_pre"])
    parser.add_argument("--one", nargs=2, metavar=("SAMPLE", "MEAN_CENTER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        sample, centre = args.one
        counts = args.data / "counts" / f"{sample}_filtered_feature_bc_matrix.h5"
        print(json.dumps(one_run(str(counts), sample, centre == "true", str(args.truth))))
        return
    print("sample\tmean_center\tcells_scored\tplanted_doublets\trecall\tprecision\tseconds\tpeak_gb")
    for sample in args.samples:
        for centre in ("true", "false"):
            done = subprocess.run(
                [sys.executable, __file__, str(args.data), "--truth", str(args.truth), "--one", sample, centre],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print("\t".join(str(value) for value in row.values()), flush=True)


if __name__ == "__main__":
    main()
