"""Pseudobulks and their paired DE (pbmc_prepost.pseudobulk, .de) on simulated data with known truth.

The expensive part is pyDESeq2 (a few seconds per group), so every configuration is fitted once
in a module-scoped fixture, and only on the groups a test looks at; checks of the design logic
that need no statistics run on hand-made metadata or on a few hundred genes.
"""

from __future__ import annotations

import os
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pbmc_prepost import de, pseudobulk
from pbmc_prepost.design import Contrast, safe_name, safe_names
from pbmc_prepost.plots.de import paired_genes_figure, volcano_figure
from pbmc_prepost.settings import DESettings
from pbmc_prepost.simulation.biology import IL7_T_EFFECTS, MONO_EFFECTS, NULL_EXHAUSTION_GENES

from conftest import CONTRAST, settings_of

T_GROUPS = ["CD4 T", "CD8 T"]
# Groups fitted on the treated data: the planted T-cell and monocyte effects, plus a group too
# small to pseudobulk (plasma: ~4 cells per sample), which must come back as skipped.
TREATED_GROUPS = ["CD4 T", "CD8 T", "CD14 mono", "plasma"]
NULL_GROUPS = ["CD4 T", "CD8 T", "NK", "B", "CD14 mono", "CD16 mono"]
N_CPUS = min(2, os.cpu_count() or 1)


def _settings(**changes) -> DESettings:
    return settings_of(DESettings, n_cpus=N_CPUS, **changes)


@pytest.fixture(scope="module")
def treated(cells) -> ad.AnnData:
    return cells


@pytest.fixture(scope="module")
def null(null_cells) -> ad.AnnData:
    return null_cells


@pytest.fixture(scope="module")
def treated_fit(treated):
    """Paired fit of the groups the checks need (groups are fitted independently)."""
    subset = treated[treated.obs["lineage"].isin(TREATED_GROUPS)].copy()
    return de.fit_all_populations(subset, _settings())


@pytest.fixture(scope="module")
def unpaired_fit(treated):
    """Same treated T cells with the pairing column gone: the unpaired fallback."""
    subset = treated[treated.obs["lineage"].isin(T_GROUPS)].copy()
    del subset.obs["donor"]
    return de.fit_all_populations(subset, _settings())


@pytest.fixture(scope="module")
def null_fit(null):
    """Null fit of the six largest lineages (every lineage would double the suite's slowest fixture)."""
    subset = null[null.obs["lineage"].isin(NULL_GROUPS)].copy()
    return de.fit_all_populations(subset, _settings())


@pytest.fixture(scope="module")
def treated_pb(treated):
    return pseudobulk.pseudobulk_for_contrast(treated, _settings())


def _found(tables: dict[str, pd.DataFrame], effects: dict[str, float], groups: list[str]) -> int:
    """Planted genes with padj < 0.05 and the planted sign, summed over groups."""
    found = 0
    for group in groups:
        table = tables[group].set_index("gene")
        for gene, fold in effects.items():
            if (
                gene in table.index
                and table.loc[gene, "padj"] < 0.05
                and np.sign(table.loc[gene, "log2FoldChange"]) == np.sign(fold)
            ):
                found += 1
    return found


def _gene_subset(pb: ad.AnnData, n: int = 300) -> ad.AnnData:
    """First ``n`` genes plus the headline IL-7 genes: enough for the design logic, fast to fit."""
    genes = list(dict.fromkeys([*pb.var_names[:n], "IL7R", "BCL2", "CISH"]))
    return pb[:, genes].copy()


# -- 1. planted effects ------------------------------------------------------------------------


def test_tables_and_summary_have_the_promised_shape(treated_fit):
    tables, summary = treated_fit
    assert list(summary.columns) == de.SUMMARY_COLUMNS
    assert list(summary["population"]) == sorted(TREATED_GROUPS)
    assert set(tables) == {"CD4 T", "CD8 T", "CD14 mono"}
    for group, table in tables.items():
        assert list(table.columns) == de.RESULT_COLUMNS
        p = table["pvalue"].to_numpy()
        finite = p[~np.isnan(p)]
        assert np.all(np.diff(finite) >= 0), group
        assert np.isnan(p[len(finite) :]).all(), "NaN p-values sort last"
        row = summary.set_index("population").loc[group]
        assert row["status"] == "tested" and row["reason"] == ""
        assert row["n_genes_tested"] == len(table)
        assert row["n_up"] == int(((table["padj"] < 0.05) & (table["log2FoldChange"] > 0)).sum())
        assert row["n_down"] == int(((table["padj"] < 0.05) & (table["log2FoldChange"] < 0)).sum())
        assert row["design"] == "~donor + timepoint" and bool(row["paired"]) and row["n_pairs"] == 5


def test_planted_il7_and_monocyte_effects_are_found(treated_fit):
    tables, _ = treated_fit
    for group in T_GROUPS:
        table = tables[group].set_index("gene")
        assert table.loc["IL7R", "padj"] < 0.05 and table.loc["IL7R", "log2FoldChange"] < 0, group
        for gene in ("BCL2", "CISH"):
            assert table.loc[gene, "padj"] < 0.05 and table.loc[gene, "log2FoldChange"] > 0, (group, gene)
        # The estimate is close to the planted fold, not only significant.
        assert abs(table.loc["IL7R", "log2FoldChange"] - IL7_T_EFFECTS["IL7R"]) < 0.35, group
    mono = tables["CD14 mono"].set_index("gene")
    assert mono.loc["HLA-DRA", "padj"] < 0.05 and mono.loc["HLA-DRA", "log2FoldChange"] < 0
    assert _found(tables, {g: f for g, f in MONO_EFFECTS.items() if f < 0}, ["CD14 mono"]) >= 3
    # The IL-7 T-cell programme is not a monocyte effect: BCL2 and CISH are not called there.
    assert not (mono.reindex(["BCL2", "CISH"])["padj"] < 0.05).any()


def test_exhaustion_genes_are_not_called_in_cd8(treated_fit):
    table = treated_fit[0]["CD8 T"].set_index("gene")
    tested = [g for g in NULL_EXHAUSTION_GENES if g in table.index]
    assert tested, "exhaustion genes should be tested"
    assert not (table.loc[tested, "padj"] < 0.05).any(), table.loc[tested, ["log2FoldChange", "padj"]]


# -- 2. null -----------------------------------------------------------------------------------


def test_null_simulation_calls_at_most_one_percent(null_fit):
    tables, summary = null_fit
    tested = summary[summary["status"] == "tested"]
    assert len(tested) >= 6, summary
    for _, row in tested.iterrows():
        table = tables[row["population"]]
        n_hits = int((table["padj"] < 0.05).sum())
        assert n_hits <= 0.01 * len(table), f"{row['population']}: {n_hits} of {len(table)} genes at padj < 0.05"


# -- 3. pairing ----------------------------------------------------------------------------------


def test_paired_design_recovers_more_planted_genes_than_unpaired(treated_fit, unpaired_fit):
    unpaired_tables, unpaired_summary = unpaired_fit
    assert (unpaired_summary["design"] == "~timepoint").all()
    assert not unpaired_summary["paired"].any()
    assert unpaired_summary["note"].str.startswith("unpaired fallback").all()
    assert (unpaired_summary["n_pairs"] == 0).all()
    paired_found = _found(treated_fit[0], IL7_T_EFFECTS, T_GROUPS)
    unpaired_found = _found(unpaired_tables, IL7_T_EFFECTS, T_GROUPS)
    assert paired_found > unpaired_found, (paired_found, unpaired_found)


# -- 4. a donor without its post sample --------------------------------------------------------


def test_donor_missing_post_sample_is_excluded_and_named(treated_pb):
    group = treated_pb[(treated_pb.obs["lineage"] == "CD4 T") & (treated_pb.obs["sample"] != "D5_post")]
    table, summary = de.fit_population(_gene_subset(group), _settings(level="lineage"))
    assert summary["status"] == "tested", summary
    assert summary["n_pairs"] == 4 and summary["n_samples"] == 8
    assert "D5" in summary["note"] and "excluded" in summary["note"]
    assert summary["population"] == "CD4 T"
    assert table.set_index("gene").loc["IL7R", "log2FoldChange"] < 0


# -- 5. skipping and small pseudobulks ---------------------------------------------------------


def test_groups_with_too_few_pairs_are_skipped_with_a_reason(treated):
    tables, summary = de.fit_all_populations(treated, _settings(min_pairs=6))
    assert tables == {}
    assert list(summary["population"]) == sorted(treated.obs["lineage"].unique())
    assert (summary["status"] == "skipped").all()
    assert (summary["reason"] != "").all()
    cd4 = summary.set_index("population").loc["CD4 T"]
    assert cd4["reason"] == "5 complete donor pairs < min_pairs 6"
    assert cd4["n_pairs"] == 5 and cd4["n_genes_tested"] == 0
    # Plasma cells are rare (a few per sample): too few cells or too few samples, said either way.
    plasma_reason = summary.set_index("population").loc["plasma", "reason"]
    assert plasma_reason == "no pseudobulk with >= 10 cells" or "samples < min_pairs" in plasma_reason


def test_pseudobulks_below_min_cells_are_dropped(treated_pb):
    group = treated_pb[treated_pb.obs["lineage"] == "CD14 mono"]
    n_cells = group.obs["n_cells"].sort_values()
    assert n_cells.iloc[0] < n_cells.iloc[1]
    smallest = group.obs.loc[n_cells.index[0]]
    # min_pairs high: the group is skipped before any fit, but the counts show what was kept.
    _, summary = de.fit_population(group, _settings(min_cells=int(n_cells.iloc[0]) + 1, min_pairs=99))
    assert summary["n_samples"] == 8 and summary["n_pairs"] == 4
    # The small pseudobulk goes, and with it its donor's other sample (no longer a pair).
    assert summary["n_cells"] == int(group.obs.loc[group.obs["donor"] != smallest["donor"], "n_cells"].sum())
    assert smallest["donor"] in summary["note"]
    assert summary["status"] == "skipped" and summary["reason"] == "4 complete donor pairs < min_pairs 99"
    _, summary = de.fit_population(group, _settings(min_counts=10**9))
    assert summary["status"] == "skipped" and "counts" in summary["reason"]


# -- 6. design choice ----------------------------------------------------------------------------


def _meta(batch: list[str] | None = None) -> pd.DataFrame:
    rows = [(f"D{d}_{t}", f"D{d}", t) for d in range(1, 6) for t in ("pre", "post")]
    meta = pd.DataFrame(rows, columns=["sample", "donor", "timepoint"]).set_index("sample", drop=False)
    if batch is not None:
        meta["batch"] = batch
    return meta


def test_batch_collinear_with_donor_is_not_added():
    meta = _meta(batch=[f"run{i // 2}" for i in range(10)])  # one batch per donor
    design = de.choose_design(meta, CONTRAST, "batch", use_batch=True)
    assert design.formula == "~donor + timepoint" and design.paired and design.n_pairs == 5
    assert "batch not added (collinear with donor)" in design.note
    meta["batch"] = meta["timepoint"]  # batch = timepoint: confounded with the contrast
    design = de.choose_design(meta, CONTRAST, "batch", use_batch=True)
    assert design.formula == "~donor + timepoint"
    assert "collinear with timepoint" in design.note


def test_estimable_batch_is_added_and_can_be_switched_off():
    # D1_post and D2_pre were run in batch b2: not a function of donor or timepoint.
    batch = ["b2" if s in ("D1_post", "D2_pre") else "b1" for s in _meta().index]
    meta = _meta(batch=batch)
    design = de.choose_design(meta, CONTRAST, "batch", use_batch=True)
    assert design.formula == "~donor + batch + timepoint"
    assert design.covariates == ["donor", "batch"] and design.df_residual == 3
    assert "batch added" in design.note
    design = de.choose_design(meta, CONTRAST, "batch", use_batch=False)
    assert design.formula == "~donor + timepoint" and "use_batch is off" in design.note


def test_unpaired_fallback_and_excluded_donors_in_the_design_note():
    meta = _meta().drop(columns="donor")
    design = de.choose_design(meta, CONTRAST, None, use_batch=True)
    assert not design.paired and design.formula == "~timepoint" and design.n_pairs == 0
    assert design.note.startswith("unpaired fallback") and "'donor' missing" in design.note
    # Every donor seen once only: no pair is possible.
    meta = _meta().iloc[[0, 3, 4, 7]]
    design = de.choose_design(meta, CONTRAST, None, use_batch=True)
    assert not design.paired and "unpaired fallback" in design.note
    # D4 and D5 lack a post sample; an extra timepoint is ignored.
    extra = pd.DataFrame({"sample": ["D1_d30"], "donor": ["D1"], "timepoint": ["d30"]}, index=["D1_d30"])
    meta = pd.concat([_meta().drop(index=["D4_post", "D5_post"]), extra])
    design = de.choose_design(meta, CONTRAST, None, use_batch=True)
    assert design.paired and design.n_pairs == 3 and design.excluded_donors == ["D4", "D5"]
    assert sorted(design.samples) == sorted(f"D{d}_{t}" for d in (1, 2, 3) for t in ("pre", "post"))
    assert "D4, D5" in design.note


def test_odd_column_names_levels_and_batch_fit_end_to_end(treated):
    """Columns with spaces/hyphens, levels with spaces, a numeric-looking batch: one real fit."""
    cells = treated[treated.obs["lineage"] == "CD4 T"].copy()
    cells = cells[:, list(dict.fromkeys([*cells.var_names[:300], "IL7R", "BCL2", "CISH"]))].copy()
    cells.obs["visit-day"] = cells.obs["timepoint"].map({"pre": "day 0", "post": "day 7"})
    cells.obs["patient id"] = cells.obs["donor"].str.replace("D", "1")
    cells.obs["run batch"] = np.where(cells.obs["sample"].isin(["D1_post", "D2_pre"]), "2", "1")
    contrast = Contrast(column="visit-day", reference="day 0", treated="day 7", pair_by="patient id")
    tables, summary = de.fit_all_populations(cells, _settings(contrast=contrast), batch_col="run batch")
    row = summary.iloc[0]
    assert row["status"] == "tested", row.to_dict()
    assert row["design"] == "~patient_id + run_batch + visit_day" and row["n_pairs"] == 5
    assert "'visit-day' as visit_day" in row["note"]
    il7r = tables["CD4 T"].set_index("gene").loc["IL7R"]
    assert il7r["padj"] < 0.05 and il7r["log2FoldChange"] < 0  # direction: treated vs reference


# -- 7. names and sums -------------------------------------------------------------------------


def test_safe_name_examples_and_uniqueness():
    assert safe_name("CD4 T") == "CD4_T"
    assert safe_name("gd T") == "gd_T"
    assert safe_name("NK CD56bright") == "NK_CD56bright"
    assert safe_name("CD14+ mono (classical)") == "CD14_mono_classical"
    assert safe_name("B/plasma") == "B_plasma"
    assert safe_name("HLA-DR.high") == "HLA-DR.high"
    assert safe_name("+++") == safe_name("+++") and safe_name("+++").startswith("group_")
    labels = ["CD4 T", "CD4+ T", "CD4_T", "CD8 T", "+", "-"]
    names = safe_names(labels)
    assert len(set(names.values())) == len(labels)
    assert names["CD4_T"] == "CD4_T" and names["CD8 T"] == "CD8_T"
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names.values())
    assert safe_names(reversed(labels)) == names  # stable: order does not matter


def _tiny() -> ad.AnnData:
    counts = np.array([[1, 0, 3], [2, 5, 0], [0, 1, 1], [4, 0, 0], [7, 2, 1], [0, 0, 9], [1, 1, 1]], dtype=np.float32)
    obs = pd.DataFrame(
        {
            "sample": ["s1", "s1", "s1", "s2", "s2", "s2", "s2"],
            "group": ["A", "B", "A", "A", "A", "C", "C"],
            "donor": ["d1", "d1", "d1", "d2", "d2", "d2", "d2"],
        },
        index=[f"c{i}" for i in range(7)],
    )
    cells = ad.AnnData(X=np.log1p(counts), obs=obs, var=pd.DataFrame(index=["g1", "g2", "g3"]))
    cells.layers["counts"] = sp.csr_matrix(counts)
    return cells


def test_pseudobulk_sums_raw_counts_exactly():
    cells = _tiny()
    pb = pseudobulk.pseudobulk(cells, "group", meta_columns=["donor"])
    counts = cells.layers["counts"].toarray()
    expected = {}
    for (sample, group), idx in cells.obs.groupby(["sample", "group"]).indices.items():
        expected[(sample, group)] = counts[idx].sum(0)
    got = {(s, g): pb.X[i] for i, (s, g) in enumerate(zip(pb.obs["sample"], pb.obs["group"]))}
    assert set(got) == set(expected)  # empty combinations (s1 x C, s2 x B) are not pseudobulks
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    assert list(pb.obs.columns) == ["sample", "group", "donor", "n_cells", "total_counts"]
    assert pb.obs.set_index(["sample", "group"]).loc[("s2", "A"), "n_cells"] == 2
    np.testing.assert_array_equal(pb.obs["total_counts"], pb.X.sum(1))
    assert dict(zip(pb.obs["sample"], pb.obs["donor"])) == {"s1": "d1", "s2": "d2"}


def test_pseudobulk_fallback_and_input_checks(treated, monkeypatch, tmp_path):
    from pbmc_prepost.h5ad import iter_row_blocks

    # The indicator product gives exactly decoupler's sums on real-sized data.
    obs = treated.obs[["sample", "lineage"]].astype(str)
    counts = sp.csr_matrix(treated.layers["counts"])
    keys, X = pseudobulk._pseudobulk_indicator(pseudobulk._row_blocks(counts), obs, treated.n_vars, "sample", "lineage")
    pb = pseudobulk.pseudobulk(treated, "lineage")
    frame = pd.DataFrame(X, index=pd.MultiIndex.from_tuples(keys))
    np.testing.assert_array_equal(frame.loc[list(zip(pb.obs["sample"], pb.obs["lineage"]))].to_numpy(), pb.X)
    np.testing.assert_array_equal(pb.X.sum(0), treated.layers["counts"].toarray().sum(0, dtype=np.float64))
    # Large data: summed block by block (blocks of 37 cells here), identical to the decoupler sums.
    monkeypatch.setattr(pseudobulk, "_SUM_BLOCK_CELLS", 37)
    monkeypatch.setattr(pseudobulk, "_MAX_DECOUPLER_NNZ", 0)
    blockwise = pseudobulk.pseudobulk(treated, "lineage")
    assert treated.n_obs > 10 * 37
    np.testing.assert_array_equal(blockwise.X, pb.X)
    assert list(blockwise.obs_names) == list(pb.obs_names)
    # Counts streamed from a file by blocks of rows (the workflow): an object without counts.
    path = tmp_path / "cells.h5ad"
    treated.write_h5ad(path)
    cells_only = ad.AnnData(obs=treated.obs.copy(), var=treated.var.copy())
    streamed = pseudobulk.pseudobulk(cells_only, "lineage", blocks=iter_row_blocks(path, "layers/counts", size=101))
    np.testing.assert_array_equal(streamed.X, pb.X)
    pd.testing.assert_frame_equal(streamed.obs, pb.obs)
    with pytest.raises(ValueError, match="cover 101 cells"):
        pseudobulk.pseudobulk(cells_only, "lineage", blocks=iter([(0, 101, counts[:101])]))
    # Non-integer counts (decoupler refuses) still sum exactly.
    cells = _tiny()
    cells.layers["counts"] = cells.layers["counts"] * 0.5
    pb = pseudobulk.pseudobulk(cells, "group")
    assert pb.obs.set_index(["sample", "group"]).loc[("s1", "A"), "total_counts"] == 3.0
    cells = _tiny()
    cells.obs.loc["c0", "donor"] = "d9"
    with pytest.raises(ValueError, match="not constant within sample"):
        pseudobulk.pseudobulk(cells, "group", meta_columns=["donor"])
    with pytest.raises(ValueError, match="layer 'raw'"):
        pseudobulk.pseudobulk(_tiny(), "group", layer="raw")


# -- normalized values and figures ---------------------------------------------------------------


def test_normalized_pseudobulk_and_figures(treated_pb, treated_fit, tmp_path):
    group = treated_pb[treated_pb.obs["lineage"] == "CD4 T"]
    norm = pseudobulk.normalized_pseudobulk(group, ["IL7R", "BCL2", "NOT_A_GENE"])
    assert set(norm["gene"]) == {"IL7R", "BCL2"} and len(norm) == 2 * group.n_obs
    assert {"sample", "donor", "timepoint", "gene", "log2cpm"} <= set(norm.columns)
    row = norm[(norm["gene"] == "IL7R") & (norm["sample"] == "D1_pre")].iloc[0]
    obs = group.obs.reset_index(drop=True)
    i = int(np.flatnonzero(obs["sample"] == "D1_pre")[0])
    expected = np.log2(group[:, "IL7R"].X[i, 0] / group.X[i].sum() * 1e6 + 1)
    assert row["log2cpm"] == pytest.approx(expected)
    il7r = norm[norm["gene"] == "IL7R"].pivot(index="donor", columns="timepoint", values="log2cpm")
    assert (il7r["post"] < il7r["pre"]).sum() >= 4  # the planted drop is visible per donor

    tables, summary = treated_fit
    row = summary.set_index("population").loc["CD4 T"]
    paths = [tmp_path / "volcano.png", tmp_path / "volcano.pdf"]
    volcano_figure(tables["CD4 T"], f"CD4 T: {row['note']}", 12, paths)
    paired_genes_figure(norm, ["IL7R", "BCL2", "CISH"], CONTRAST, "CD4 T", [tmp_path / "paired.png"])
    for path in [*paths, tmp_path / "paired.png"]:
        assert path.exists() and path.stat().st_size > 1000
