"""The single-process script a user would write instead of the workflow (the benchmark's baseline).

It does the workflow's steps in one Python process with each library's defaults, the way the
scanpy, PyDESeq2 and GSEApy tutorials do them:

read every sample -> per-cell QC metrics and fixed thresholds -> Scrublet (``batch_key=sample``)
-> concatenate -> normalize_total + log1p -> HVG (seurat_v3, batch-aware) -> PCA -> neighbors
-> UMAP -> Leiden at the workflow's resolutions -> Wilcoxon markers on all cells -> marker-score
cell types per cluster -> pseudobulk per donor x timepoint x lineage -> PyDESeq2 ``~ donor +
timepoint`` per lineage -> GSEA prerank of the curated sets -> per-cell set scores averaged per
donor.

Usage: ``python tools/benchmark/scanpy_baseline.py SAMPLE_SHEET OUTDIR`` (10x .h5 inputs, as the
benchmark writes them). Writes ``OUTDIR/de_<lineage>.tsv``, ``OUTDIR/gsea.tsv`` and
``OUTDIR/scores.tsv`` so the output can be checked, and prints the time of each step.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

ROOT = Path(__file__).resolve().parents[2]
MARKERS = ROOT / "resources" / "markers" / "pbmc_markers.tsv"
GMT = ROOT / "resources" / "genesets" / "immunosuppression_sets.gmt"
RESOLUTIONS = [0.3, 0.5, 0.8, 1.0]
LINEAGES = ["CD4 T", "CD8 T", "NK", "B", "CD14 mono", "CD16 mono"]

_last = time.perf_counter()


def step(name: str) -> None:
    """Print the seconds since the previous step ended."""
    global _last
    now = time.perf_counter()
    print(f"{name}\t{now - _last:.1f} s", flush=True)
    _last = now


def main(sheet_path: str, outdir: str) -> None:
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    sc.settings.n_jobs = 2
    sheet = pd.read_csv(sheet_path, sep="\t", dtype=str, keep_default_na=False)

    samples = {}
    for row in sheet.itertuples():
        one = sc.read_10x_h5(row.path)
        one.var_names_make_unique()
        one.obs["donor"], one.obs["timepoint"] = row.donor, row.timepoint
        samples[row.sample] = one
    adata = ad.concat(samples, label="sample", index_unique="-")
    del samples
    step("read")

    adata.var["mt"] = adata.var_names.str.startswith("MT-")
    adata.var["ribo"] = adata.var_names.str.startswith(("RPS", "RPL"))
    adata.var["hb"] = adata.var_names.str.contains("^HB[^(P)]")
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt", "ribo", "hb"], inplace=True, log1p=True)
    sc.pp.filter_cells(adata, min_genes=100)
    sc.pp.filter_genes(adata, min_cells=3)
    adata = adata[adata.obs["pct_counts_mt"] < 20].copy()
    step("qc")
    sc.pp.scrublet(adata, batch_key="sample")
    adata = adata[~adata.obs["predicted_doublet"]].copy()
    step("scrublet")

    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat_v3", layer="counts", batch_key="sample")
    step("normalize+hvg")
    sc.tl.pca(adata)
    step("pca")
    sc.pp.neighbors(adata)
    step("neighbors")
    sc.tl.umap(adata)
    step("umap")
    for resolution in RESOLUTIONS:
        sc.tl.leiden(
            adata,
            resolution=resolution,
            key_added=f"leiden_{resolution}",
            flavor="igraph",
            n_iterations=2,
            directed=False,
        )
    step("leiden")
    sc.tl.rank_genes_groups(adata, groupby="leiden_1.0", method="wilcoxon")
    step("markers")

    # Cell types: mean marker score per cluster, best-scoring population wins.
    markers = pd.read_csv(MARKERS, sep="\t", comment="#", dtype=str, keep_default_na=False)
    markers = markers[markers["kind"] == "identity"]
    for row in markers.itertuples():
        genes = [g for g in row.positive.split(",") if g in adata.var_names]
        sc.tl.score_genes(adata, genes, score_name=f"score_{row.cell_type}")
    columns = [f"score_{c}" for c in markers["cell_type"]]
    per_cluster = adata.obs.groupby("leiden_1.0", observed=True)[columns].mean()
    best = per_cluster.idxmax(axis=1).str.removeprefix("score_")
    lineage_of = dict(zip(markers["cell_type"], markers["lineage"]))
    adata.obs["lineage"] = adata.obs["leiden_1.0"].map(best.map(lineage_of)).astype(str)
    step("annotate")

    import gseapy
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.ds import DeseqStats

    keys = adata.obs[["donor", "timepoint", "lineage"]].astype(str).agg("|".join, axis=1)
    codes, labels = pd.factorize(keys)
    indicator = np.zeros((len(labels), adata.n_obs), dtype=np.float32)
    indicator[codes, np.arange(adata.n_obs)] = 1
    summed = pd.DataFrame(adata.layers["counts"].T.dot(indicator.T).T, index=labels, columns=adata.var_names)
    meta = pd.DataFrame([label.split("|") for label in labels], index=labels, columns=["donor", "timepoint", "lineage"])
    gsea_tables = []
    for lineage in LINEAGES:
        rows = meta.index[meta["lineage"] == lineage]
        if len(rows) < 4:
            continue
        counts = summed.loc[rows].round().astype(int)
        counts = counts.loc[:, (counts >= 10).sum(0) >= 3]
        dds = DeseqDataSet(counts=counts, metadata=meta.loc[rows], design="~ donor + timepoint", quiet=True)
        dds.deseq2()
        stats = DeseqStats(dds, contrast=["timepoint", "post", "pre"], quiet=True)
        stats.summary()
        table = stats.results_df
        table.to_csv(out / f"de_{lineage.replace(' ', '_')}.tsv", sep="\t")
        ranking = table["stat"].dropna().sort_values(ascending=False)
        result = gseapy.prerank(rnk=ranking, gene_sets=str(GMT), min_size=10, seed=0, outdir=None, verbose=False).res2d
        result.insert(0, "lineage", lineage)
        gsea_tables.append(result)
    pd.concat(gsea_tables).to_csv(out / "gsea.tsv", sep="\t", index=False)
    step("pseudobulk DE + GSEA")

    sets = {}
    for line in GMT.read_text().splitlines():
        name, _, *genes = line.split("\t")
        sets[name] = [g for g in genes if g in adata.var_names]
    for name, genes in sets.items():
        if len(genes) >= 3:
            sc.tl.score_genes(adata, genes, score_name=f"set_{name}")
    set_columns = [c for c in adata.obs.columns if c.startswith("set_")]
    adata.obs.groupby(["lineage", "donor", "timepoint"], observed=True)[set_columns].mean().to_csv(
        out / "scores.tsv", sep="\t"
    )
    step("set scores")


if __name__ == "__main__":
    main(*sys.argv[1:3])
