"""Merged-stage logic: merge, normalization, HVG exclusions, Harmony, Leiden numbering, markers."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import NearestNeighbors

from pbmc_prepost import cluster, preprocess
from pbmc_prepost.design import Study
from pbmc_prepost.h5ad import H5adFiles
from pbmc_prepost.settings import ClusterSettings, EmbedSettings, MergeSettings

from conftest import CONTRAST, settings_of

SAMPLES = ["D1_pre", "D1_post", "D2_pre", "D2_post"]


def merge_settings(min_cells_per_gene: int = 3, columns=("donor", "timepoint", "batch")) -> MergeSettings:
    """Two donors x pre/post; donor 2 in a batch of its own."""
    meta = pd.DataFrame(
        {"donor": ["D1", "D1", "D2", "D2"], "timepoint": ["pre", "post"] * 2, "batch": ["b1", "b1", "b2", "b2"]},
        index=pd.Index(SAMPLES, name="sample"),
    )
    study = Study.from_sheet(meta[list(columns)], CONTRAST)
    return settings_of(MergeSettings, min_cells_per_gene=min_cells_per_gene, study=study)


def embed_settings(**changes) -> EmbedSettings:
    return settings_of(EmbedSettings, **changes)


@pytest.fixture(scope="module")
def samples(cohort):
    """Two donors' singlets of the shared cohort, as the per-sample QC writes them."""
    objects = {}
    for sample in SAMPLES:
        adata = cohort.samples[sample]
        adata = adata[~adata.obs["is_doublet"].to_numpy() & ~adata.obs["is_dying"].to_numpy()].copy()
        adata.obs["barcode"] = adata.obs_names
        adata.obs_names = [f"{sample}:{b}" for b in adata.obs_names]
        objects[sample] = adata
    return objects


def merged_from(samples, batch_effect: bool = False):
    objects = {s: a.copy() for s, a in samples.items()}
    if batch_effect:
        # A technical batch: donor 2's library prep triples 300 genes.
        genes = np.random.default_rng(0).choice(objects["D2_pre"].n_vars, 300, replace=False)
        factor = np.ones(objects["D2_pre"].n_vars)
        factor[genes] = 3
        for s in ("D2_pre", "D2_post"):
            objects[s].X = sp.csr_matrix(np.round(objects[s].X.toarray() * factor).astype(np.float32))
    merged = preprocess.merge_samples(objects, merge_settings())
    preprocess.normalize(merged, None)
    return merged


def test_merge_keeps_raw_counts_and_sample_metadata(samples):
    merged = merged_from(samples)
    assert merged.n_obs == sum(a.n_obs for a in samples.values())
    assert list(merged.obs["sample"].cat.categories) == sorted(samples)
    assert (merged.obs.loc[merged.obs["sample"] == "D2_post", "timepoint"] == "post").all()
    counts = merged.layers["counts"]
    assert np.allclose(counts.data, np.round(counts.data))
    assert not np.allclose(merged.X.data, np.round(merged.X.data))  # X is log-normalized
    first = merged.obs_names[0]
    sample, _barcode = first.split(":")
    original = samples[sample][first]
    assert np.allclose(counts[0].toarray().ravel(), original[:, merged.var_names].X.toarray().ravel())


def test_merge_drops_genes_missing_from_a_sample(samples):
    objects = {s: a.copy() for s, a in samples.items()}
    objects["D1_pre"] = objects["D1_pre"][:, 10:].copy()
    merged = preprocess.merge_samples(objects, merge_settings(0, columns=("donor",)))
    assert merged.n_vars == samples["D1_pre"].n_vars - 10


def test_hvg_selection_never_picks_excluded_genes(samples):
    merged = merged_from(samples)
    preprocess.select_hvgs(
        merged, embed_settings(n_top_genes=500, hvg_batch_key="sample", hvg_exclude_patterns=("^MT-", "^RP[SL]"))
    )
    hv = merged.var_names[merged.var["highly_variable"]]
    assert len(hv) == 500
    assert not any(g.startswith(("MT-", "RPS", "RPL")) for g in hv)


def test_per_batch_hvg_ranking_matches_scanpy_when_every_batch_fits(samples):
    """Our per-batch seurat_v3 (fitted batch by batch so that one batch can fail) selects what
    scanpy's ``batch_key`` path selects, when no gene is seen in fewer than 3 cells of a batch."""
    import scanpy as sc

    merged = merged_from(samples)
    counts = merged.layers["counts"]
    everywhere = np.ones(merged.n_vars, dtype=bool)
    for sample in SAMPLES:
        rows = (merged.obs["sample"] == sample).to_numpy()
        everywhere &= np.asarray((counts[rows] > 0).sum(axis=0)).ravel() >= preprocess.MIN_CELLS_PER_GENE
    merged = merged[:, everywhere].copy()
    report = preprocess.select_hvgs(
        merged, embed_settings(n_top_genes=500, hvg_batch_key="sample", hvg_exclude_patterns=())
    )
    assert list(report["status"]) == ["own"] * 4
    expected = sc.pp.highly_variable_genes(
        merged, flavor="seurat_v3", layer="counts", batch_key="sample", n_top_genes=500, inplace=False
    )["highly_variable"].to_numpy()
    assert (merged.var["highly_variable"].to_numpy() == expected).all()


def shallow_batch(n_cells: int, n_expressed: int, n_seen_once: int, seed: int) -> ad.AnnData:
    """A sample like real shallow 10x data: some genes expressed throughout, many more seen once
    in one cell (real data measure some 20,000 genes; most are that rare)."""
    import anndata as ad

    rng = np.random.default_rng(seed)
    means = rng.lognormal(-1, 1.2, n_expressed)
    expressed = rng.poisson(means[None, :] * rng.lognormal(0, 0.4, (n_cells, 1)))
    once = np.zeros((n_cells, n_seen_once))
    once[rng.integers(0, n_cells, n_seen_once), np.arange(n_seen_once)] = 1
    counts = sp.csr_matrix(np.hstack([expressed, once]).astype(np.float32))
    names = [f"G{i}" for i in range(counts.shape[1])]
    return ad.AnnData(counts, var=pd.DataFrame(index=names), layers={"counts": counts.copy()})


def test_rare_genes_made_seurat_v3_singular_and_are_left_out_of_the_fit():
    """Why real samples broke the per-sample loess where simulated ones did not: thousands of genes
    seen once, in one cell, share one mean and one variance. scanpy's fit fails on them; ours fits
    the genes seen in 3 or more cells, and the selection comes from the expressed genes."""
    import anndata as ad
    import scanpy as sc

    batches = [shallow_batch(n, 3000, 12000, seed) for seed, n in enumerate((120, 300, 40))]
    with pytest.raises(ValueError):
        sc.pp.highly_variable_genes(batches[1].copy(), flavor="seurat_v3", layer="counts", n_top_genes=500)
    merged = ad.concat(batches, label="sample", keys=["S1", "S2", "S3"], index_unique=":")
    normalized = merged.copy()
    preprocess.normalize(normalized, None)
    report = preprocess.select_hvgs(
        normalized, embed_settings(n_top_genes=500, hvg_batch_key="sample", hvg_exclude_patterns=())
    )
    assert list(report["status"]) == ["own"] * 3, report
    selected = normalized.var_names[normalized.var["highly_variable"]]
    assert len(selected) == 500 and all(int(g[1:]) < 3000 for g in selected)


def test_a_batch_that_cannot_be_fitted_is_left_out_and_named(samples):
    merged = merged_from(samples)
    tiny = merged.obs_names[merged.obs["sample"] == "D2_post"][:5]  # 5 cells: no gene in 3 of them varies enough
    merged = merged[~merged.obs_names.isin(merged.obs_names[merged.obs["sample"] == "D2_post"].difference(tiny))].copy()
    merged.layers["counts"][merged.obs["sample"].to_numpy() == "D2_post"] = 0
    report = preprocess.select_hvgs(
        merged, embed_settings(n_top_genes=500, hvg_batch_key="sample", hvg_exclude_patterns=())
    )
    row = report.set_index("batch").loc["D2_post"]
    assert row["status"] == "left out" and "own fit failed" in row["detail"], report
    assert (report.set_index("batch").drop("D2_post")["status"] == "own").all()
    assert merged.var["highly_variable"].sum() == 500


def test_harmony_mixes_a_technical_batch_and_clusters_find_cell_types(samples):
    merged = merged_from(samples, batch_effect=True)
    settings = embed_settings(
        n_top_genes=1000,
        hvg_exclude_patterns=("^MT-",),
        n_comps=30,
        integration="harmony",
        integration_key="batch",
        n_pcs=20,
    )
    preprocess.select_hvgs(merged, settings)
    rep = preprocess.embed(merged, settings)
    assert rep == "X_pca_harmony"

    def same_batch_share(embedding):
        neighbours = NearestNeighbors(n_neighbors=16).fit(embedding).kneighbors(embedding, return_distance=False)[:, 1:]
        batch = merged.obs["batch"].to_numpy()
        return (batch[neighbours] == batch[:, None]).mean()

    assert same_batch_share(merged.obsm["X_pca_harmony"][:, :20]) < same_batch_share(merged.obsm["X_pca"][:, :20]) - 0.1
    keys = cluster.cluster(merged, settings_of(ClusterSettings, resolutions=(0.5,)))
    labels = merged.obs[keys[0]]
    sizes = labels.value_counts()
    assert list(sizes.index) == [str(i) for i in range(len(sizes))]  # numbered by size
    truth = pd.concat([a.obs["cell_type"] for a in samples.values()]).loc[merged.obs_names]
    assert adjusted_rand_score(truth, labels) > 0.6


def test_leiden_labels_equal_scanpys_at_every_resolution(samples):
    """cluster() builds igraph's graph once, from arrays: the labels are sc.tl.leiden's, renumbered."""
    import scanpy as sc

    merged = merged_from(samples)
    settings = embed_settings(n_top_genes=500, hvg_batch_key=None, n_pcs=20)
    preprocess.select_hvgs(merged, settings)
    preprocess.embed(merged, settings)
    clustering = settings_of(ClusterSettings, resolutions=(0.3, 1.0, 2.0), n_iterations=2)
    keys = cluster.cluster(merged, clustering)
    for key, resolution in zip(keys, clustering.resolutions):
        sc.tl.leiden(
            merged,
            resolution=resolution,
            key_added="scanpy",
            flavor="igraph",
            n_iterations=2,
            directed=False,
            random_state=clustering.seed,
        )
        assert merged.obs["scanpy"].nunique() == merged.obs[key].nunique() > 1
        pairs = pd.crosstab(merged.obs["scanpy"], merged.obs[key])
        assert ((pairs > 0).sum(axis=1) == 1).all() and ((pairs > 0).sum(axis=0) == 1).all(), resolution


def test_large_cohort_layout_is_fitted_on_a_subsample_and_the_rest_placed_with_their_types(samples):
    """Above umap.fit_max_cells the layout is fitted on a per-sample share of the cells and the rest
    placed from the graph: placed cells land among fitted cells of their own type."""
    merged = merged_from(samples)
    settings = embed_settings(n_top_genes=500, hvg_batch_key=None, n_pcs=20, umap_fit_max_cells=600)
    preprocess.select_hvgs(merged, settings)
    preprocess.layout(merged, preprocess.embed(merged, settings), settings)
    assert merged.uns["umap"]["fitted_cells"] == pytest.approx(600, abs=len(samples))
    layout = merged.obsm["X_umap"]
    assert layout.shape == (merged.n_obs, 2) and np.isfinite(layout).all()
    truth = pd.concat([a.obs["cell_type"] for a in samples.values()]).loc[merged.obs_names].to_numpy()
    fitted = preprocess.proportional_subsample(merged.obs["sample"], 600, settings.seed)
    placed = np.setdiff1d(np.arange(merged.n_obs), fitted)
    nearest = NearestNeighbors(n_neighbors=5).fit(layout[fitted]).kneighbors(layout[placed], return_distance=False)
    placed_agree = (truth[fitted][nearest] == truth[placed][:, None]).mean()
    own = NearestNeighbors(n_neighbors=6).fit(layout[fitted]).kneighbors(layout[fitted], return_distance=False)[:, 1:]
    fitted_agree = (truth[fitted][own] == truth[fitted][:, None]).mean()
    # Placed cells find their own type among their nearest fitted cells about as often as fitted
    # cells do among each other (0.84 against 0.85 here; cells at random positions: about 0.15).
    assert placed_agree > 0.7 and placed_agree > fitted_agree - 0.05
    again = merged_from(samples)
    preprocess.select_hvgs(again, settings)
    preprocess.layout(again, preprocess.embed(again, settings), settings)
    assert np.array_equal(again.obsm["X_umap"], layout)  # seeded: the same figure every run


def test_cells_are_placed_at_the_weighted_mean_of_their_placed_neighbours():
    """Chain 0-1-2-3-4 with 0 and 4 fitted, 6 linked to both, and 7-8 cut off from every fitted cell."""
    edges = {(0, 1): 1.0, (1, 2): 1.0, (2, 3): 3.0, (3, 4): 1.0, (0, 6): 1.0, (4, 6): 3.0, (7, 8): 1.0}
    graph = sp.lil_matrix((9, 9))
    for (a, b), w in edges.items():
        graph[a, b] = graph[b, a] = w
    fitted = np.zeros(9, dtype=bool)
    fitted[[0, 4]] = True
    layout = preprocess.place_on_layout(graph, fitted, np.array([[0.0, 0.0], [4.0, 2.0]]))
    assert layout[[0, 4]].tolist() == [[0, 0], [4, 2]]
    assert layout[6].tolist() == [3, 1.5]  # weights 1 and 3
    assert layout[1].tolist() == [0, 0] and layout[3].tolist() == [4, 2]  # round one: their one fitted neighbour
    assert layout[2].tolist() == [3, 1.5]  # round two: from 1 and 3, placed before it
    assert layout[5].tolist() == layout[7].tolist() == layout[8].tolist() == [2, 1]  # no path: the centre


def test_proportional_subsample_keeps_each_sample_share():
    labels = pd.Series(["a"] * 900 + ["b"] * 100 + ["c"] * 2)
    chosen = preprocess.proportional_subsample(labels, 100, seed=0)
    counts = labels.iloc[chosen].value_counts()
    assert counts["a"] == 90 and counts["b"] == 10 and counts["c"] == 1
    assert np.array_equal(chosen, np.sort(chosen)) and len(set(chosen)) == len(chosen)


def test_harmony_with_one_batch_is_skipped(samples):
    merged = merged_from(samples)
    merged.obs["batch"] = "only"
    settings = embed_settings(
        n_top_genes=500,
        hvg_batch_key=None,
        hvg_exclude_patterns=(),
        n_comps=20,
        integration="harmony",
        integration_key="batch",
        n_pcs=20,
    )
    preprocess.select_hvgs(merged, settings)
    assert preprocess.embed(merged, settings) == "X_pca"


def test_stratified_subsample_caps_every_group():
    labels = pd.Series(["a"] * 1000 + ["b"] * 30 + ["c"] * 5)
    picked = cluster.stratified_subsample(labels, 100, seed=0)
    counts = labels.iloc[picked].value_counts()
    assert counts["a"] == 100 and counts["b"] == 30 and counts["c"] == 5
    assert np.array_equal(picked, cluster.stratified_subsample(labels, 100, seed=0))


def test_cluster_markers_find_planted_markers(samples):
    merged = merged_from(samples)
    truth = pd.concat([a.obs["cell_type"] for a in samples.values()]).loc[merged.obs_names]
    merged.obs["truth"] = pd.Categorical(truth)
    markers, untested = cluster.cluster_markers(merged, "truth", max_cells_per_cluster=100, n_genes=30, seed=0)
    assert untested.empty
    assert (markers["cells_tested"] <= 100).all()
    top = markers.groupby("cluster", observed=True)["gene"].apply(set)
    assert {"S100A8", "S100A9", "CD14", "LYZ", "VCAN", "FCN1"} & top["CD14 mono"]
    assert {"MS4A1", "CD79A", "CD79B", "IGHD", "TCL1A"} & top["B naive"]


def test_merge_filters_genes_like_scanpy_filter_genes(samples):
    """Filtering per sample before concatenating keeps exactly the genes scanpy's filter_genes keeps."""
    import anndata as ad
    import scanpy as sc

    merged = preprocess.merge_samples({s: a.copy() for s, a in samples.items()}, merge_settings(20, ("donor",)))
    reference = ad.concat([samples[s] for s in samples], join="inner")
    sc.pp.filter_genes(reference, min_cells=20)
    assert 0 < reference.n_vars < samples["D1_pre"].n_vars  # the threshold drops some genes, not all
    assert list(merged.var_names) == list(reference.var_names)
    assert (merged.layers["counts"] != sp.csr_matrix(reference.X, dtype=np.float32)).nnz == 0


def test_merge_reads_samples_from_files_one_at_a_time(samples, tmp_path):
    """H5adFiles loads on access: the merge from files equals the merge from objects in memory."""
    settings = merge_settings(20, ("donor",))
    paths = {}
    for name, adata in samples.items():
        paths[name] = tmp_path / f"{name}.h5ad"
        adata.write_h5ad(paths[name])
    files = H5adFiles(paths)
    assert files["D1_pre"] is not files["D1_pre"]  # nothing is kept between accesses
    from_files = preprocess.merge_samples(files, settings)
    in_memory = preprocess.merge_samples({s: a.copy() for s, a in samples.items()}, settings)
    assert list(from_files.obs_names) == list(in_memory.obs_names)
    assert list(from_files.var_names) == list(in_memory.var_names)
    assert (from_files.layers["counts"] != in_memory.layers["counts"]).nnz == 0
    assert list(from_files.obs["sample"]) == list(in_memory.obs["sample"])


def test_write_merged_on_disk_equals_the_merge_in_memory(samples, tmp_path, monkeypatch):
    """The workflow's merge, written sample by sample, holds the in-memory merge's counts, obs and
    var, and size factors whose shifted log is scanpy's normalize_total + log1p bit for bit."""
    import pbmc_prepost.h5ad as h5ad_module
    from pbmc_prepost.h5ad import read_h5ad_parts

    monkeypatch.setattr(h5ad_module, "CHUNK_VALUES", 1000)  # many chunks, appended across samples
    settings = merge_settings(3)
    path = tmp_path / "merged.h5ad"
    preprocess.write_merged({s: a.copy() for s, a in samples.items()}, settings, path)
    on_disk = ad.read_h5ad(path)
    in_memory = merged_from(samples)
    assert on_disk.X is None and list(on_disk.layers) == ["counts"]  # one cells x genes matrix
    assert list(on_disk.obs_names) == list(in_memory.obs_names)
    assert list(on_disk.var_names) == list(in_memory.var_names)
    assert (on_disk.layers["counts"] != in_memory.layers["counts"]).nnz == 0
    pd.testing.assert_frame_equal(on_disk.obs.drop(columns="size_factor"), in_memory.obs)
    logged = preprocess.shifted_log(on_disk.layers["counts"], on_disk.obs["size_factor"].to_numpy())
    assert logged.dtype == in_memory.X.dtype and np.array_equal(logged.toarray(), in_memory.X.toarray())
    # Any subset of genes gets the same values as the whole matrix: the size factors hold all genes.
    some = read_h5ad_parts(path, x=False, layers=["counts"], genes=list(on_disk.var_names[::7]))
    part = preprocess.shifted_log(some.layers["counts"], some.obs["size_factor"].to_numpy())
    assert np.array_equal(part.toarray(), in_memory[:, some.var_names].X.toarray())
    assert on_disk.uns["normalization"]["target_sum"] == pytest.approx(
        np.median(np.asarray(in_memory.layers["counts"].sum(axis=1)).ravel())
    )


def test_shifted_log_matches_scanpy_for_a_given_target_and_empty_cells():
    import scanpy as sc

    counts = sp.random(40, 30, density=0.2, format="csr", random_state=3, dtype=np.float32)
    counts.data = np.ceil(counts.data * 20)
    counts[5] = 0  # a cell without counts stays all zero, as in scanpy
    counts.eliminate_zeros()
    for target in (None, 1e4):
        reference = ad.AnnData(X=counts.copy())
        sc.pp.normalize_total(reference, target_sum=target)
        sc.pp.log1p(reference)
        totals = np.asarray(counts.sum(axis=1)).ravel()
        ours = preprocess.shifted_log(counts, preprocess.size_factors(totals, target)[0])
        assert np.array_equal(ours.toarray(), reference.X.toarray())


def test_clustered_file_is_written_in_blocks_with_the_shifted_log_in_x(samples, tmp_path, monkeypatch):
    import pbmc_prepost.h5ad as h5ad_module

    monkeypatch.setattr(h5ad_module, "ROW_BLOCK", 97)  # blocks that cut samples apart
    merged_path, path = tmp_path / "merged.h5ad", tmp_path / "clustered.h5ad"
    preprocess.write_merged({s: a.copy() for s, a in samples.items()}, merge_settings(3), merged_path)
    skeleton = ad.read_h5ad(merged_path)
    embedding = ad.AnnData(
        obs=skeleton.obs[["sample", "barcode"]].copy(),
        var=pd.DataFrame({"highly_variable": True, "hvg_excluded": False}, index=skeleton.var_names),
        obsp={"connectivities": sp.identity(skeleton.n_obs, format="csr")},
        uns={"graph_representation": "X_pca"},
    )
    layout = ad.AnnData(obs=embedding.obs.copy(), obsm={"X_umap": np.zeros((skeleton.n_obs, 2))}, uns={"umap": {}})
    clusters = skeleton.obs[["sample", "barcode"]].reset_index(drop=True)
    clusters["leiden_1"] = (np.arange(skeleton.n_obs) % 3).astype(str)
    cluster.write_clustered(merged_path, embedding, clusters, path, layout=layout)
    clustered = ad.read_h5ad(path)
    reference = merged_from(samples)
    assert np.array_equal(clustered.X.toarray(), reference.X.toarray())
    assert (clustered.layers["counts"] != reference.layers["counts"]).nnz == 0
    assert list(clustered.obs["leiden_1"].cat.categories) == ["0", "1", "2"]
    assert "X_umap" in clustered.obsm and "connectivities" in clustered.obsp and clustered.var["highly_variable"].all()
    # The annotation reads a few genes' values from the merged counts, not from this file: the same values.
    from pbmc_prepost.normalization import read_shifted_log

    genes = list(clustered.var_names[[0, 5, 17]])
    part = read_shifted_log(merged_path, genes=genes)
    assert list(part.obs_names) == list(clustered.obs_names)
    assert np.array_equal(part.X.toarray(), clustered[:, genes].X.toarray())
    # A clusters table of other cells is refused, not attached by position.
    with pytest.raises(ValueError, match="clusters table and the cells disagree"):
        cluster.attach_leiden(part, clusters.iloc[::-1].reset_index(drop=True))


def test_too_little_free_disk_stops_before_the_clustered_file_is_written(tmp_path, monkeypatch):
    """HDF5 crashes without a message when the disk fills: the check names the file and the space."""
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10**12, 10**12 - 10**9, 10**9))
    target = tmp_path / "merged" / "clustered.h5ad"
    with pytest.raises(OSError, match=r"clustered.h5ad: about 5.0 GB are needed .* 1.0 GB free"):
        cluster.check_free_disk(target, 5 * 10**9)
    cluster.check_free_disk(target, 10**8)  # enough room: no error
    assert not target.exists()


def test_hvgs_ranked_from_the_file_batch_by_batch_equal_those_in_memory(samples, tmp_path):
    """embed_merged ranks each batch from its rows in the merged file: the same genes and report as
    with every cell in memory."""
    from pbmc_prepost.h5ad import read_h5ad_parts

    path = tmp_path / "merged.h5ad"
    preprocess.write_merged({s: a.copy() for s, a in samples.items()}, merge_settings(3), path)
    settings = embed_settings(n_top_genes=500, hvg_batch_key="sample")
    in_memory = merged_from(samples)
    report = preprocess.select_hvgs(in_memory, settings)
    skeleton = read_h5ad_parts(path, x=False)
    from_file = preprocess.select_hvgs(skeleton, settings, counts_path=path)
    pd.testing.assert_frame_equal(from_file, report)
    assert skeleton.var["highly_variable"].equals(in_memory.var["highly_variable"])
    assert skeleton.var["highly_variable"].sum() == 500
