"""The annotation checks itself: every label against the markers that define or exclude it.

For each check of ``resources/markers/consistency_checks.tsv`` and each cluster given the check's
lineage label, the detection (share of cells with at least one UMI, averaged over the markers) of
the defining markers must exceed that of the cells of the ``against`` labels by :data:`MIN_RATIO`,
and that of the excluding markers must stay below it by the same factor: CD8A/CD8B in a CD8 T
cluster against the CD4 T cells, and in a CD4 T cluster the other way round; CD3 in an NK cluster
against the T cells. A cluster that fails is ``contradicted``; one whose gate or lineage won by a
small margin (and was therefore labelled by its sub-clusters) is ``weak``. The populations of flagged clusters carry a note into the composition, DE and
enrichment tables (:func:`population_notes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from pbmc_prepost import InputError
from pbmc_prepost.annotate import HOW_OVERRIDE, HOW_SPLIT
from pbmc_prepost.marker_evidence import WEAK_MARGIN
from pbmc_prepost.pseudobulk import group_indicator

#: How clearly a defining marker must be enriched (and an excluding one depleted), as a ratio of
#: detection rates: 1.5 is far below what a correct label shows on shallow 10x data (CD8A: 42 % of
#: CD8 T against 7 % of CD4 T cells) and far above what a wrong one does (a ratio near 1).
MIN_RATIO = 1.5
CONSISTENCY_COLUMNS = [
    "label",
    "cluster",
    "n_cells",
    "markers_kind",
    "markers",
    "detection",
    "mean",
    "against",
    "against_detection",
    "against_mean",
    "ratio",
    "verdict",
]


@dataclass(frozen=True)
class Check:
    """One check of a lineage label."""

    label: str
    defining: tuple[str, ...]
    excluding: tuple[str, ...]
    against: tuple[str, ...]


def read_checks(path: str | Path) -> list[Check]:
    """Read ``resources/markers/consistency_checks.tsv`` (comment lines start with ``#``)."""
    table = pd.read_csv(path, sep="\t", comment="#", dtype=str, keep_default_na=False)
    if not {"label", "defining", "excluding", "against"} <= set(table.columns):
        raise InputError(
            f"{path}: needs columns label, defining, excluding, against; found {list(table.columns)}. "
            "Fix: start from resources/markers/consistency_checks.tsv."
        )
    split = lambda text: tuple(g.strip() for g in text.split(",") if g.strip())  # noqa: E731
    return [
        Check(row.label, split(row.defining), split(row.excluding), split(row.against)) for row in table.itertuples()
    ]


def check_genes(checks: list[Check]) -> list[str]:
    """Genes the checks read (their defining and excluding markers)."""
    return sorted({g for check in checks for g in (*check.defining, *check.excluding)})


class _Sums:
    """Per group of cells (a cluster, or the cells of a label): cells, and per gene the cells
    detecting it and the summed expression; :func:`consistency` reads each group once."""

    def __init__(self, X: sp.csr_matrix, genes: list[str], groups: np.ndarray) -> None:
        codes, names = pd.factorize(np.asarray(groups, dtype=object))
        indicator = group_indicator(codes, len(names))
        self.position = {str(name): i for i, name in enumerate(names)}
        self.cells = np.bincount(codes, minlength=len(names)).astype(float)
        self.detected = np.asarray((indicator @ (X > 0).astype(np.float64)).todense())
        self.total = np.asarray((indicator @ X.astype(np.float64)).todense())
        self.column = {g: j for j, g in enumerate(genes)}

    def of(self, groups: list[str], genes: list[str]) -> tuple[int, float, float]:
        """Cells of ``groups`` together, and the mean over ``genes`` of their detection and mean."""
        rows = [self.position[g] for g in groups if g in self.position]
        cells = float(self.cells[rows].sum())
        if not cells:
            return 0, np.nan, np.nan
        columns = [self.column[g] for g in genes]
        detection = self.detected[np.ix_(rows, columns)].sum(axis=0) / cells
        mean = self.total[np.ix_(rows, columns)].sum(axis=0) / cells
        return int(cells), float(np.mean(detection)), float(np.mean(mean))


def consistency(
    adata: ad.AnnData, cells: pd.DataFrame, clusters: pd.DataFrame, checks: list[Check]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check every cluster's label; return the consistency table and the cluster table with flags.

    Parameters
    ----------
    adata
        Cells with log-normalized expression in ``X`` (zero where nothing was detected).
    cells
        Per cell (``adata`` order): ``cluster`` and ``lineage``.
    clusters
        The cluster table of :func:`pbmc_prepost.annotate.annotate` (``cluster``, ``lineage``,
        ``gate``, ``gate_margin``, ``gate_runner_up``, ``lineage_margin``, ``how``).
    checks
        :func:`read_checks`.

    Returns
    -------
    consistency, clusters
        ``consistency``: one row per check, cluster and marker kind (columns
        :data:`CONSISTENCY_COLUMNS`; ``cluster`` ``all`` for the whole label). ``clusters``: the
        input with ``flag`` (``contradicted``, ``weak`` or empty) and ``flag_reason``.
    """
    present = set(adata.var_names)
    genes = [g for g in check_genes(checks) if g in present]
    lineage = cells["lineage"].astype(str).to_numpy(dtype=object)
    cluster_of = cells["cluster"].astype(str).to_numpy(dtype=object)
    X = adata[:, genes].X
    X = sp.csr_matrix(X) if sp.issparse(X) else sp.csr_matrix(np.asarray(X))
    by_label, by_cluster = _Sums(X, genes, lineage), _Sums(X, genes, cluster_of)
    rows, reasons = [], {c: [] for c in clusters["cluster"]}
    for check in checks:
        units = [("all", by_label, [check.label])]
        units += [(c, by_cluster, [c]) for c in clusters.loc[clusters["lineage"] == check.label, "cluster"]]
        for kind, markers in (("defining", check.defining), ("excluding", check.excluding)):
            markers = [g for g in markers if g in present]
            if not markers or not by_label.of([check.label], markers)[0]:
                continue
            n_against, against_detection, against_mean = by_label.of(list(check.against), markers)
            for unit, sums, groups in units:
                n_cells, detection, mean = sums.of(groups, markers)
                ratio = detection / against_detection if against_detection > 0 else np.inf
                verdict = "no cells of the labels against" if not n_against else "ok"
                if n_against and (ratio < MIN_RATIO if kind == "defining" else ratio > 1 / MIN_RATIO):
                    verdict = "contradicted"
                    if unit != "all":
                        reasons[unit].append(
                            f"{kind} {','.join(markers)} detected in {detection:.0%} of its cells "
                            f"vs {against_detection:.0%} of {'/'.join(check.against)} cells"
                        )
                rows.append(
                    {
                        "label": check.label,
                        "cluster": unit,
                        "n_cells": n_cells,
                        "markers_kind": kind,
                        "markers": ",".join(markers),
                        "detection": round(detection, 4),
                        "mean": round(mean, 4),
                        "against": ",".join(check.against),
                        "against_detection": round(against_detection, 4),
                        "against_mean": round(against_mean, 4),
                        "ratio": round(ratio, 3),
                        "verdict": verdict,
                    }
                )
    flagged = clusters.copy()
    weak_gate = flagged["gate_margin"] < WEAK_MARGIN
    weak_lineage = flagged["lineage_margin"] < WEAK_MARGIN
    # A cycling cluster mixes lineages by nature; its cells are labelled one by one (HOW_SPLIT).
    weak = (weak_gate | weak_lineage) & ~flagged["how"].isin([HOW_OVERRIDE, HOW_SPLIT])
    flagged["flag"] = np.where(
        [bool(reasons[c]) for c in flagged["cluster"]], "contradicted", np.where(weak, "weak", "")
    )
    flagged["flag_reason"] = [
        "; ".join(reasons[row.cluster]) if reasons[row.cluster] else (_weak_reason(row) if row.flag == "weak" else "")
        for row in flagged.itertuples()
    ]
    return pd.DataFrame(rows, columns=CONSISTENCY_COLUMNS), flagged


def _weak_reason(row) -> str:
    if row.gate_margin < WEAK_MARGIN:
        return f"gate {row.gate} only {row.gate_margin:.2f} above {row.gate_runner_up}; labelled by sub-clusters"
    return f"lineage only {row.lineage_margin:.2f} above the next within gate {row.gate}; labelled by sub-clusters"


def population_notes(clusters: pd.DataFrame, level: str) -> dict[str, str]:
    """Population (at ``level``: ``lineage`` or ``cell_type``) -> note naming its flagged clusters."""
    notes: dict[str, list[str]] = {}
    for row in clusters[clusters["flag"].fillna("") != ""].itertuples():
        population = getattr(row, level)
        notes.setdefault(str(population), []).append(f"cluster {row.cluster} {row.flag} ({row.flag_reason})")
    return {population: "annotation flagged: " + "; ".join(items) for population, items in notes.items()}
