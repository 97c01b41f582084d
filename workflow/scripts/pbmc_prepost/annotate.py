"""Marker-based PBMC cell-type annotation at two levels (cell type and lineage) plus a cycling flag.

Each cell gets a score per population from the versioned marker table (mean scaled expression of
the positive markers minus that of the negative markers; each gene scaled to its 99th percentile
across cells, so markers of different abundance weigh alike). A cell's own label is the
best-scoring population; a cluster's label is the majority of its cells' labels. Cycling cells
are flagged by a proliferation score and keep their lineage: in clusters made mostly of cycling
cells every cell keeps its own label, so proliferation shows up inside CD4 and CD8 T cells instead
of as a separate "cycling" type. A user-editable table (cluster -> cell type) overrides labels.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from pbmc_prepost import InputError
from pbmc_prepost.cluster import leiden_key
from pbmc_prepost.settings import AnnotationSettings

log = logging.getLogger(__name__)


@dataclass
class MarkerTable:
    """Identity populations (with lineage) and state signatures of the marker table."""

    identity: pd.DataFrame  # index cell_type; columns lineage, positive (list), negative (list)
    states: dict[str, list[str]]

    @property
    def lineage_of(self) -> dict[str, str]:
        return self.identity["lineage"].to_dict()


def read_marker_table(path: str | Path) -> MarkerTable:
    """Read ``resources/markers/pbmc_markers.tsv`` (comment lines start with ``#``)."""
    table = pd.read_csv(path, sep="\t", comment="#", dtype=str, keep_default_na=False)
    required = {"cell_type", "lineage", "kind", "positive", "negative"}
    if not required <= set(table.columns):
        raise InputError(
            f"{path}: marker table needs columns {sorted(required)}, found {list(table.columns)}. "
            "Fix: start from resources/markers/pbmc_markers.tsv."
        )
    split = lambda text: [g.strip() for g in text.split(",") if g.strip()]  # noqa: E731
    table["positive"] = table["positive"].map(split)
    table["negative"] = table["negative"].map(split)
    identity = table[table["kind"] == "identity"].set_index("cell_type")[["lineage", "positive", "negative"]]
    states = {row.cell_type: row.positive for row in table[table["kind"] == "state"].itertuples()}
    if identity.index.duplicated().any():
        raise InputError(
            f"{path}: cell type(s) listed twice: {sorted(identity.index[identity.index.duplicated()])}. "
            "Fix: keep one row per cell type."
        )
    return MarkerTable(identity=identity, states=states)


def score_column(cell_type: str) -> str:
    """obs/table column of a population's marker score (``score_CD4_naive``)."""
    return "score_" + re.sub(r"[^A-Za-z0-9]+", "_", cell_type).strip("_")


def _scaled_expression(adata: ad.AnnData, genes: list[str], groups: pd.Series) -> pd.DataFrame:
    """Log-normalized expression of ``genes`` rescaled between background and the best cluster.

    Per gene, 0 is the background (10th percentile of the cluster means: the level of clusters
    that do not make the transcript, ambient RNA included) and 1 the best-expressing cluster's
    mean; values are capped at 1. A gene that every cluster shows at the same level, such as
    haemoglobin arriving with the ambient soup, has nothing above background and cannot mark a
    population; the floor keeps barely detected genes from being blown up.
    """
    matrix = adata[:, genes].X
    matrix = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    frame = pd.DataFrame(matrix, index=adata.obs_names, columns=genes)
    means = frame.groupby(groups.reindex(adata.obs_names).to_numpy(), sort=False).mean()
    background = means.quantile(0.1, axis=0)
    span = means.max(axis=0) - background
    floor = SCALE_FLOOR * float(np.median(span[span > 0])) if (span > 0).any() else 1.0
    return ((frame - background) / np.maximum(span, floor)).clip(upper=1.0)


# Floor of the scaling span, as a share of the median marker's span (best cluster minus background).
SCALE_FLOOR = 0.5


def marker_scores(
    adata: ad.AnnData, markers: MarkerTable, groups: pd.Series, min_present: float = 0.5
) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    """Per-cell marker score of every population, the proliferation score, and the scaled
    expression of the identity markers used (cells x genes).

    ``groups`` (clusters) only set each gene's scale. Populations with fewer than ``min_present``
    of their positive markers (and fewer than 2) in the data are not scored (logged), so a
    population whose markers were not measured cannot attract cells through one stray gene.
    """
    present = set(adata.var_names)
    genes = sorted(
        {g for row in markers.identity.itertuples() for g in row.positive + row.negative if g in present}
        | {g for members in markers.states.values() for g in members if g in present}
    )
    scaled = _scaled_expression(adata, genes, groups)
    scores = {}
    for cell_type, row in markers.identity.iterrows():
        positive = [g for g in row["positive"] if g in present]
        if len(positive) < max(2, min_present * len(row["positive"])):
            log.info("not scored (only %d of %d markers measured): %s", len(positive), len(row["positive"]), cell_type)
            continue
        negative = [g for g in row["negative"] if g in present]
        score = scaled[positive].mean(axis=1)
        if negative:
            score = score - scaled[negative].mean(axis=1)
        scores[cell_type] = score
    if not scores:
        raise InputError(
            "no population of the marker table has enough of its markers in the data. "
            "Fix: check that genes are named by HGNC symbols."
        )
    cycling_genes = [g for g in markers.states.get("cycling", []) if g in present]
    cycling = scaled[cycling_genes].mean(axis=1) if cycling_genes else pd.Series(0.0, index=adata.obs_names)
    identity_genes = sorted(
        {g for row in markers.identity.itertuples() for g in row.positive + row.negative if g in present}
    )
    return pd.DataFrame(scores), cycling, scaled[identity_genes]


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


def _nearest_centroid(profiles: pd.DataFrame, centroids: pd.DataFrame) -> np.ndarray:
    """Index of the centroid with the highest Pearson correlation to each row of ``profiles``."""

    def centred(matrix: np.ndarray) -> np.ndarray:
        matrix = matrix - matrix.mean(axis=1, keepdims=True)
        return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)

    similarity = centred(profiles.to_numpy(float)) @ centred(centroids.to_numpy(float)).T
    return centroids.index.to_numpy()[similarity.argmax(axis=1)]


def annotate(
    adata: ad.AnnData,
    clusters: pd.Series,
    markers: MarkerTable,
    cycling_threshold: float,
    overrides: dict[str, str] | None = None,
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
        Cells whose proliferation score exceeds it are flagged ``cycling``.
    overrides
        cluster id -> cell type, replacing the computed cluster label.

    Returns
    -------
    cells, cluster_table
        ``cells``: index = cell names; ``cluster``, ``cell_type``, ``lineage``, ``cycling``,
        ``cycling_score`` and one ``score_<type>`` column per scored population.
        ``cluster_table``: per cluster the label, how it was decided and how clear it was.
    """
    overrides = overrides or {}
    clusters = clusters.astype(str).reindex(adata.obs_names)
    scores, cycling_score, profiles = marker_scores(adata, markers, clusters)
    # Cells choose among the populations that best explain at least one cluster on average: a
    # population no cluster expresses (erythrocytes in a washed PBMC sample ...) cannot take single
    # cells through a stray ambient count of its markers.
    # Proliferating clusters are left out of that choice: cycle genes dilute their identity markers.
    cycling = cycling_score > cycling_threshold
    cycling_share = cycling.groupby(clusters.to_numpy()).mean()
    cluster_means = scores.groupby(clusters.to_numpy()).mean()
    resting = cycling_share.index[cycling_share <= 0.5]
    winners = sorted(set(cluster_means.loc[resting if len(resting) else cluster_means.index].idxmax(axis=1)))
    log.info("populations that best explain at least one cluster: %s", ", ".join(winners))
    candidates = scores[winners]
    own_label = candidates.idxmax(axis=1)
    frame = pd.DataFrame({"cluster": clusters, "own_label": own_label, "cycling": cycling})
    rows = {}
    labels = pd.Series(index=adata.obs_names, dtype=object)
    proliferating = []
    for cluster, members in frame.groupby("cluster", sort=False):
        counts = members["own_label"].value_counts()
        majority, share = counts.index[0], counts.iloc[0] / len(members)
        cycling_share = members["cycling"].mean()
        how = "majority"
        if cluster in overrides:
            labels[members.index] = overrides[cluster]
            how = "override"
        elif cycling_share > 0.5:
            proliferating.append(cluster)
            how = "per cell (cycling cluster)"
        else:
            labels[members.index] = majority
        rows[cluster] = {
            "cluster": cluster,
            "cell_type": overrides.get(cluster, majority),
            "how": how,
            "n_cells": len(members),
            "majority_share": round(float(share), 4),
            "runner_up": counts.index[1] if len(counts) > 1 else "",
            "cycling_share": round(float(cycling_share), 4),
        }
    if proliferating:
        # Proliferating cells keep their lineage: each takes the label of the resting cluster whose
        # marker profile it correlates with best (all identity markers at once, steadier than any
        # one population's few markers in a cell whose transcriptome is busy with the cell cycle).
        resting_cells = ~frame["cluster"].isin(proliferating)
        centroids = profiles[resting_cells.to_numpy()].groupby(frame.loc[resting_cells, "cluster"].to_numpy()).mean()
        centroid_labels = labels[resting_cells].groupby(frame.loc[resting_cells, "cluster"].to_numpy()).first()
        cells_in = frame.index[frame["cluster"].isin(proliferating)]
        nearest = _nearest_centroid(profiles.loc[cells_in], centroids)
        labels[cells_in] = centroid_labels.loc[nearest].to_numpy()
        for cluster in proliferating:
            members = labels[frame["cluster"] == cluster]
            counts = members.value_counts()
            rows[cluster].update(
                cell_type=counts.index[0],
                majority_share=round(float(counts.iloc[0] / len(members)), 4),
                runner_up=counts.index[1] if len(counts) > 1 else "",
            )
    rows = list(rows.values())
    lineage_of = markers.lineage_of
    cells = pd.DataFrame({"cluster": clusters, "cell_type": labels.astype(str)}, index=adata.obs_names)
    cells["lineage"] = cells["cell_type"].map(lineage_of)
    cells["cycling"] = cycling.to_numpy()
    cells["cycling_score"] = cycling_score.round(4)
    for cell_type in scores.columns:
        cells[score_column(cell_type)] = scores[cell_type].round(4)
    cluster_table = pd.DataFrame(rows)
    cluster_table["lineage"] = cluster_table["cell_type"].map(lineage_of)
    order = sorted(cluster_table["cluster"], key=lambda c: (not c.isdigit(), int(c) if c.isdigit() else 0, c))
    cluster_table = cluster_table.set_index("cluster").loc[order].reset_index()
    for row in cluster_table.itertuples():
        log.info(
            "cluster %s -> %s (%s; %d cells, majority %.0f%%, cycling %.0f%%)",
            row.cluster,
            row.cell_type,
            row.how,
            row.n_cells,
            100 * row.majority_share,
            100 * row.cycling_share,
        )
    return cells, cluster_table


def annotate_clusters(
    adata: ad.AnnData, markers: MarkerTable, settings: AnnotationSettings, overrides: dict[str, str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`annotate` at the Leiden resolution of ``settings``, as the workflow writes it.

    Returns
    -------
    cells, clusters
        ``cells``: ``sample``, ``barcode`` and the columns of :func:`annotate`, one row per cell
        in ``adata`` order; ``clusters``: the cluster table with the ``resolution`` second.
    """
    clusters = adata.obs[leiden_key(settings.resolution)]
    cells, cluster_table = annotate(adata, clusters, markers, settings.cycling_threshold, overrides)
    cluster_table.insert(1, "resolution", settings.resolution)
    return pd.concat([adata.obs[["sample", "barcode"]], cells], axis=1), cluster_table
