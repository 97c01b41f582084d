"""End to end: the workflow on the embedded example, checked against the simulation's truth."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from conftest import ROOT, run_snakemake

pytestmark = pytest.mark.workflow


def read_cells(run):
    return pd.read_csv(run / "results" / "qc" / "cells.tsv.gz", sep="\t", dtype={"barcode": str},
                       keep_default_na=False)


def test_cells_table_has_every_input_barcode(example_run, example_truth):
    cells = read_cells(example_run)
    assert list(cells.columns) == ["sample", "barcode", "total_counts", "n_genes", "pct_mt", "pct_ribo", "pct_hb",
                                   "pct_top20", "doublet_score", "predicted_doublet", "qc_pass", "fail_reason"]
    # Barcodes exactly as in the input files, one row each.
    assert set(zip(cells["sample"], cells["barcode"])) == set(zip(example_truth["sample"], example_truth["barcode"]))
    assert len(cells) == len(example_truth)
    failed = cells[~cells["qc_pass"]]
    assert (failed["fail_reason"] != "").all()
    assert (cells.loc[cells["qc_pass"], "fail_reason"] == "").all()


def test_qc_removes_dying_cells_and_doublets_but_keeps_healthy_singlets(example_run, example_truth):
    cells = read_cells(example_run).merge(example_truth, on=["sample", "barcode"])
    dying = cells["is_dying"].astype(str) == "True"
    doublet = cells["is_doublet"].astype(str) == "True"
    removed = ~cells["qc_pass"]
    assert removed[dying].mean() >= 0.90, f"dying cells removed: {removed[dying].mean():.1%}"
    assert removed[doublet].mean() >= 0.60, f"doublets removed: {removed[doublet].mean():.1%}"
    healthy = ~dying & ~doublet
    assert removed[healthy].mean() <= 0.05, f"healthy singlets lost: {removed[healthy].mean():.1%}"


def test_qc_summary_counts_agree_with_cells_table(example_run):
    summary = pd.read_csv(example_run / "results" / "qc" / "summary.tsv", sep="\t")
    cells = read_cells(example_run)
    summary = summary.set_index("sample")
    per_sample = cells.groupby("sample")["qc_pass"].agg(["size", "sum"]).reindex(summary.index)
    assert (summary["cells_in"] == per_sample["size"]).all()
    assert (summary["cells_out"] == per_sample["sum"]).all()
    for column in ["donor", "timepoint", "failed_high_pct_mt", "failed_doublet", "max_pct_mt", "min_total_counts",
                   "doublet_score_threshold"]:
        assert column in summary.columns
    assert (summary["max_pct_mt"] <= 8).all()


def test_leiden_recovers_true_cell_types(example_run, example_truth):
    clusters = pd.read_csv(example_run / "results" / "clustering" / "clusters.tsv.gz", sep="\t", dtype=str)
    assert list(clusters.columns) == ["sample", "barcode", "leiden_0.3", "leiden_0.5", "leiden_0.8", "leiden_1",
                                      "umap_1", "umap_2"]
    merged = clusters.merge(example_truth, on=["sample", "barcode"])
    assert len(merged) == len(clusters)
    ari = adjusted_rand_score(merged["cell_type"], merged["leiden_0.8"])
    assert ari >= 0.7, f"ARI at the default resolution: {ari:.3f}"


def test_clustered_object_keeps_counts_and_metadata(example_run):
    adata = ad.read_h5ad(example_run / "results" / "merged" / "clustered.h5ad")
    assert {"sample", "donor", "timepoint", "batch", "barcode", "leiden_0.8"} <= set(adata.obs.columns)
    counts = adata.layers["counts"]
    assert np.allclose(counts.data, np.round(counts.data))
    assert adata.obsm["X_umap"].shape == (adata.n_obs, 2)
    assert adata.var["highly_variable"].sum() == 2000
    # Artefact genes are never highly variable.
    assert not adata.var.loc[adata.var_names.str.startswith("MT-"), "highly_variable"].any()
    assert adata.n_obs > 5000  # the pynndescent code path of sc.pp.neighbors (> 4096 cells) ran


def test_markers_and_figures_exist(example_run):
    markers = pd.read_csv(example_run / "results" / "clustering" / "markers.tsv", sep="\t")
    assert {"cluster", "gene", "score", "log2_fold_change", "padj", "cells_tested"} <= set(markers.columns)
    assert (markers["cells_tested"] <= 500).all()
    # The CD14-monocyte cluster's top markers include canonical monocyte genes.
    top = markers[markers["rank"] <= 25].groupby("cluster")["gene"].apply(set)
    assert any({"LYZ", "S100A8", "CD14"} & genes for genes in top)
    figures = example_run / "results" / "figures"
    for name in ["qc/summary", "qc/D1_pre", "clustering/umap_sample", "clustering/umap_condition",
                 "clustering/umap_clusters", "clustering/marker_dotplot"]:
        for suffix in (".png", ".pdf"):
            assert (figures / f"{name}{suffix}").stat().st_size > 5000, name


def test_nothing_left_to_do_and_report_builds(example_run):
    dry = run_snakemake(example_run, "--config", f"samples={example_run / 'samples.tsv'}", "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    run_snakemake(example_run, "--config", f"samples={example_run / 'samples.tsv'}", "--report", "report.html")
    html = (example_run / "report.html").read_text(errors="ignore")
    assert "umap_clusters.png" in html and "marker_dotplot.png" in html
