"""Cluster-level marker evidence: detection above background, relative to the rest of a gate,
and the gate, lineage and subset it names (steps 1-3 of :mod:`pbmc_prepost.annotate`)."""

from __future__ import annotations

import logging
import re
from typing import NamedTuple

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from pbmc_prepost import InputError
from pbmc_prepost.marker_table import MarkerTable
from pbmc_prepost.pseudobulk import group_indicator

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
#: Cells a sub-cluster (or a pool of them) needs to take another gate or lineage than its cluster.
MIN_PART_CELLS = 20


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


def group_detection(detected: sp.csr_matrix, groups: np.ndarray, genes: list[str]) -> pd.DataFrame:
    """Share of each group's cells detecting each gene (groups x genes, groups sorted), from
    :func:`detected_matrix` rows aligned with ``groups``."""
    codes, names = pd.factorize(np.asarray(groups, dtype=object), sort=True)
    sums = np.asarray((group_indicator(codes, len(names)) @ detected).todense())
    counts = np.bincount(codes, minlength=len(names)).astype(np.float64)
    return pd.DataFrame(sums / counts[:, None], index=pd.Index([str(n) for n in names]), columns=genes)


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
