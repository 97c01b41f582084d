"""A trial-sized cohort for the benchmark: 27 donors x 4 sampling days, resampled from simulated cells.

The sepsis trial of CYT107 enrolled 27 patients sampled on 4 days; at about 8,000 cells per sample
that is some 860,000 cells. Simulating them takes hours of one core, so the cohort reuses the cells
of a simulated cohort (the benchmark's 8 donors x pre/post): every new cell of a sample is a
mixture of two cells of one source sample with the same planted identity (cell type, doublet,
dying), each contributing a binomial half of its UMIs, then thinned (keep 75-100 % of the UMIs,
drawn per cell; the range's lower end drawn per sample), with a new barcode. Copies of one source
cell would not do: a source cell drawn nine times gives nine near-identical cells that are each
other's nearest neighbours, and the kNN graph of the first version of this cohort fell apart into
cliques of copies (Leiden found 9,300 clusters at resolution 0.8). Composition, cell types and the
planted treatment effects are the source's; samples differ in depth.

Donor k takes source donor ((k - 1) mod 8) + 1; its days ``pre`` and ``post`` come from the source's
pre and post samples (the default contrast, post vs pre), ``day14`` from post and ``day28`` from pre.
Donors that share a source donor are not independent biological replicates: the DE they give is a
measure of the workflow at this size, not a power estimate. The truth table (``truth/cells.tsv.gz``)
and ``truth.json`` follow the cells, so lineage accuracy and DE recall are scored as at 100k.

Usage::

    python tools/benchmark/trial_cohort.py SOURCE_SHEET OUT_FOLDER --cells 860000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))

from pbmc_prepost import io as count_io  # noqa: E402
from pbmc_prepost.simulation.writers import write_10x_h5  # noqa: E402

N_DONORS = 27
#: Sampling day -> the source timepoint its cells are drawn from.
DAYS = {"pre": "pre", "post": "post", "day14": "post", "day28": "pre"}
#: Share of a drawn cell's UMIs kept: uniform between a per-sample lower end and 1.
KEEP_LOW = (0.75, 0.9)
BASES = np.array(list("ACGT"))


def barcodes(n: int, offset: int) -> np.ndarray:
    """``n`` distinct 16-base barcodes (``-1`` suffixed, as Cell Ranger writes them)."""
    codes = np.arange(offset, offset + n, dtype=np.int64)
    digits = (codes[:, None] // (4 ** np.arange(16, dtype=np.int64))[None, ::-1]) % 4
    return np.array(["".join(row) + "-1" for row in BASES[digits]])


def resample_sample(source, identity: np.ndarray, n_cells: int, rng: np.random.Generator, offset: int):
    """``n_cells`` new cells of ``source``: each half of one drawn cell plus half of another cell of
    the same ``identity`` (codes per source cell), thinned, with new barcodes.

    Returns the new object and the positions of the first cell of each pair (its truth is the new cell's).
    """
    first = np.sort(rng.integers(0, source.n_obs, n_cells))
    order = np.argsort(identity, kind="stable")
    sizes = np.bincount(identity)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    code = identity[first]
    second = order[starts[code] + (rng.random(n_cells) * sizes[code]).astype(np.int64)]
    counts = sp.csr_matrix(source.X)
    low = rng.uniform(*KEEP_LOW)
    keep = rng.uniform(low, 1.0, n_cells) / 2
    mixed = None
    for picked in (first, second):
        half = counts[picked]
        half.data = rng.binomial(half.data.astype(np.int64), np.repeat(keep, np.diff(half.indptr))).astype(np.float32)
        mixed = half if mixed is None else mixed + half
    mixed.eliminate_zeros()
    adata = anndata.AnnData(X=mixed, obs=pd.DataFrame(index=barcodes(n_cells, offset)), var=source.var.copy())
    return adata, first


def resample_cohort(source_sheet: Path, folder: Path, n_cells: int, seed: int = 0) -> Path:
    """Write the cohort (10x .h5 per sample, ``samples.tsv``, truth) into ``folder``; return the sheet.

    ``n_cells`` barcodes in all, split evenly over the 27 x 4 samples. Cached: a folder whose
    sheet exists is reused (the sheet is written last).
    """
    folder = folder.resolve()  # the sheet's paths are absolute: the workflow runs elsewhere
    sheet = folder / "samples.tsv"
    if sheet.exists():
        return sheet
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "counts" / "truth").mkdir(parents=True)
    sources = pd.read_csv(source_sheet, sep="\t", dtype=str, keep_default_na=False).set_index("sample")
    source_truth = pd.read_csv(
        source_sheet.parent / "counts" / "truth" / "cells.tsv.gz", sep="\t", dtype={"barcode": str}
    )
    source_truth = {s: part.set_index("barcode") for s, part in source_truth.groupby("sample")}
    source_donors = sorted(sources["donor"].unique(), key=lambda d: int(d.lstrip("D")))
    per_sample = round(n_cells / (N_DONORS * len(DAYS)))
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for k in range(1, N_DONORS + 1):
        donor = source_donors[(k - 1) % len(source_donors)]
        for day, timepoint in DAYS.items():
            name = f"P{k:02d}_{day}"
            origin = f"{donor}_{timepoint}"
            source = count_io.read_counts(sources.loc[origin, "path"], "10x_h5")
            planted = source_truth[origin].loc[source.obs_names]
            identity = pd.factorize(
                pd.MultiIndex.from_frame(planted[["cell_type", "is_doublet", "is_dying"]].astype(str))
            )[0]
            adata, drawn = resample_sample(source, identity, per_sample, rng, offset=len(rows) * per_sample)
            path = folder / "counts" / f"{name}_filtered_feature_bc_matrix.h5"
            write_10x_h5(adata, path, compression_level=1)
            cells = source_truth[origin].loc[source.obs_names[drawn]].reset_index(drop=True)
            truth.append(cells.assign(sample=name, barcode=adata.obs_names.to_numpy()))
            rows.append({"sample": name, "donor": f"P{k:02d}", "timepoint": day, "batch": "", "path": str(path)})
            rows[-1].update(format="10x_h5", counts_layer="", raw_path="", source_sample=origin)
            print(f"{name}: {adata.n_obs} cells from {origin}", flush=True)
    pd.concat(truth, ignore_index=True).to_csv(folder / "counts" / "truth" / "cells.tsv.gz", sep="\t", index=False)
    planted = json.loads((source_sheet.parent / "counts" / "truth" / "truth.json").read_text())
    planted["resampled_from"] = {"sheet": str(source_sheet), "donors": N_DONORS, "days": DAYS, "seed": seed}
    (folder / "counts" / "truth" / "truth.json").write_text(json.dumps(planted, indent=1))
    table = pd.DataFrame(rows).drop(columns="source_sample")
    table.to_csv(folder / "tmp.tsv", sep="\t", index=False)
    (folder / "tmp.tsv").rename(sheet)
    return sheet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source_sheet", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--cells", type=int, default=860_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(resample_cohort(args.source_sheet, args.folder, args.cells, args.seed))


if __name__ == "__main__":
    main()
