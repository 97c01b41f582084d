"""Merged stage, clustering: Leiden at several resolutions, cluster markers, group expression.

Leiden (Traag et al. 2019) with igraph's implementation and a fixed seed; markers by the Wilcoxon
test on a stratified subsample of cells, for cluster identity only (never the treatment contrast).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from pbmc_prepost.settings import ClusterSettings

log = logging.getLogger(__name__)


def leiden_key(resolution: float) -> str:
    """obs column name of the Leiden clustering at ``resolution`` (``leiden_0.8``)."""
    return f"leiden_{resolution:g}"


def cluster(adata: ad.AnnData, settings: ClusterSettings) -> list[str]:
    """Leiden (igraph flavour) at every resolution; clusters numbered by size, largest = 0.

    The labels are scanpy's ``tl.leiden(flavor="igraph", directed=False)`` (tested equal), but the
    igraph graph is built once for all resolutions and from arrays: scanpy rebuilds it for every
    call from a Python list of edge tuples, most of a minute and several GB at 760k cells.
    """
    from natsort import natsorted
    from scanpy._utils.random import set_igraph_random_state  # the seeding scanpy's leiden uses

    graph = leiden_graph(adata.obsp["connectivities"])
    keys = []
    for resolution in settings.resolutions:
        key = leiden_key(resolution)
        with set_igraph_random_state(settings.seed):
            part = graph.community_leiden(
                objective_function="modularity",
                weights="weight",
                resolution=resolution,
                n_iterations=settings.n_iterations,
            )
        groups = np.array(part.membership).astype("U")
        labels = pd.Series(pd.Categorical(groups, categories=natsorted(np.unique(groups))), index=adata.obs_names)
        # Renumber by size so labels do not depend on igraph's internal order.
        sizes = labels.value_counts()
        mapping = {old: str(new) for new, old in enumerate(sizes.index)}
        adata.obs[key] = pd.Categorical(labels.map(mapping), categories=[str(i) for i in range(len(sizes))])
        log.info("leiden resolution %g: %d clusters", resolution, len(sizes))
        keys.append(key)
    return keys


def leiden_graph(adjacency: sp.spmatrix):
    """The undirected weighted igraph graph scanpy's leiden builds from ``adjacency`` (every stored
    non-zero entry an edge, in row-major order, weight its value), built from arrays."""
    import igraph

    coo = sp.coo_matrix(adjacency)
    nonzero = coo.data != 0
    edges = np.column_stack([coo.row[nonzero], coo.col[nonzero]]).astype(np.int64)
    graph = igraph.Graph(n=adjacency.shape[0], edges=edges, directed=False)
    graph.es["weight"] = coo.data[nonzero].astype(np.float64)
    return graph


def stratified_subsample(labels: pd.Series, max_per_group: int, seed: int) -> np.ndarray:
    """Positions of at most ``max_per_group`` randomly chosen cells per label (sorted)."""
    rng = np.random.default_rng(seed)
    positions = []
    codes = pd.Categorical(labels)
    for code in range(len(codes.categories)):
        members = np.flatnonzero(codes.codes == code)
        if len(members) > max_per_group:
            members = rng.choice(members, max_per_group, replace=False)
        positions.append(members)
    return np.sort(np.concatenate(positions)) if positions else np.array([], dtype=int)


#: Fewest cells of a cluster tested for marker genes.
MIN_MARKER_CELLS = 3
MARKER_COLUMNS = [
    "cluster",
    "rank",
    "gene",
    "score",
    "log2_fold_change",
    "pvalue",
    "padj",
    "fraction_in_cluster",
    "fraction_in_rest",
    "cells_tested",
]


def cluster_markers(
    adata: ad.AnnData, groupby: str, max_cells_per_cluster: int, n_genes: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Wilcoxon marker genes per cluster on a stratified subsample of cells, and the clusters left out.

    Cell-level tests are used for cluster markers only, never for the treatment contrast. The
    subsample caps the cost on large data (every cluster keeps up to ``max_cells_per_cluster``
    cells) and is recorded in the ``cells_tested`` column. A cluster of fewer than
    :data:`MIN_MARKER_CELLS` cells has no rank statistics of its own and is left out (logged),
    its cells staying in the rest the others are tested against.
    """
    from pbmc_prepost.runtime import import_scanpy

    sc = import_scanpy()

    positions = stratified_subsample(adata.obs[groupby], max_cells_per_cluster, seed)
    sub = adata[positions]
    sub = ad.AnnData(X=sub.X, obs=sub.obs[[groupby]].copy(), var=pd.DataFrame(index=sub.var_names))
    counts = sub.obs[groupby].value_counts()
    tested = [c for c in sub.obs[groupby].cat.categories if counts.get(c, 0) >= MIN_MARKER_CELLS]
    if len(tested) < len(counts):
        log.warning(
            "cluster markers: cluster(s) %s have fewer than %d cells and are not tested",
            ", ".join(str(c) for c in counts.index if c not in tested),
            MIN_MARKER_CELLS,
        )
    untested = pd.DataFrame(
        {
            "cluster": [str(c) for c in counts.index if c not in tested],
            "n_cells": [int(n) for c, n in counts.items() if c not in tested],
        }
    )
    untested["reason"] = f"fewer than {MIN_MARKER_CELLS} cells"
    if not tested or len(counts) < 2:
        return pd.DataFrame(columns=MARKER_COLUMNS), untested
    groups = "all" if len(tested) == len(counts) else tested
    sc.tl.rank_genes_groups(
        sub, groupby=groupby, groups=groups, reference="rest", method="wilcoxon", pts=True, tie_correct=True
    )
    table = sc.get.rank_genes_groups_df(sub, group=None)
    table = table.rename(
        columns={
            "group": "cluster",
            "names": "gene",
            "scores": "score",
            "logfoldchanges": "log2_fold_change",
            "pvals": "pvalue",
            "pvals_adj": "padj",
            "pct_nz_group": "fraction_in_cluster",
            "pct_nz_reference": "fraction_in_rest",
        }
    )
    table["cells_tested"] = table["cluster"].map(counts).astype(int)
    table["rank"] = table.groupby("cluster", observed=True).cumcount() + 1
    table = table[table["rank"] <= n_genes]
    return table[MARKER_COLUMNS].reset_index(drop=True), untested


def group_expression(adata: ad.AnnData, groupby: str, genes: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean log-normalized expression and fraction of cells expressing, per group x gene."""
    sub = adata[:, list(genes)]
    matrix = sub.X.toarray() if sp.issparse(sub.X) else np.asarray(sub.X)
    frame = pd.DataFrame(matrix, columns=list(genes))
    labels = adata.obs[groupby].to_numpy()
    mean = frame.groupby(labels, sort=True).mean()
    fraction = (frame > 0).groupby(labels, sort=True).mean()
    order = sorted(mean.index, key=lambda v: (not str(v).isdigit(), int(v) if str(v).isdigit() else 0, str(v)))
    return mean.loc[order], fraction.loc[order]


def cluster_table(embedding: ad.AnnData, settings: ClusterSettings) -> pd.DataFrame:
    """Leiden at every resolution of ``settings``: ``sample``, ``barcode`` and one column per
    resolution (the UMAP's coordinates are in their own table,
    :func:`pbmc_prepost.preprocess.layout_table`)."""
    keys = cluster(embedding, settings)
    return embedding.obs[["sample", "barcode", *keys]].copy()


def write_clustered(
    merged_path: str | Path,
    embedding: ad.AnnData,
    clusters: pd.DataFrame,
    path: str | Path,
    layout: ad.AnnData | None = None,
) -> None:
    """``results/merged/clustered.h5ad``: the merged counts, their shifted-log values in ``X``, the
    embedding, the UMAP (``layout``, :func:`pbmc_prepost.preprocess.layout_embedding`) and the
    Leiden columns, written block by block of cells.

    The counts and ``X`` (computed from them, :func:`pbmc_prepost.normalization.shifted_log`) are
    written one block of rows at a time, so memory holds one block, not the matrices. The file is
    about twice the merged one (23 GB at 760k cells): HDF5 dies with a segmentation fault, not an
    error, when the disk fills while it writes.
    """
    import h5py

    from pbmc_prepost.h5ad import CsrWriter, dict_group, iter_row_blocks, read_h5ad_parts
    from pbmc_prepost.normalization import shifted_log

    check_free_disk(path, 2 * Path(merged_path).stat().st_size)
    skeleton = read_h5ad_parts(merged_path, x=False)
    attach_clustering(skeleton, embedding, clusters, layout)
    skeleton.write_h5ad(path)
    factors = skeleton.obs["size_factor"].to_numpy()
    with h5py.File(path, "r+") as target:
        layers = dict_group(target, "layers")
        for group, name in ((layers, "counts"), (target, "X")):
            if name in group:
                del group[name]
        counts, logged = CsrWriter(layers, "counts"), CsrWriter(target, "X")
        for start, stop, block in iter_row_blocks(merged_path, "layers/counts"):
            counts.append(block)
            logged.append(shifted_log(block, factors[start:stop]))


def check_free_disk(path: str | Path, needed_bytes: int) -> None:
    """Raise before writing ``path`` if its file system has less than ``needed_bytes`` free."""
    import shutil

    folder = Path(path).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise OSError(
            f"{path}: about {needed_bytes / 1e9:.1f} GB are needed to write it and {folder} has "
            f"{free / 1e9:.1f} GB free; free space there or run the workflow from a larger disk "
            "(HDF5 crashes without an error when the disk fills while it writes)"
        )


def attach_clustering(
    adata: ad.AnnData, embedding: ad.AnnData, clusters: pd.DataFrame, layout: ad.AnnData | None = None
) -> None:
    """Add the embedding step's var, obsm, obsp and uns, the layout's obsm and uns and the Leiden
    columns to ``adata`` in place."""
    for name, part in (("embedding", embedding), ("layout", layout)):
        if part is None:
            continue
        if list(part.obs_names) != list(adata.obs_names):
            raise ValueError(f"{name} and counts disagree on cells")
        adata.obsm.update(part.obsm)
        adata.uns.update(part.uns)
    for column in embedding.var.columns:
        adata.var[column] = embedding.var[column]
    adata.obsp.update(embedding.obsp)
    attach_leiden(adata, clusters)


def read_annotation_input(
    merged_path: str | Path, embedding_path: str | Path, clusters_path: str | Path, genes: Sequence[str]
) -> ad.AnnData:
    """What the annotation reads of the run, without waiting for ``clustered.h5ad``: the
    shifted-log values of ``genes`` from the merged counts, the kNN graph and the Leiden columns."""
    from pbmc_prepost.h5ad import read_h5ad_parts
    from pbmc_prepost.normalization import read_shifted_log
    from pbmc_prepost.tables import read_tsv

    adata = read_shifted_log(merged_path, genes=genes)
    graph = read_h5ad_parts(embedding_path, x=False, obsp=["connectivities"])
    if list(graph.obs_names) != list(adata.obs_names):
        raise ValueError(f"{embedding_path} and {merged_path} disagree on cells: rerun embed_cells")
    adata.obsp["connectivities"] = graph.obsp["connectivities"]
    attach_leiden(adata, read_tsv(clusters_path, dtype=str))
    return adata


def attach_leiden(adata: ad.AnnData, clusters: pd.DataFrame) -> None:
    """Add the ``leiden_*`` columns of the clusters table (same cells, same order) to ``adata.obs``
    in place, as categories in numeric order."""
    from pbmc_prepost.design import cell_key

    keys = cell_key(clusters["sample"].astype(str), clusters["barcode"].astype(str))
    if len(clusters) != adata.n_obs or not (np.asarray(keys) == adata.obs_names.to_numpy()).all():
        raise ValueError("the clusters table and the cells disagree (not the same run's files?)")
    for column in clusters.columns:
        if column.startswith("leiden_"):
            levels = sorted(clusters[column].unique(), key=int)
            adata.obs[column] = pd.Categorical(clusters[column].to_numpy(), categories=levels)
