"""Marker-based PBMC annotation built for shallow data: the evidence is pooled per cluster.

At 1,000-2,000 UMIs per cell most markers are missing from most cells (CD4 from 99 % of CD4 T
cells), and cytotoxic genes are shared between CD8 T and NK cells, so a cell's own markers cannot
decide its type. Every decision is therefore made on the share of a cluster's cells that detect
each marker of broad panels (``resources/markers/pbmc_markers.tsv``):

1. **Gate.** A cluster takes the lineage gate (T, NK, B, plasma, CD14 mono, CD16 mono, cDC, pDC,
   platelets, erythrocytes, granulocytes) whose panel it detects most above background (the 10th
   percentile of the clusters: ambient RNA included): the mean of the positive markers minus the
   mean of the negative ones, so that one missing or shared gene cannot flip the call and absence
   (CD3 in NK) counts as much as presence.
2. **Lineage within the gate** (CD4 T, CD8 T, other T): detection against the rest of the gate's
   cells, in units of a strong marker's span. CD8 T is CD8A/CD8B-enriched against the other T
   cells, CD4 T the T cells depleted of it.
3. **Subset** within the lineage, on the same relative evidence without the lineage's own genes.
4. **Unclear clusters** (a gate or lineage won by less than :data:`WEAK_MARGIN`) are split into
   sub-clusters, each labelled like a cluster (split again while unclear). With the kNN graph,
   clear clusters are sub-clustered too: sub-clusters that clearly name another lineage are pooled
   per cluster and, with :data:`MIN_PART_CELLS` cells or more, relabelled (small populations that
   share a cluster with a large one).
5. **Cycling clusters** (mostly proliferating cells, whose transcriptome the cell cycle dominates)
   keep the gates of their sub-clusters; each cell takes the subset of the resting cells of its
   gate it resembles most on the gate's markers, so proliferating CD4 and CD8 T cells keep their
   lineage.

A user-editable table (cluster -> cell type) overrides labels. :mod:`pbmc_prepost.annotation_checks`
then checks every label against the data.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from pbmc_prepost import InputError
from pbmc_prepost.cluster import leiden_key
from pbmc_prepost.settings import AnnotationSettings

log = logging.getLogger(__name__)

#: Floor of a gene's span in the per-cell expression scale (:class:`GeneScale`: per-cell scores,
#: the cycling score, the features of sub-clustering), as a share of the median marker's span: a
#: barely detected gene (CD4 in shallow data) cannot be blown up into a strong marker.
SCALE_FLOOR = 0.5
#: Quantile of the markers' detection spans that is the unit of relative evidence.
STRONG_MARKER_QUANTILE = 0.9
#: Fewest measured positive markers a panel needs to be scored (all of them for a panel defined by
#: fewer): two genes left of a broad panel are what one missing or shared gene can flip.
MIN_MARKERS = 3
#: Cells of the whole gate added to the rest a unit is compared with (a prior, so a small rest is
#: not taken at face value).
PRIOR_CELLS = 30
#: A gate or lineage won by less than this (detection units) is unclear: the cluster is split.
WEAK_MARGIN = 0.1
#: Cells a cluster needs before it is split into sub-clusters (twice as many for a clear one).
MIN_SPLIT_CELLS = 30
#: Cells a sub-cluster (or a pool of them) needs to take another gate or lineage than its cluster.
MIN_PART_CELLS = 20
#: Times a sub-cluster whose evidence is unclear is split again.
MAX_SPLIT_DEPTH = 2
#: Label of a cluster's cells decided by sub-clusters, and of an override.
HOW_CLUSTER, HOW_OVERRIDE = "cluster evidence", "override"
HOW_SPLIT = "cycling cluster: gates of sub-clusters, subsets from resting neighbours"
HOW_AMBIGUOUS = "sub-clusters (ambiguous evidence)"
HOW_REFINED = "cluster evidence; sub-clusters of another lineage relabelled"
#: Where a cell's label comes from (cells table column ``label_source``).
SOURCE_CLUSTER, SOURCE_PART, SOURCE_OVERRIDE = "cluster", "sub-cluster", "override"
SOURCE_RESTING = "resting neighbours"
#: Resting cells of the same gate whose majority label a cycling cell takes.
TRANSFER_NEIGHBOURS = 15
#: Resting cells a gate's transfer samples at most (the vote needs no more, and 100k cells stay fast).
TRANSFER_REFERENCE_CELLS = 20_000


@dataclass
class MarkerTable:
    """Gates, identity populations and state signatures of the marker table.

    ``gates`` is indexed by gate name (columns lineage, positive, negative); ``lineages`` by the
    lineages told apart within a gate, and ``identity`` by cell type (columns lineage, gate,
    positive, negative); ``states`` maps a state to its genes.
    """

    gates: pd.DataFrame
    lineages: pd.DataFrame
    identity: pd.DataFrame
    states: dict[str, list[str]]

    @property
    def lineage_of(self) -> dict[str, str]:
        """Label -> lineage; a lineage that labels a cluster itself (its subsets' markers were not
        measured) is its own lineage."""
        lineages = {name: name for name in [*self.gates["lineage"], *self.lineages["lineage"]]}
        return lineages | self.identity["lineage"].to_dict()

    def lineage_genes(self, lineage: str) -> set[str]:
        """Genes that every lineage row of ``lineage`` names (CD4, CD40LG, TRAT1, CD8A and CD8B for
        CD4 T): they decided the lineage, so they do not decide its subsets (they would favour the
        subsets whose panels list them)."""
        rows = self.lineages[self.lineages["lineage"] == lineage]
        named = [set(row.positive + row.negative) for row in rows.itertuples()]
        return set.intersection(*named) if named else set()

    def genes(self, states: bool = True) -> list[str]:
        """Every gene the table names (identity and gate panels; state genes too by default)."""
        rows = [*self.gates.itertuples(), *self.lineages.itertuples(), *self.identity.itertuples()]
        named = {g for row in rows for g in row.positive + row.negative}
        if states:
            named |= {g for genes in self.states.values() for g in genes}
        return sorted(named)


def read_marker_table(path: str | Path) -> MarkerTable:
    """Read ``resources/markers/pbmc_markers.tsv`` (comment lines start with ``#``)."""
    table = pd.read_csv(path, sep="\t", comment="#", dtype=str, keep_default_na=False)
    required = {"cell_type", "lineage", "gate", "kind", "positive", "negative"}
    if not required <= set(table.columns):
        raise InputError(
            f"{path}: marker table needs columns {sorted(required)}, found {list(table.columns)}. "
            "Fix: start from resources/markers/pbmc_markers.tsv."
        )
    split = lambda text: [g.strip() for g in text.split(",") if g.strip()]  # noqa: E731
    table["positive"] = table["positive"].map(split)
    table["negative"] = table["negative"].map(split)
    columns = ["lineage", "gate", "positive", "negative"]
    gates = table[table["kind"] == "gate"].set_index("cell_type")[["lineage", "positive", "negative"]]
    identity = table[table["kind"] == "identity"].set_index("cell_type")[columns]
    lineages = table[table["kind"] == "lineage"].set_index("cell_type")[columns]
    states = {row.cell_type: row.positive for row in table[table["kind"] == "state"].itertuples()}
    for what, frame in (("cell type", identity), ("gate", gates), ("lineage", lineages)):
        if frame.index.duplicated().any():
            raise InputError(
                f"{path}: {what}(s) listed twice: {sorted(frame.index[frame.index.duplicated()])}. "
                "Fix: keep one row each."
            )
    unknown = sorted((set(identity["gate"]) | set(lineages["gate"])) - set(gates.index))
    if unknown:
        raise InputError(f"{path}: identity rows name gate(s) {unknown} that no gate row defines. Fix: add the gate.")
    return MarkerTable(gates=gates, lineages=lineages, identity=identity, states=states)


def score_column(cell_type: str) -> str:
    """obs/table column of a population's marker score (``score_CD4_naive``)."""
    return "score_" + re.sub(r"[^A-Za-z0-9]+", "_", cell_type).strip("_")


class GeneScale(NamedTuple):
    """Per gene: background (0) and span (to 1) of the scaled log-normalized expression of cells."""

    background: pd.Series
    span: pd.Series

    @classmethod
    def of(cls, cluster_means: pd.DataFrame) -> GeneScale:
        """From the cluster means (clusters x genes) of log-normalized expression."""
        background = cluster_means.quantile(0.1, axis=0)
        span = cluster_means.max(axis=0) - background
        floor = SCALE_FLOOR * float(np.median(span[span > 0])) if (span > 0).any() else 1.0
        return cls(background, np.maximum(span, floor))

    def apply(self, values: pd.DataFrame) -> pd.DataFrame:
        """``values`` (units x genes) on the scale, capped at 1."""
        genes = values.columns
        return ((values - self.background[genes]) / self.span[genes]).clip(upper=1.0)


def expression(adata: ad.AnnData, genes: list[str]) -> pd.DataFrame:
    """Log-normalized expression of ``genes`` (cells x genes, dense float32)."""
    matrix = adata[:, genes].X
    matrix = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    return pd.DataFrame(matrix.astype(np.float32), index=adata.obs_names, columns=genes)


def panel_scores(scaled: pd.DataFrame, panels: pd.DataFrame) -> pd.DataFrame:
    """Mean scaled expression of each panel's positive markers minus that of its negative ones.

    Panels with fewer than :data:`MIN_MARKERS` of their positive markers in ``scaled`` (all of them
    when the panel has fewer) are left out (logged), so a population whose markers were not
    measured cannot win through one stray gene.
    """
    present = set(scaled.columns)
    scores = {}
    for name, row in panels.iterrows():
        positive = [g for g in row["positive"] if g in present]
        if len(positive) < min(MIN_MARKERS, len(row["positive"])):
            log.info("not scored (%d of %d markers measured): %s", len(positive), len(row["positive"]), name)
            continue
        negative = [g for g in row["negative"] if g in present]
        score = scaled[positive].mean(axis=1)
        scores[name] = score - scaled[negative].mean(axis=1) if negative else score
    return pd.DataFrame(scores, index=scaled.index)


def _best_two(scores: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Per row: best column, its margin over the runner-up, and the runner-up."""
    values = scores.to_numpy(float)
    order = np.argsort(-values, axis=1, kind="stable")
    rows = np.arange(len(values))
    best, second = order[:, 0], order[:, 1] if values.shape[1] > 1 else order[:, 0]
    columns = scores.columns.to_numpy()
    margin = values[rows, best] - values[rows, second] if values.shape[1] > 1 else np.full(len(values), np.inf)
    runner_up = columns[second] if values.shape[1] > 1 else np.full(len(values), "")
    return (
        pd.Series(columns[best], index=scores.index),
        pd.Series(margin, index=scores.index),
        pd.Series(runner_up, index=scores.index),
    )


class Reference(NamedTuple):
    """The clusters' marker detection that every unit (cluster or sub-cluster) is scored against.

    ``background``: per gene, the 10th percentile of the clusters' detection (what cells that do
    not make the transcript show, ambient RNA included). ``scale``: a strong marker's detection
    span (best cluster minus background; the :data:`STRONG_MARKER_QUANTILE` of the markers), the
    unit of relative evidence: measured on the data, as depth sets how often any marker is seen. Per gate: ``detected``
    (cells detecting each gene, summed over the gate's clusters) and ``cells`` (their number).
    """

    background: pd.Series
    scale: float
    detected: dict[str, pd.Series]
    cells: dict[str, int]

    def absolute(self, detection: pd.DataFrame) -> pd.DataFrame:
        """Detection above background, as a share of what is left above it (1 = every cell)."""
        background = self.background[detection.columns]
        # Below background is no evidence either way (a negative marker must not reward it).
        return ((detection - background) / (1.0 - background).clip(lower=1e-3)).clip(0.0, 1.0)

    def relative(self, detection: pd.DataFrame, gate: str, own_cells: pd.Series | None = None) -> pd.DataFrame:
        """Detection minus that of the rest of the gate's cells, in units of ``scale`` (-1 to 1).

        ``own_cells``: per unit, how many of the gate's cells are its own, left out of the rest it
        is compared with. One against the rest, in one unit for all genes: CD4 T clusters are
        CD8A-depleted against the other T cells however CD8A varies among the small clusters (0 in
        gamma-delta T), a gate's largest cluster still differs from the others, and a gene detected
        in few cells of any cluster (CD4 in shallow data) weighs little, as its evidence is slight.
        """
        if gate not in self.detected:
            return self.absolute(detection)
        genes = detection.columns
        own = np.zeros(len(detection)) if own_cells is None else own_cells.reindex(detection.index).to_numpy(float)
        pooled = self.detected[gate][genes].to_numpy()
        # The rest, steadied by PRIOR_CELLS cells of the whole gate: a gate of one large and one
        # small cluster still compares the large one with something measurable.
        prior = PRIOR_CELLS * pooled / self.cells[gate]
        rest = (pooled - detection.to_numpy() * own[:, None] + prior) / (self.cells[gate] - own + PRIOR_CELLS)[:, None]
        values = (detection.to_numpy() - rest) / self.scale
        return pd.DataFrame(values, index=detection.index, columns=genes).clip(-1.0, 1.0)


def detected_matrix(adata: ad.AnnData, genes: list[str]) -> sp.csr_matrix:
    """1 where a cell detects a gene (cells x ``genes``, sparse float32)."""
    X = adata[:, genes].X
    return sp.csr_matrix(X > 0 if sp.issparse(X) else np.asarray(X) > 0, dtype=np.float32)


def group_detection(detected: sp.csr_matrix, groups: np.ndarray, genes: list[str]) -> pd.DataFrame:
    """Share of each group's cells detecting each gene (groups x genes, groups sorted), from
    :func:`detected_matrix` rows aligned with ``groups``."""
    codes, names = pd.factorize(np.asarray(groups, dtype=object), sort=True)
    indicator = sp.csr_matrix(
        (np.ones(len(codes), dtype=np.float32), (codes, np.arange(len(codes)))), shape=(len(names), len(codes))
    )
    sums = np.asarray((indicator @ detected).todense())
    counts = np.bincount(codes, minlength=len(names)).astype(np.float64)
    return pd.DataFrame(sums / counts[:, None], index=pd.Index([str(n) for n in names]), columns=genes)


def detection(adata: ad.AnnData, genes: list[str], groups: np.ndarray) -> pd.DataFrame:
    """Share of each group's cells detecting each gene (groups x genes)."""
    return group_detection(detected_matrix(adata, genes), groups, genes)


def _gates(scores: pd.DataFrame) -> pd.DataFrame:
    best, margin, runner_up = _best_two(scores)
    return pd.DataFrame({"gate": best, "gate_margin": margin, "gate_runner_up": runner_up})


def reference_of(cluster_detection: pd.DataFrame, markers: MarkerTable, sizes: pd.Series) -> Reference:
    """The :class:`Reference` of the clusters (``sizes``: cells per cluster), their gates decided on
    absolute detection."""
    background = cluster_detection.quantile(0.1, axis=0).clip(lower=0.0)
    span = cluster_detection.max(axis=0) - background
    scale = float(span[span > 0].quantile(STRONG_MARKER_QUANTILE)) if (span > 0).any() else 1.0
    partial = Reference(background, scale, {}, {})
    gates = _gates(panel_scores(partial.absolute(cluster_detection), markers.gates))["gate"]
    detected, cells = {}, {}
    for gate in gates.unique():
        members = gates.index[gates == gate]
        if len(members) > 1:
            weights = sizes.reindex(members).to_numpy(float)
            detected[gate] = (cluster_detection.loc[members] * weights[:, None]).sum()
            cells[gate] = int(weights.sum())
    return Reference(background, scale, detected, cells)


def label_profiles(
    unit_detection: pd.DataFrame,
    markers: MarkerTable,
    reference: Reference,
    own_cells: pd.Series | None = None,
    cluster_gates: pd.Series | None = None,
    keep_cluster_gate: bool = True,
) -> pd.DataFrame:
    """Gate, lineage and subset of every unit (cluster or sub-cluster) from its marker detection.

    The gate is decided on absolute detection; within the gate the lineage (where the gate has
    lineage rows: CD4 T, CD8 T, other T) and then the subset are decided on detection relative to
    the rest of the gate's cells, so CD8 T is CD8A/CD8B enriched against the other T cells and CD4 T
    the T cells depleted of it.

    Parameters
    ----------
    own_cells
        Per unit, its cells among the reference's clusters (a cluster's or a part's size), left out
        of the rest of the gate it is compared with (for a part, only when it passes its cluster's
        gate).
    cluster_gates
        Per unit, the gate of the cluster it is part of.
    keep_cluster_gate
        A part that passes another gate than its cluster by less than :data:`WEAK_MARGIN`, or with
        fewer than :data:`MIN_PART_CELLS` cells (``own_cells``), keeps its cluster's gate: a few
        cells' ambient haemoglobin cannot make a T-cell part erythrocytes.

    Returns
    -------
    pandas.DataFrame
        Per unit: ``gate``, ``gate_margin`` (over the runner-up gate), ``gate_runner_up``,
        ``lineage``, ``lineage_margin`` (inf where the gate has one lineage), ``cell_type``,
        ``subset_margin`` and ``runner_up`` (the runner-up subset).
    """
    gate_scores = panel_scores(reference.absolute(unit_detection), markers.gates)
    if gate_scores.empty:
        raise InputError(
            "no lineage gate of the marker table has enough of its markers in the data. "
            "Fix: check that genes are named by HGNC symbols."
        )
    table = _gates(gate_scores)
    if cluster_gates is not None and keep_cluster_gate:
        prior = cluster_gates.reindex(table.index)
        small = pd.Series(False, index=table.index)
        if own_cells is not None:
            small = own_cells.reindex(table.index).fillna(0) < MIN_PART_CELLS
        keep = (
            prior.isin(gate_scores.columns) & (table["gate"] != prior) & ((table["gate_margin"] < WEAK_MARGIN) | small)
        )
        for unit in table.index[keep]:
            table.loc[unit, "gate_runner_up"] = table.at[unit, "gate"]
            table.loc[unit, "gate_margin"] = gate_scores.at[unit, prior[unit]] - gate_scores.loc[unit].max()
            table.loc[unit, "gate"] = prior[unit]
    table["lineage"], table["lineage_margin"] = "", np.inf
    table["cell_type"], table["subset_margin"], table["runner_up"] = "", np.inf, ""
    for gate, members in table.groupby("gate").groups.items():
        own = None if own_cells is None else own_cells.reindex(members).fillna(0.0)
        if own is not None and cluster_gates is not None:  # a part's cells are in its cluster's gate
            own = own.where(cluster_gates.reindex(members) == gate, 0.0)
        evidence = reference.relative(unit_detection.loc[members], gate, own)
        rows = markers.lineages[markers.lineages["gate"] == gate]
        lineage_scores = panel_scores(evidence, rows) if len(rows) else pd.DataFrame(index=members)
        if lineage_scores.shape[1]:
            # Several rows may define one lineage (MAIT-like and gd-like other T): its best row counts.
            per_lineage = lineage_scores.T.groupby(rows.loc[lineage_scores.columns, "lineage"].to_numpy()).max().T
            best, margin, _ = _best_two(per_lineage)
            table.loc[members, "lineage"] = best.to_numpy()
            table.loc[members, "lineage_margin"] = margin
        else:
            table.loc[members, "lineage"] = markers.gates.at[gate, "lineage"]
        subsets = markers.identity[markers.identity["gate"] == gate]
        for lineage, units in table.loc[members].groupby("lineage").groups.items():
            shared = markers.lineage_genes(lineage)
            scores = panel_scores(
                evidence.loc[units, [g for g in evidence.columns if g not in shared]],
                subsets[subsets["lineage"] == lineage],
            )
            if scores.shape[1] == 0:  # the lineage's subsets were not measured: the lineage is the label
                table.loc[units, "cell_type"] = lineage
                continue
            best, margin, runner_up = _best_two(scores)
            table.loc[units, "cell_type"] = best
            if scores.shape[1] > 1:
                table.loc[units, "subset_margin"] = margin
                table.loc[units, "runner_up"] = runner_up
    return table


def ambiguous(table: pd.DataFrame) -> pd.Series:
    """Units whose gate, or lineage within the gate, won by less than :data:`WEAK_MARGIN`."""
    return (table["gate_margin"] < WEAK_MARGIN) | (table["lineage_margin"] < WEAK_MARGIN)


def clear(table: pd.DataFrame) -> pd.Series:
    """Units whose gate and lineage both won by at least :data:`WEAK_MARGIN`."""
    return ~ambiguous(table)


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


def read_overrides(path: str | Path | None, known: set[str]) -> dict[str, str]:
    """cluster -> cell type from the user's override table (columns ``cluster``, ``cell_type``)."""
    if not path or not Path(path).exists():
        return {}
    table = pd.read_csv(path, sep="\t", comment="#", dtype=str, keep_default_na=False)
    if not {"cluster", "cell_type"} <= set(table.columns):
        raise InputError(
            f"{path}: needs columns 'cluster' and 'cell_type', found {list(table.columns)}. "
            "Fix: one row per cluster to relabel."
        )
    unknown = sorted(set(table["cell_type"]) - known)
    if unknown:
        raise InputError(
            f"{path}: unknown cell type(s) {unknown}. Fix: use labels of the marker table: {sorted(known)}."
        )
    return dict(zip(table["cluster"].str.strip(), table["cell_type"].str.strip()))


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


def annotate(
    adata: ad.AnnData,
    clusters: pd.Series,
    markers: MarkerTable,
    cycling_threshold: float,
    overrides: dict[str, str] | None = None,
    seed: int = 0,
    graph: sp.spmatrix | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Label every cell and every cluster.

    Parameters
    ----------
    adata
        Cells with log-normalized expression in ``X``.
    clusters
        Cluster id per cell (index = ``adata.obs_names``).
    markers
        The marker table.
    cycling_threshold
        Cells whose proliferation score exceeds it are flagged ``cycling``; clusters mostly made
        of them are split, and their cells take the subsets of the resting cells they resemble.
    overrides
        cluster id -> cell type, replacing the computed cluster label.
    seed
        Seed of the sub-clustering.
    graph
        The kNN graph of the cells (``obsp["connectivities"]``). When given, every cluster of at
        least ``2 * MIN_SPLIT_CELLS`` cells is sub-clustered on it, and sub-clusters whose own
        evidence clearly names another lineage (DCs in a monocyte cluster) take that label. Without
        it only ambiguous and cycling clusters are split, on their identity markers.

    Returns
    -------
    cells, cluster_table
        ``cells``: index = cell names; ``cluster``, ``cell_type``, ``lineage``, ``label_source``
        (cluster, sub-cluster, resting neighbours or override), ``cycling``,
        ``cycling_score`` and one per-cell ``score_<type>`` column per scored population.
        ``cluster_table``: per cluster the label, how it was decided and how clear it was.
    """
    overrides = overrides or {}
    clusters = clusters.astype(str).reindex(adata.obs_names)
    measured = set(adata.var_names)
    genes = [g for g in markers.genes() if g in measured]
    values = expression(adata, genes)
    detected = sp.csr_matrix(values.to_numpy() > 0, dtype=np.float32)
    cluster_ids = clusters.to_numpy(dtype=object)
    scaled = GeneScale.of(values.groupby(cluster_ids, sort=False).mean()).apply(values)
    cycle_genes = [g for g in markers.states.get("cycling", []) if g in scaled.columns]
    cycling_score = scaled[cycle_genes].mean(axis=1) if cycle_genes else pd.Series(0.0, index=adata.obs_names)
    cycling = cycling_score > cycling_threshold
    cycling_share = cycling.groupby(cluster_ids).mean()

    sizes = clusters.value_counts()
    cluster_detection = group_detection(detected, cluster_ids, genes)
    reference = reference_of(cluster_detection, markers, sizes)
    evidence = label_profiles(cluster_detection, markers, reference, sizes)
    labels = clusters.map(evidence["cell_type"]).to_numpy(dtype=object)
    how = pd.Series(HOW_CLUSTER, index=evidence.index)
    source = np.full(len(clusters), SOURCE_CLUSTER, dtype=object)

    cycling_clusters = set(cycling_share.index[cycling_share > 0.5])
    unclear = set(evidence.index[ambiguous(evidence)]) | cycling_clusters
    eligible = [c for c in evidence.index if c not in overrides]
    split = [c for c in eligible if c in unclear or (graph is not None and sizes[c] >= 2 * MIN_SPLIT_CELLS)]
    identity_genes = [g for g in markers.genes(states=False) if g in scaled.columns and g not in cycle_genes]
    in_split = np.isin(cluster_ids, split)
    rows = np.flatnonzero(in_split)
    parts = sub_clusters(clusters, split, scaled[identity_genes], seed, graph).to_numpy(dtype=object)
    for depth in range(1 + MAX_SPLIT_DEPTH):
        # Parts whose own evidence is unclear (a mix of small populations) are split again.
        part_of = pd.Series(cluster_ids[rows]).groupby(parts[rows]).first()
        part_sizes = pd.Series(parts[rows]).value_counts()
        part_detection = group_detection(detected[rows], parts[rows], genes)
        part_gates = part_of[part_detection.index].map(evidence["gate"])
        part_table = label_profiles(part_detection, markers, reference, part_sizes, part_gates)
        again = [p for p in part_table.index[ambiguous(part_table)] if part_sizes[p] >= 2 * MIN_SPLIT_CELLS]
        if depth == MAX_SPLIT_DEPTH or not again:
            break
        parts = sub_clusters(pd.Series(parts, index=clusters.index), again, scaled[identity_genes], seed, graph)
        parts = parts.to_numpy(dtype=object)
    lineage_of = markers.lineage_of
    of_unclear = in_split & np.isin(cluster_ids, list(unclear))
    labels[of_unclear] = pd.Series(parts[of_unclear]).map(part_table["cell_type"]).to_numpy()
    source[of_unclear] = SOURCE_PART
    # Parts of a clear cluster keep its label unless their own evidence clearly names another
    # lineage. Such parts are pooled per cluster and lineage (a small population is often cut into
    # several parts), and the pool takes its label if it has enough cells and is still clear.
    own = label_profiles(part_detection, markers, reference, part_sizes, part_gates, keep_cluster_gate=False)
    pools = {}
    for part in own.index[clear(own)]:
        cluster, lineage = part_of[part], lineage_of.get(own.at[part, "cell_type"])
        if cluster not in unclear and lineage != lineage_of.get(evidence.at[cluster, "cell_type"]):
            pools[part] = f"{cluster}|{lineage}"
    if pools:
        pooled = pd.Series(parts).map(pools).to_numpy(dtype=object)
        in_pool = np.flatnonzero(pd.notna(pooled))
        pool_sizes = pd.Series(pooled[in_pool]).value_counts()
        pool_cluster = pd.Series(cluster_ids[in_pool]).groupby(pooled[in_pool]).first()
        pool_table = label_profiles(
            group_detection(detected[in_pool], pooled[in_pool], genes),
            markers,
            reference,
            pool_sizes,
            pool_cluster.map(evidence["gate"]),
            keep_cluster_gate=False,
        )
        for pool, row in pool_table.iterrows():
            cluster = pool_cluster[pool]
            lineage = lineage_of.get(row["cell_type"])
            if (
                pool_sizes[pool] >= MIN_PART_CELLS
                and clear(pool_table.loc[[pool]]).iloc[0]
                and lineage != lineage_of.get(evidence.at[cluster, "cell_type"])
            ):
                members = in_pool[pooled[in_pool] == pool]
                labels[members] = row["cell_type"]
                source[members] = SOURCE_PART
    resting = ~np.isin(cluster_ids, list(unclear))
    cell_gate = clusters.map(evidence["gate"]).to_numpy(dtype=object)
    members_of = pd.Series(np.arange(len(cluster_ids))).groupby(cluster_ids).indices
    for cluster in split:
        members = members_of[cluster]
        if cluster in cycling_clusters:
            how[cluster] = HOW_SPLIT
            # Sub-clusters of proliferating cells keep the gate but rarely separate CD4 from CD8 T:
            # each cell takes the subset of the resting cells of its gate it resembles most.
            gates = pd.Series(parts[members]).map(part_table["gate"]).to_numpy(dtype=object)
            for gate in pd.unique(gates):
                query = members[gates == gate]
                donors = np.flatnonzero(resting & (cell_gate == gate))
                features = [g for g in gate_genes(markers, gate) if g in identity_genes]
                if len(donors) < 2 * TRANSFER_NEIGHBOURS or len(features) < 2 or len(set(labels[donors])) < 2:
                    continue
                matrix = scaled[features].to_numpy()
                labels[query] = transfer_labels(matrix, donors, labels[donors].astype(str), query, seed)
                source[query] = SOURCE_RESTING
        elif cluster in unclear:
            how[cluster] = HOW_AMBIGUOUS
        elif (source[members] == SOURCE_PART).any():
            how[cluster] = HOW_REFINED
        else:
            continue
        log.info(
            "cluster %s (%s): %s",
            cluster,
            how[cluster],
            ", ".join(f"{label} {n}" for label, n in pd.Series(labels[members]).value_counts().items()),
        )
    for cluster, cell_type in overrides.items():
        labels[cluster_ids == cluster] = cell_type
        source[cluster_ids == cluster] = SOURCE_OVERRIDE
        how[cluster] = HOW_OVERRIDE
    labels = pd.Series(labels, index=clusters.index)

    cells = pd.DataFrame({"cluster": clusters, "cell_type": labels.astype(str)}, index=adata.obs_names)
    cells["lineage"] = cells["cell_type"].map(lineage_of)
    cells["label_source"] = source
    cells["cycling"] = cycling.to_numpy()
    cells["cycling_score"] = cycling_score.round(4)
    for cell_type, score in panel_scores(scaled, markers.identity).items():
        cells[score_column(cell_type)] = score.round(4)
    return cells, _cluster_table(cells, evidence, how, cycling_share, lineage_of)


def _cluster_table(
    cells: pd.DataFrame, evidence: pd.DataFrame, how: pd.Series, cycling_share: pd.Series, lineage_of: dict[str, str]
) -> pd.DataFrame:
    rows = []
    for cluster, members in cells.groupby("cluster", sort=False):
        counts = members["cell_type"].value_counts()
        label = counts.index[0]
        rows.append(
            {
                "cluster": cluster,
                "cell_type": label,
                "lineage": lineage_of.get(label, ""),
                "how": how[cluster],
                "n_cells": len(members),
                "majority_share": round(float(counts.iloc[0] / len(members)), 4),
                "gate": evidence.at[cluster, "gate"],
                "gate_margin": round(evidence.at[cluster, "gate_margin"], 4),
                "gate_runner_up": evidence.at[cluster, "gate_runner_up"],
                "lineage_margin": round(float(evidence.at[cluster, "lineage_margin"]), 4),
                "runner_up": evidence.at[cluster, "runner_up"],
                "subset_margin": round(evidence.at[cluster, "subset_margin"], 4),
                "cycling_share": round(float(cycling_share[cluster]), 4),
            }
        )
    table = pd.DataFrame(rows)
    order = sorted(table["cluster"], key=lambda c: (not c.isdigit(), int(c) if c.isdigit() else 0, c))
    table = table.set_index("cluster").loc[order].reset_index()
    for row in table.itertuples():
        log.info(
            "cluster %s -> %s (%s; %d cells; gate %s by %.2f over %s; subset by %.2f over %s)",
            row.cluster,
            row.cell_type,
            row.how,
            row.n_cells,
            row.gate,
            row.gate_margin,
            row.gate_runner_up,
            row.subset_margin,
            row.runner_up or "-",
        )
    return table


def annotate_clusters(
    adata: ad.AnnData,
    markers: MarkerTable,
    settings: AnnotationSettings,
    overrides: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`annotate` at the Leiden resolution of ``settings``, as the workflow writes it.

    Returns
    -------
    cells, clusters
        ``cells``: ``sample``, ``barcode`` and the columns of :func:`annotate`, one row per cell
        in ``adata`` order; ``clusters``: the cluster table with the ``resolution`` second.
    """
    clusters = adata.obs[leiden_key(settings.resolution)]
    graph = adata.obsp["connectivities"] if "connectivities" in adata.obsp else None
    cells, cluster_table = annotate(
        adata, clusters, markers, settings.cycling_threshold, overrides, settings.seed, graph
    )
    cluster_table.insert(1, "resolution", settings.resolution)
    return pd.concat([adata.obs[["sample", "barcode"]], cells], axis=1), cluster_table
