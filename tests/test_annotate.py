"""Cell-type annotation: lineage gates and subsets from cluster-level evidence, cycling cells kept in
their lineage, the checks that flag a wrong label, and real 10x PBMC (scanpy's pbmc68k_reduced)."""

from __future__ import annotations

import pandas as pd
import pytest

from pbmc_prepost import InputError, annotate, annotation_checks, marker_evidence, marker_table
from pbmc_prepost.simulation import PRESETS, simulate

from conftest import ROOT, annotated_cells

MARKERS = ROOT / "resources" / "markers" / "pbmc_markers.tsv"
CHECKS = ROOT / "resources" / "markers" / "consistency_checks.tsv"
LINEAGES = ["CD4 T", "CD8 T", "NK", "B", "CD14 mono", "CD16 mono", "DC", "platelets"]


@pytest.fixture(scope="module")
def table() -> marker_table.MarkerTable:
    return marker_table.read_marker_table(MARKERS)


@pytest.fixture(scope="module")
def labelled(cells):
    """The shared cohort's singlets with clusters = true cell types, except that all cycling
    cells form one proliferating cluster."""
    clusters = cells.obs["cell_type"].astype(str).where(~cells.obs["cycling"].astype(bool), "cycling")
    return cells, clusters


@pytest.fixture(scope="module")
def shallow():
    """Shallow, real-looking 10x data (simulation preset ``realistic``: 1,300 UMIs per cell, CD4 in 1 %
    of CD4 T cells, cytotoxic genes shared by CD8 T and NK), clustered by the true cell types."""
    cells = annotated_cells(simulate(PRESETS["realistic"]))
    clusters = cells.obs["cell_type"].astype(str).where(~cells.obs["cycling"].astype(bool), "cycling")
    return cells, clusters


def agreement(labels: pd.DataFrame, truth: pd.DataFrame, lineage: str) -> float:
    cells = truth["lineage"] == lineage
    return float((labels.loc[cells, "lineage"] == lineage).mean())


def test_marker_table_is_consistent_and_avoids_treatment_responsive_genes(table):
    assert {"CD4 naive", "Treg", "CD8 effector", "MAIT", "gd T", "NK CD56bright", "plasmablast", "pDC"} <= set(
        table.identity.index
    )
    assert set(table.identity["gate"]) <= set(table.gates.index)
    identity_genes = {g for row in table.identity.itertuples() for g in row.positive}
    gate_genes = {g for row in table.gates.itertuples() for g in row.positive}
    assert not {"IL7R", "IL2RA", "MKI67", "TOP2A"} & (identity_genes | gate_genes)
    assert "MKI67" in table.states["cycling"]
    symbols = set(pd.read_csv(ROOT / "resources" / "simulation" / "human_genes.tsv.gz", sep="\t")["symbol"])
    assert set(table.genes()) <= symbols, sorted(set(table.genes()) - symbols)


def test_labels_match_truth_at_both_levels(labelled, table):
    adata, clusters = labelled
    labels, per_cluster = annotate.annotate(adata, clusters, table, cycling_threshold=0.3)
    truth = adata.obs
    assert (labels["cell_type"] == truth["cell_type"]).mean() >= 0.85
    assert (labels["lineage"] == truth["lineage"]).mean() >= 0.95
    assert "erythrocytes" not in set(labels["cell_type"])  # only ambient haemoglobin in these data
    assert {"score_CD4_naive", "score_CD14_mono"} <= set(labels.columns)
    assert {"gate", "gate_margin", "runner_up", "majority_share"} <= set(per_cluster.columns)


def test_shallow_data_keep_cd4_cd8_and_nk_apart(shallow, table):
    """CD4 in 1 % of CD4 T cells and GNLY/NKG7 in most CD8 T cells: no single marker decides."""
    adata, clusters = shallow
    labels, _ = annotate.annotate(adata, clusters, table, cycling_threshold=0.3)
    truth = adata.obs
    in_panel = truth["lineage"].isin(LINEAGES)
    assert (labels.loc[in_panel, "lineage"] == truth.loc[in_panel, "lineage"]).mean() >= 0.9
    for lineage in ("CD4 T", "CD8 T", "NK"):
        assert agreement(labels, truth, lineage) >= 0.85, (lineage, agreement(labels, truth, lineage))


def test_cycling_cells_keep_their_lineage(labelled, table):
    adata, clusters = labelled
    labels, per_cluster = annotate.annotate(adata, clusters, table, 0.3)
    truly_cycling = adata.obs["cycling"].astype(bool)
    assert (labels["cycling"] == truly_cycling).mean() > 0.98
    cycling_cluster = per_cluster.set_index("cluster").loc["cycling"]
    assert cycling_cluster["how"] == annotate.HOW_SPLIT
    in_cluster = clusters == "cycling"
    lineage_agreement = (labels.loc[in_cluster, "lineage"] == adata.obs.loc[in_cluster, "lineage"]).mean()
    assert lineage_agreement > 0.8, lineage_agreement
    assert set(labels.loc[in_cluster, "lineage"]) & {"CD4 T", "CD8 T"}


def test_overrides_relabel_a_cluster_and_reject_unknown_labels(labelled, table, tmp_path):
    adata, clusters = labelled
    path = tmp_path / "overrides.tsv"
    path.write_text("# relabel\ncluster\tcell_type\nTreg\tCD4 memory\n")
    overrides = marker_table.read_overrides(path, set(table.identity.index))
    labels, per_cluster = annotate.annotate(adata, clusters, table, 0.3, overrides)
    assert (labels.loc[clusters == "Treg", "cell_type"] == "CD4 memory").all()
    assert per_cluster.set_index("cluster").loc["Treg", "how"] == "override"
    path.write_text("cluster\tcell_type\nTreg\tT helper 17\n")
    with pytest.raises(InputError, match="unknown cell type"):
        marker_table.read_overrides(path, set(table.identity.index))


def test_checks_flag_a_cd4_cluster_relabelled_cd8(shallow, table):
    """A deliberately wrong override (a CD4 T cluster called CD8 T) is contradicted by CD8A/CD8B;
    the correct labels pass, and the populations' notes name the flagged cluster."""
    adata, clusters = shallow
    checks = annotation_checks.read_checks(CHECKS)
    labels, per_cluster = annotate.annotate(adata, clusters, table, 0.3)
    consistency, flagged = annotation_checks.consistency(adata, labels, per_cluster, checks)
    assert not (flagged["flag"] == "contradicted").any(), flagged[flagged["flag"] != ""]
    wrong = {"CD4 naive": "CD8 naive"}
    labels, per_cluster = annotate.annotate(adata, clusters, table, 0.3, wrong)
    consistency, flagged = annotation_checks.consistency(adata, labels, per_cluster, checks)
    row = flagged.set_index("cluster").loc["CD4 naive"]
    assert row["flag"] == "contradicted" and "CD8A" in row["flag_reason"], row.to_dict()
    assert (flagged.loc[flagged["cluster"] != "CD4 naive", "flag"] != "contradicted").all()
    check = consistency[(consistency["cluster"] == "CD4 naive") & (consistency["label"] == "CD8 T")]
    assert (check.loc[check["markers_kind"] == "defining", "verdict"] == "contradicted").any()
    notes = annotation_checks.population_notes(flagged, "lineage")
    assert "cluster CD4 naive contradicted" in notes["CD8 T"] and "CD4 T" not in notes


def test_population_without_measured_markers_is_not_scored(labelled, table):
    adata, clusters = labelled
    scaled = marker_evidence.GeneScale.of(
        marker_evidence.expression(adata, [g for g in table.genes() if g in adata.var_names])
        .groupby(clusters.to_numpy())
        .mean()
    )
    present = [g for g in table.genes() if g in adata.var_names and g not in {"CSF3R", "FCGR3B", "CXCR2", "CEACAM8"}]
    values = scaled.apply(marker_evidence.expression(adata, present).iloc[:50])
    scores = marker_evidence.panel_scores(values, table.identity)
    assert "LDG" not in scores.columns and "CD4 naive" in scores.columns


def test_real_10x_pbmc_lineages():
    """scanpy's pbmc68k_reduced: 700 real 10x PBMC, 765 genes, labels from sorted bulk profiles
    (Zheng et al. 2017), trustworthy at lineage level (Dendritic there includes most monocytes, so
    the myeloid cells are compared as one group; CD34+ cells are left out)."""
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    data = adata.raw.to_adata()  # log-normalized counts of the 765 genes
    markers = marker_table.read_marker_table(MARKERS)
    graph = adata.obsp["connectivities"]
    labels, _ = annotate.annotate(data, data.obs["louvain"].astype(str), markers, cycling_threshold=0.3, graph=graph)
    coarse = {
        "CD14+ Monocyte": "myeloid",
        "Dendritic": "myeloid",
        "CD19+ B": "B",
        "CD56+ NK": "NK",
        "CD4+/CD25 T Reg": "T",
        "CD8+ Cytotoxic T": "T",
        "CD8+/CD45RA+ Naive Cytotoxic": "T",
        "CD4+/CD45RO+ Memory": "T",
        "CD4+/CD45RA+/CD25- Naive T": "T",
        "CD34+": "",
    }
    truth = data.obs["bulk_labels"].astype(str).map(coarse)
    ours = (
        labels["lineage"]
        .map(
            {
                "CD4 T": "T",
                "CD8 T": "T",
                "other T": "T",
                "NK": "NK",
                "B": "B",
                "plasma": "B",
                "CD14 mono": "myeloid",
                "CD16 mono": "myeloid",
                "DC": "myeloid",
            }
        )
        .fillna("other")
    )
    kept = truth != ""
    agreement = float((ours[kept] == truth[kept]).mean())
    assert agreement >= 0.85, agreement
