"""Gene-set enrichment on simulated data with known truth (genesets, gsea, module_scores).

The simulator plants IL-7/STAT5 targets and more cycling cells in T cells, and a suppressive /
IL-10 shift with MHC-II loss in CD14 monocytes; exhaustion genes do not change, and the
dissociation-stress and interferon genes move per *sample* at random. Its null twin has the
same design and no treatment effect. DE tables come from the project's own pseudobulk DESeq2.

Run time: the two DE fixtures dominate (~13 s per population with one core), so the treated data
are fitted for the three populations the checks need and the null twin for two (one T, one
myeloid). GSEA uses the workflow's 1000 permutations: < 1 s per population, so there is no
reason to test with fewer.
"""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pbmc_prepost import InputError, de, genesets, gsea
from pbmc_prepost import module_scores as ms
from pbmc_prepost.plots import enrichment as enplots
from pbmc_prepost.settings import DESettings
from pbmc_prepost.simulation.biology import (
    CELL_CYCLE_GENES,
    GENE_TABLE,
    IFN_GENES,
    STRESS_GENES,
    SUBSET_MARKERS,
)

from conftest import CONTRAST, settings_of

LINEAGES = ["CD4 T", "CD8 T", "CD14 mono"]
GSEA_SETTINGS = dict(min_size=10, max_size=500, permutations=gsea.DEFAULT_PERMUTATIONS, seed=0, threads=1)
IL7 = "PD_IL7_STAT5_RESPONSE_UP"
CYCLE = "PD_PROLIFERATION_CELL_CYCLE"
MDSC = "IMSUP_SUPPRESSIVE_MONOCYTE_MDSC"
IL10 = "IMSUP_IL10_RESPONSE"
MHCII = "IMSUP_MONOCYTE_MHCII_ANTIGEN_PRESENTATION"
EXHAUSTION = "IMSUP_TCELL_EXHAUSTION_CHECKPOINT"
STRESS = "QC_DISSOCIATION_EXVIVO_STRESS"
NUISANCE_REASON = (
    "known limitation, kept as a record: gene-set-permutation GSEA treats genes as independent (Wu & Smyth "
    "2012), but the simulator moves every stress and interferon gene (and, through the random number of cycling "
    "cells, every cycle gene) together per sample, so with five donors a chance shift of the sample-level "
    "nuisance gives these sets FDR ~ 0 in treated and null data alike. The donor-level paired score test is the "
    "calibrated check of these sets (test_null_paired_scores_call_nothing, test_paired_scores_find_...)."
)


def _de(cells: ad.AnnData, lineages: list[str]) -> dict[str, pd.DataFrame]:
    subset = cells[cells.obs["lineage"].isin(lineages).to_numpy()].copy()
    tables, _ = de.fit_all_populations(subset, settings_of(DESettings, level="lineage"))
    assert sorted(tables) == sorted(lineages)
    return tables


@pytest.fixture(scope="module")
def library() -> genesets.GeneSetLibrary:
    return genesets.read_gene_sets([genesets.DEFAULT_GMT], genesets.DEFAULT_METADATA)


@pytest.fixture(scope="module")
def treated(cells) -> dict:
    """The shared cohort's singlets of three lineages, and their paired DE."""
    subset = cells[cells.obs["lineage"].isin(LINEAGES).to_numpy()].copy()
    return {"cells": subset, "tables": _de(subset, LINEAGES)}


@pytest.fixture(scope="module")
def null(null_cells) -> dict:
    subset = null_cells[null_cells.obs["lineage"].isin(LINEAGES).to_numpy()].copy()
    return {"cells": subset, "tables": _de(subset, ["CD4 T", "CD14 mono"])}


@pytest.fixture(scope="module")
def gsea_treated(treated, library) -> pd.DataFrame:
    return gsea.gsea_all_populations(treated["tables"], library, **GSEA_SETTINGS)


@pytest.fixture(scope="module")
def gsea_null(null, library) -> pd.DataFrame:
    return gsea.gsea_all_populations(null["tables"], library, **GSEA_SETTINGS)


@pytest.fixture(scope="module")
def scores_treated(treated, library) -> pd.DataFrame:
    return ms.module_scores(treated["cells"], library, "lineage", CONTRAST)


@pytest.fixture(scope="module")
def scores_null(null, library) -> pd.DataFrame:
    return ms.module_scores(null["cells"], library, "lineage", CONTRAST)


def _row(table: pd.DataFrame, cell_type: str, gene_set: str, **match) -> pd.Series:
    mask = (table["population"] == cell_type) & (table["gene_set"] == gene_set)
    for column, value in match.items():
        mask &= table[column] == value
    rows = table[mask]
    assert len(rows) == 1, f"expected one row for {cell_type} / {gene_set} {match}, got {len(rows)}"
    return rows.iloc[0]


# 1. GSEA recovers the planted effects -----------------------------------------------------------


def test_gsea_finds_the_planted_sets_with_the_right_sign(gsea_treated):
    for cell_type in ("CD4 T", "CD8 T"):
        for gene_set in (IL7, CYCLE):
            row = _row(gsea_treated, cell_type, gene_set)
            assert row["NES"] > 0 and row["fdr"] < 0.05, (cell_type, gene_set, row.to_dict())
    for gene_set, sign in ((MDSC, 1), (IL10, 1), (MHCII, -1)):
        row = _row(gsea_treated, "CD14 mono", gene_set)
        assert sign * row["NES"] > 0 and row["fdr"] < 0.05, (gene_set, row.to_dict())
        assert row["status"] == "tested" and row["leading_edge"]
    # The planted MHC-II genes lead the negative enrichment.
    lead = set(_row(gsea_treated, "CD14 mono", MHCII)["leading_edge"].split(";"))
    assert {"HLA-DRA", "CD74"} <= lead


def test_gsea_does_not_call_exhaustion_in_cd8_t(gsea_treated):
    row = _row(gsea_treated, "CD8 T", EXHAUSTION)
    assert row["status"] == "tested" and not row["fdr"] < 0.05, row.to_dict()


def test_gsea_flags_small_sets_instead_of_dropping_them(gsea_treated, library):
    # Every set has a row in every population; MHC-II genes are mostly filtered out in CD8 T.
    assert gsea_treated.groupby("population").size().eq(len(library)).all()
    row = _row(gsea_treated, "CD8 T", MHCII)
    assert row["n_genes"] < GSEA_SETTINGS["min_size"]
    assert row["status"] == f"too small: {row['n_genes']} genes < min_size {GSEA_SETTINGS['min_size']}"
    assert math.isnan(row["NES"]) and math.isnan(row["fdr"])
    # A p-value from 1000 permutations is never 0.
    assert gsea_treated["pvalue"].min() >= 1 / (GSEA_SETTINGS["permutations"] + 1)


# 2. Null twin ----------------------------------------------------------------------------------


def test_null_gsea_calls_no_set_free_of_sample_nuisance(gsea_null, library):
    # Sets sharing a gene with the per-sample nuisance programs (stress, interferon, cycle; e.g. anergy
    # holds NR4A1, TGF-beta JUNB) inherit their co-movement, and so do sets made largely of a minor
    # subset's markers: the Treg share of a sample's CD4 T cells varies at random, and the Treg
    # program (half of it FOXP3, IL2RA, CTLA4, IKZF2) with it (its GSEA FDR reached 0.045 in CD4 T
    # on the regenerated null). Every other set must stay silent.
    nuisance = set(STRESS_GENES) | set(IFN_GENES) | set(CELL_CYCLE_GENES)
    treg = set(SUBSET_MARKERS["Treg"]) - {"IL7R"}
    clean = [
        name
        for name, genes in library.sets.items()
        if not nuisance & set(genes) and len(treg & set(genes)) < len(genes) / 3
    ]
    assert IL7 in clean and MHCII in clean and MDSC in clean and len(clean) >= 8
    called = gsea_null[gsea_null["gene_set"].isin(clean) & (gsea_null["fdr"] < 0.05)]
    assert called.empty, called[["population", "gene_set", "NES", "fdr"]]


@pytest.mark.xfail(strict=True, reason=NUISANCE_REASON)
def test_null_gsea_calls_no_set_at_all(gsea_null):
    assert not (gsea_null["fdr"] < 0.05).any()


def test_null_ora_calls_nothing(null, library):
    table = gsea.ora_all_populations(null["tables"], library, alpha=0.05, min_size=5)
    assert not (table["fdr"] < 0.05).any(), table[table["fdr"] < 0.05]


def test_null_paired_scores_call_nothing(scores_null, library):
    test = ms.paired_score_test(scores_null, CONTRAST, meta=library.meta)
    assert (test["n_pairs"] == 5).all() and test["pvalue"].notna().all()
    assert not (test["padj"] < 0.05).any(), test[test["padj"] < 0.05]


# 3. ORA ----------------------------------------------------------------------------------------


def test_ora_separates_up_and_down(treated, library):
    table = gsea.ora(treated["tables"]["CD14 mono"], library, alpha=0.05, min_size=5)
    assert set(table["direction"]) == {"up", "down"} and len(table) == 2 * len(library)
    down = table[(table["gene_set"] == MHCII) & (table["direction"] == "down")].iloc[0]
    up = table[(table["gene_set"] == MHCII) & (table["direction"] == "up")].iloc[0]
    assert down["fdr"] < 0.05 and "HLA-DRA" in down["genes"].split(";")
    assert up["overlap"] == 0 and not up["fdr"] < 0.05
    mdsc_up = table[(table["gene_set"] == MDSC) & (table["direction"] == "up")].iloc[0]
    assert mdsc_up["fdr"] < 0.05


def test_ora_universe_is_the_tested_genes_and_small_sets_are_flagged():
    de = pd.DataFrame(
        {
            "gene": [f"G{i}" for i in range(40)],
            "log2FoldChange": [1.0] * 6 + [-1.0] * 4 + [0.1] * 30,
            "stat": np.linspace(3, -3, 40),
            "padj": [0.001] * 10 + [0.5] * 29 + [np.nan],
        }
    )
    sets = {
        "A": ["G0", "G1", "G2", "G12", "NOT_TESTED_1", "NOT_TESTED_2"],  # 4 tested, 3 significant up
        "B": ["G6", "G7", "G20", "G21", "G22"],  # 2 significant down
        "TINY": ["G0", "G30", "NOT_TESTED_3"],
    }  # 2 in universe
    meta = pd.DataFrame(
        {"category": "user", "expected_direction": "unknown", "cell_types": "all", "caveat": "", "sources": "x"},
        index=pd.Index(list(sets), name="gene_set"),
    )
    library = genesets.GeneSetLibrary(sets, meta)
    table = gsea.ora(de, library, alpha=0.05, min_size=3).set_index(["gene_set", "direction"])
    a_up = table.loc[("A", "up")]
    assert a_up["n_set_in_universe"] == 4 and a_up["overlap"] == 3 and a_up["n_significant"] == 6
    assert a_up["pvalue"] == pytest.approx(stats.hypergeom.sf(2, 40, 4, 6))
    b_down = table.loc[("B", "down")]
    assert b_down["overlap"] == 2 and b_down["n_significant"] == 4
    assert b_down["pvalue"] == pytest.approx(stats.hypergeom.sf(1, 40, 5, 4))
    tiny = table.loc[("TINY", "up")]
    assert tiny["status"] == "too small: 2 genes < min_size 3" and math.isnan(tiny["pvalue"])
    # The flagged set is not part of the BH family: A and B keep the FDR they have on their own.
    alone = gsea.ora(de, library.subset(["A", "B"]), alpha=0.05, min_size=3).set_index(["gene_set", "direction"])
    assert table.loc[("A", "up"), "fdr"] == pytest.approx(alone.loc[("A", "up"), "fdr"])


# 4. Module scores ------------------------------------------------------------------------------


def test_module_scores_are_one_mean_per_sample_and_population(scores_treated, treated, library):
    cells = treated["cells"].obs
    assert not scores_treated.attrs["skipped_sets"]
    assert list(scores_treated.columns) == [
        "sample",
        "donor",
        "timepoint",
        "population",
        "gene_set",
        "n_cells",
        "mean_score",
    ]
    assert not scores_treated.duplicated(["sample", "population", "gene_set"]).any()
    expected = cells.groupby(["sample", "lineage"], observed=True).size()
    assert len(scores_treated) == len(expected) * len(library)
    got = scores_treated.drop_duplicates(["sample", "population"]).set_index(["sample", "population"])["n_cells"]
    assert got.sort_index().to_dict() == {k: int(v) for k, v in expected.sort_index().items()}
    donors = scores_treated["sample"].str.split("_").str[0]
    assert (donors == scores_treated["donor"]).all()


def test_paired_scores_find_il7_up_in_t_cells_and_mhcii_down_in_monocytes(scores_treated, library):
    test = ms.paired_score_test(scores_treated, CONTRAST, meta=library.meta)
    assert {"mean_pre", "mean_post"} <= set(test.columns)
    il7 = _row(test, "CD4 T", IL7)
    assert il7["n_pairs"] == 5 and il7["delta"] > 0 and il7["padj"] < 0.05
    mhc = _row(test, "CD14 mono", MHCII)
    assert mhc["delta"] < 0 and mhc["padj"] < 0.05 and mhc["expected_direction"] == "down"
    # The artefact control is judged at the donor level, where it is not significant.
    assert not (test.loc[test["gene_set"] == STRESS, "padj"] < 0.05).any()
    assert not (_row(test, "CD8 T", EXHAUSTION)["padj"] < 0.05)


def test_donor_without_post_sample_is_excluded_and_named(scores_treated):
    scores = scores_treated[scores_treated["sample"] != "D5_post"]
    test = ms.paired_score_test(scores, CONTRAST)
    assert (test["n_pairs"] == 4).all()
    assert test["note"].str.contains(r"D5 \(no post\)").all()
    full = ms.paired_score_test(scores_treated, CONTRAST)
    assert not (full["note"].str.contains("D5")).any()


@pytest.mark.parametrize("dense", [False, True])
def test_set_scores_equal_scanpys_score_genes(treated, library, dense):
    """score_genes with precomputed bins is scanpy's tl.score_genes, draw of control genes included."""
    import scanpy as sc

    cells = treated["cells"][:1500].copy()
    if dense:
        cells.X = cells.X.toarray()
    bins = ms.expression_bins(cells.X, cells.var_names)
    for seed, (name, genes) in enumerate(list(library.sets.items())[:8]):
        present = [g for g in genes if g in cells.var_names]
        sc.tl.score_genes(cells, present, score_name="reference", random_state=seed, use_raw=False)
        ours = ms.score_genes(cells.X, cells.var_names, bins, present, random_state=seed)
        np.testing.assert_allclose(ours, cells.obs["reference"].to_numpy(), rtol=0, atol=1e-12, err_msg=name)
    # A different seed draws other control genes, so the comparison above can fail.
    other = ms.score_genes(cells.X, cells.var_names, bins, present, random_state=seed + 1)
    assert not np.allclose(other, cells.obs["reference"].to_numpy())


def test_module_scores_from_the_genes_they_read_equal_those_from_all(treated, library, scores_treated):
    """The workflow reads only the members and control genes (genes_to_score) with every gene's
    mean: the scores are those computed from the whole matrix."""
    cells = treated["cells"]
    means = pd.Series(np.asarray(cells.X.sum(axis=0, dtype="float64")).ravel() / cells.n_obs, index=cells.var_names)
    genes = ms.genes_to_score(library, means)
    assert 0 < len(genes) < cells.n_vars
    subset = cells[:, cells.var_names.isin(genes)].copy()
    ours = ms.module_scores(subset, library, "lineage", CONTRAST, means=means)
    pd.testing.assert_frame_equal(ours, scores_treated)
    assert ours.attrs == scores_treated.attrs


def test_module_scores_from_row_blocks_equal_those_in_memory(treated, library, scores_treated, tmp_path):
    """score_gene_sets reads X block by block of cells from the file: the same table, to the bit."""
    from pbmc_prepost.h5ad import iter_row_blocks, read_h5ad_parts

    cells = treated["cells"]
    path = tmp_path / "clustered.h5ad"
    cells.write_h5ad(path)
    means = pd.Series(np.asarray(cells.X.sum(axis=0, dtype="float64")).ravel() / cells.n_obs, index=cells.var_names)
    genes = ms.genes_to_score(library, means)
    skeleton = read_h5ad_parts(path, x=False, genes=genes)
    blocks = iter_row_blocks(path, "X", genes=genes, size=97)  # many blocks, the last one short
    ours = ms.module_scores(skeleton, library, "lineage", CONTRAST, means=means, blocks=blocks)
    pd.testing.assert_frame_equal(ours, scores_treated, check_exact=True)
    assert ours.attrs == scores_treated.attrs
    short = iter_row_blocks(path, "X", genes=genes, size=97)
    with pytest.raises(ValueError, match="blocks hold 97 cells"):
        ms.module_scores(skeleton, library, "lineage", CONTRAST, means=means, blocks=[next(short)])


def test_module_scores_refuse_raw_counts(treated, library):
    raw = ad.AnnData(
        X=treated["cells"].layers["counts"][:200],
        obs=treated["cells"].obs.iloc[:200].copy(),
        var=treated["cells"].var.copy(),
    )
    with pytest.raises(ValueError, match="raw counts"):
        ms.module_scores(raw, library, "lineage", CONTRAST)


# 5. Determinism and figures --------------------------------------------------------------------


def test_gsea_is_deterministic_for_a_seed(treated, library):
    table = treated["tables"]["CD8 T"]
    first = gsea.gsea_prerank(table, library, **GSEA_SETTINGS)
    second = gsea.gsea_prerank(table, library, **GSEA_SETTINGS)
    pd.testing.assert_frame_equal(first, second)


def test_figures_are_byte_identical(gsea_treated, scores_treated, library, tmp_path):
    for name in ("a", "b"):
        enplots.headline_heatmap(gsea_treated, library.meta, [tmp_path / f"{name}.png", tmp_path / f"{name}.pdf"])
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.pdf").read_bytes() == (tmp_path / "b.pdf").read_bytes()
    test = ms.paired_score_test(scores_treated, CONTRAST, meta=library.meta)
    enplots.donor_score_lines(
        scores_treated, test, [IL7, IL7, MHCII], ["CD4 T", "CD8 T", "CD14 mono"], CONTRAST, [tmp_path / "lines.png"]
    )
    assert (tmp_path / "lines.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="one group per set"):
        enplots.donor_score_lines(
            scores_treated, test, [IL7, MHCII], ["CD4 T", "CD8 T", "B"], CONTRAST, [tmp_path / "bad.png"]
        )


# 6. Reading gene sets --------------------------------------------------------------------------


def test_shipped_library_has_every_set_with_metadata(library, treated):
    assert len(library) == 15
    meta = library.meta
    assert (meta["category"] != "user").all() and set(meta["category"]) == set(genesets.CATEGORIES) - {"user"}
    assert meta[["category", "expected_direction", "cell_types", "caveat", "sources"]].ne("").all().all()
    assert meta.at[MHCII, "expected_direction"] == "down" and meta.at[STRESS, "expected_direction"] == "none"
    assert meta.at[MDSC, "cell_types"] == "CD14 mono"
    assert all(name.split("_")[0] in {"IMSUP", "PD", "CTX", "QC"} for name in library.names)
    # Current HGNC symbols only: every member is in the project's human gene table, hence simulated.
    symbols = set(pd.read_csv(GENE_TABLE, sep="\t", dtype=str)["symbol"])
    members = {g for genes in library.sets.values() for g in genes}
    assert members <= symbols, sorted(members - symbols)
    assert members <= set(treated["cells"].var_names)


def test_user_gmt_adds_user_sets(tmp_path):
    user = tmp_path / "my_sets.gmt"
    user.write_text("MY_SET\tmy description\tCD3E\tCD3D\tCD3E\n\nOTHER\t\tLYZ\n")
    library = genesets.read_gene_sets([genesets.DEFAULT_GMT, user], genesets.DEFAULT_METADATA)
    assert len(library) == 17 and library.names[-2:] == ["MY_SET", "OTHER"]
    assert library.sets["MY_SET"] == ["CD3E", "CD3D"]
    row = library.meta.loc["MY_SET"]
    assert (row["category"], row["expected_direction"], row["cell_types"], row["caveat"], row["sources"]) == (
        "user",
        "unknown",
        "all",
        "",
        "my_sets.gmt",
    )
    alone = genesets.read_gene_sets(str(user), None)
    assert list(alone.meta["category"]) == ["user", "user"]


def test_duplicate_set_names_across_files_are_refused(tmp_path):
    copy = tmp_path / "copy.gmt"
    copy.write_text(f"{STRESS}\tmine\tFOS\tJUN\n")
    with pytest.raises(InputError) as error:
        genesets.read_gene_sets([genesets.DEFAULT_GMT, copy], genesets.DEFAULT_METADATA)
    message = str(error.value)
    assert STRESS in message and str(genesets.DEFAULT_GMT) in message and str(copy) in message and "Fix:" in message


def test_malformed_gmt_and_metadata_are_refused(tmp_path):
    bad = tmp_path / "bad.gmt"
    bad.write_text("NO_GENES\tdescription only\n")
    with pytest.raises(InputError, match=r"bad.gmt line 1 \(set 'NO_GENES'\): no genes"):
        genesets.read_gene_sets([bad], None)
    meta = tmp_path / "sets.tsv"
    meta.write_text(
        f"gene_set\tcategory\texpected_direction\tcell_types\tcaveat\tsources\n{STRESS}\tartifact\tnone\tall\t\tx\n"
    )
    with pytest.raises(InputError, match="category 'artifact' unknown"):
        genesets.read_gene_sets([genesets.DEFAULT_GMT], meta)
