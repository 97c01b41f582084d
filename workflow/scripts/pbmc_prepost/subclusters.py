"""Sub-clusters of a cluster (Leiden on its part of the kNN graph) and label transfer from resting
cells (steps 4-5 of :mod:`pbmc_prepost.annotate`)."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pbmc_prepost.marker_table import MarkerTable

#: Cells a cluster needs before it is split into sub-clusters (twice as many for a clear one).
MIN_SPLIT_CELLS = 30
#: Resting cells of the same gate whose majority label a cycling cell takes.
TRANSFER_NEIGHBOURS = 15
#: Resting cells a gate's transfer samples at most (the vote needs no more, and 100k cells stay fast).
TRANSFER_REFERENCE_CELLS = 20_000


def _leiden(edges: sp.coo_matrix, n: int, seed: int) -> np.ndarray:
    """Leiden communities (modularity, resolution 1) of an undirected graph given as a sparse matrix."""
    import igraph

    keep = edges.row < edges.col
    network = igraph.Graph(n=n, edges=np.column_stack([edges.row[keep], edges.col[keep]]).tolist(), directed=False)
    weights = edges.data[keep].tolist()
    state = random.getstate()
    random.seed(seed)  # igraph's Leiden draws from Python's generator
    try:
        parts = network.community_leiden(
            objective_function="modularity", weights=weights, resolution=1.0, n_iterations=2
        )
    finally:
        random.setstate(state)
    return np.asarray(parts.membership, dtype=int)


def _split(values: pd.DataFrame, seed: int, graph: sp.spmatrix | None = None) -> np.ndarray:
    """Sub-clusters of one cluster's cells: Leiden on their part of the kNN graph when given, else on
    a 15-nearest-neighbour graph of their scaled identity markers (``values``).

    sklearn and igraph directly, not scanpy's neighbours: these small graphs need no approximate
    search, and the job then compiles no numba code.
    """
    if len(values) < MIN_SPLIT_CELLS:
        return np.zeros(len(values), dtype=int)
    if graph is not None:
        within = sp.coo_matrix(graph)
        within = sp.coo_matrix(within.maximum(within.T))
        return _leiden(within, len(values), seed)
    from sklearn.decomposition import PCA
    from sklearn.neighbors import kneighbors_graph

    matrix = values.to_numpy(np.float64)
    components = PCA(n_components=int(min(15, matrix.shape[0] - 1, matrix.shape[1] - 1)), random_state=seed)
    embedded = components.fit_transform(matrix - matrix.mean(axis=0))
    knn = kneighbors_graph(embedded, n_neighbors=int(min(15, len(matrix) - 1)), include_self=False)
    return _leiden(sp.coo_matrix(knn.maximum(knn.T)), len(matrix), seed)


def gate_genes(markers: MarkerTable, gate: str) -> list[str]:
    """Genes of the panels that tell a gate's lineages and subsets apart."""
    rows = [
        *markers.lineages[markers.lineages["gate"] == gate].itertuples(),
        *markers.identity[markers.identity["gate"] == gate].itertuples(),
    ]
    return sorted({g for row in rows for g in row.positive + row.negative})


def transfer_labels(
    features: np.ndarray, reference_rows: np.ndarray, reference_labels: np.ndarray, query_rows: np.ndarray, seed: int
) -> np.ndarray:
    """Majority label of each query cell's :data:`TRANSFER_NEIGHBOURS` nearest reference cells.

    Cells (rows of ``features``) are compared on a PCA (up to 10 components) fitted on the
    reference cells: a proliferating cell, whose cycle genes are left out, is placed among the
    resting cells its identity markers resemble.
    """
    from scipy.spatial import cKDTree

    if len(reference_rows) > TRANSFER_REFERENCE_CELLS:
        keep = np.random.default_rng(seed).choice(len(reference_rows), TRANSFER_REFERENCE_CELLS, replace=False)
        reference_rows, reference_labels = reference_rows[np.sort(keep)], reference_labels[np.sort(keep)]
    train = features[reference_rows].astype(np.float64)
    centre = train.mean(axis=0)
    # PCA by SVD (numpy; sklearn's import alone costs a second): signs do not change distances.
    _, _, axes = np.linalg.svd(train - centre, full_matrices=False)
    axes = axes[: int(min(10, train.shape[0] - 1, train.shape[1]))].T
    k = int(min(TRANSFER_NEIGHBOURS, len(reference_rows)))
    tree = cKDTree((train - centre) @ axes)
    _, neighbours = tree.query((features[query_rows].astype(np.float64) - centre) @ axes, k=k)
    neighbours = neighbours.reshape(len(query_rows), k)
    votes = reference_labels[neighbours]
    # The commonest label among the neighbours; a tie goes to the label of the nearest of them.
    winners = []
    for row in votes:
        labels, counts = np.unique(row, return_counts=True)
        tied = set(labels[counts == counts.max()])
        winners.append(next(label for label in row if label in tied))
    return np.asarray(winners, dtype=object)


def sub_clusters(
    clusters: pd.Series, split: list[str], features: pd.DataFrame, seed: int, graph: sp.spmatrix | None
) -> pd.Series:
    """Each cell's sub-cluster (``<cluster>/<part>``) within the ``split`` clusters; other cells keep
    their cluster id."""
    ids = clusters.to_numpy(dtype=object)
    parts = ids.copy()
    members_of = pd.Series(np.arange(len(ids))).groupby(ids).indices
    within = _within_cluster_edges(graph, ids, split) if graph is not None else {}
    for cluster in split:
        members = members_of[cluster]
        labels = _split(features.iloc[members], seed, within.get(cluster))
        parts[members] = [f"{cluster}/{part}" for part in labels]
    return pd.Series(parts, index=clusters.index)


def _within_cluster_edges(graph: sp.spmatrix, ids: np.ndarray, split: list[str]) -> dict[str, sp.coo_matrix]:
    """Per cluster of ``split``, its part of the kNN graph (its cells renumbered from 0), in one pass
    over the edges instead of one sparse slice per cluster."""
    edges = sp.coo_matrix(graph)
    codes, names = pd.factorize(ids)
    wanted = {name: code for code, name in enumerate(names) if name in set(split)}
    same = (codes[edges.row] == codes[edges.col]) & np.isin(codes[edges.row], list(wanted.values()))
    row, col, data = edges.row[same], edges.col[same], edges.data[same]
    local = np.empty(len(ids), dtype=np.int64)
    sizes = {}
    for code in wanted.values():
        members = np.flatnonzero(codes == code)
        local[members] = np.arange(len(members))
        sizes[code] = len(members)
    order = np.argsort(codes[row], kind="stable")
    row, col, data = row[order], col[order], data[order]
    bounds = np.searchsorted(codes[row], np.arange(len(names) + 1))
    return {
        name: sp.coo_matrix(
            (
                data[bounds[code] : bounds[code + 1]],
                (local[row[bounds[code] : bounds[code + 1]]], local[col[bounds[code] : bounds[code + 1]]]),
            ),
            shape=(sizes[code], sizes[code]),
        )
        for name, code in wanted.items()
    }
