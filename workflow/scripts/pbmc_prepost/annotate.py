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

Steps 1-3 live in :mod:`pbmc_prepost.marker_evidence`, 4-5 in :mod:`pbmc_prepost.subclusters`, the
marker table in :mod:`pbmc_prepost.marker_table`. A user-editable table (cluster -> cell type)
overrides labels. :mod:`pbmc_prepost.annotation_checks` then checks every label against the data.
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from pbmc_prepost.cluster import leiden_key
from pbmc_prepost.marker_evidence import (
    MIN_PART_CELLS,
    GeneScale,
    ambiguous,
    clear,
    expression,
    group_detection,
    label_profiles,
    panel_scores,
    reference_of,
    score_column,
)
from pbmc_prepost.marker_table import MarkerTable
from pbmc_prepost.settings import AnnotationSettings
from pbmc_prepost.subclusters import MIN_SPLIT_CELLS, TRANSFER_NEIGHBOURS, gate_genes, sub_clusters, transfer_labels

log = logging.getLogger(__name__)

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
