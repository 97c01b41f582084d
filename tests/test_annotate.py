"""Cell-type annotation: marker scores, cluster majority, lineage, cycling cells kept in their lineage."""

from __future__ import annotations

import pytest

from pbmc_prepost import InputError, annotate

from conftest import ROOT

MARKERS = ROOT / "resources" / "markers" / "pbmc_markers.tsv"


@pytest.fixture(scope="module")
def labelled(cells):
    """The shared cohort's singlets with clusters = true cell types, except that all cycling
    cells form one proliferating cluster."""
    clusters = cells.obs["cell_type"].astype(str).where(~cells.obs["cycling"].astype(bool), "cycling")
    return cells, clusters


def test_marker_table_is_consistent_and_avoids_treatment_responsive_genes():
    table = annotate.read_marker_table(MARKERS)
    assert {"CD4 naive", "Treg", "CD8 effector", "MAIT", "gd T", "NK CD56bright", "plasmablast", "pDC"} <= set(
        table.identity.index
    )
    identity_genes = {g for row in table.identity.itertuples() for g in row.positive}
    assert not {"IL7R", "IL2RA", "MKI67", "TOP2A"} & identity_genes
    assert "MKI67" in table.states["cycling"]


def test_labels_match_truth_at_both_levels(labelled):
    adata, clusters = labelled
    table = annotate.read_marker_table(MARKERS)
    labels, _per_cluster = annotate.annotate(adata, clusters, table, cycling_threshold=0.3)
    truth = adata.obs
    subset_accuracy = (labels["cell_type"] == truth["cell_type"]).mean()
    lineage_accuracy = (labels["lineage"] == truth["lineage"]).mean()
    assert subset_accuracy >= 0.85, subset_accuracy
    assert lineage_accuracy >= 0.93, lineage_accuracy
    assert "erythrocytes" not in set(labels["cell_type"])  # only ambient haemoglobin in these data
    assert {score for score in labels.columns if score.startswith("score_")} >= {"score_CD4_naive", "score_CD14_mono"}


@pytest.mark.xfail(
    strict=True,
    reason="measured 0.76 on the shared cohort (5 donors, about 130 cycling T cells): "
    "the nearest-centroid assignment of proliferating cells is too noisy per cell; the "
    "annotation rework for shallow data (issue 12) replaces it",
)
def test_cycling_cells_keep_their_lineage(labelled):
    adata, clusters = labelled
    labels, per_cluster = annotate.annotate(adata, clusters, annotate.read_marker_table(MARKERS), 0.3)
    truly_cycling = adata.obs["cycling"].astype(bool)
    assert (labels["cycling"] == truly_cycling).mean() > 0.98
    cycling_cluster = per_cluster.set_index("cluster").loc["cycling"]
    assert cycling_cluster["how"] == "per cell (cycling cluster)"
    in_cluster = clusters == "cycling"
    lineage_agreement = (labels.loc[in_cluster, "lineage"] == adata.obs.loc[in_cluster, "lineage"]).mean()
    assert lineage_agreement > 0.8, lineage_agreement
    assert set(labels.loc[in_cluster, "lineage"]) & {"CD4 T", "CD8 T"}


def test_overrides_relabel_a_cluster_and_reject_unknown_labels(labelled, tmp_path):
    adata, clusters = labelled
    table = annotate.read_marker_table(MARKERS)
    path = tmp_path / "overrides.tsv"
    path.write_text("# relabel\ncluster\tcell_type\nTreg\tCD4 memory\n")
    overrides = annotate.read_overrides(path, set(table.identity.index))
    labels, per_cluster = annotate.annotate(adata, clusters, table, 0.3, overrides)
    assert (labels.loc[clusters == "Treg", "cell_type"] == "CD4 memory").all()
    assert per_cluster.set_index("cluster").loc["Treg", "how"] == "override"
    path.write_text("cluster\tcell_type\nTreg\tT helper 17\n")
    with pytest.raises(InputError, match="unknown cell type"):
        annotate.read_overrides(path, set(table.identity.index))


def test_population_without_measured_markers_is_not_scored(labelled):
    adata, clusters = labelled
    table = annotate.read_marker_table(MARKERS)
    scores, _, _ = annotate.marker_scores(adata, table, clusters)
    assert "LDG" not in scores.columns  # only 1 of its 8 markers is in these data
    assert "CD4 naive" in scores.columns
