"""Count files: format detection (formats), readers (io), the pre-flight check (preflight), the
workflow's partial h5ad reads (h5ad) and the simulator's writers (simulation.writers)."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from pbmc_prepost import InputError, io
from pbmc_prepost.formats import detect_format, locate_mtx
from pbmc_prepost.h5ad import read_h5ad_parts
from pbmc_prepost.preflight import peek_counts
from pbmc_prepost.simulation.writers import write_10x_h5, write_10x_mtx

N_CELLS, N_GENES = 24, 12


def make_counts(
    n_cells: int = N_CELLS, n_genes: int = N_GENES, seed: int = 0, dup_symbol: bool = True
) -> anndata.AnnData:
    """Tiny cells x genes AnnData of integer counts with symbols and Ensembl ids."""
    rng = np.random.default_rng(seed)
    dense = rng.poisson(1.5, size=(n_cells, n_genes)).astype(np.float32)
    dense[0, :] = 0  # an empty cell must survive the round trip
    symbols = [f"GENE{i}" for i in range(n_genes)]
    if dup_symbol:
        symbols[-1] = "GENE0"  # duplicated symbols happen in real references
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Variable names are not unique")
        return anndata.AnnData(
            X=sp.csr_matrix(dense),
            obs=pd.DataFrame(index=[f"AAACCTG{i:05d}-1" for i in range(n_cells)]),
            var=pd.DataFrame(
                {"gene_ids": [f"ENSG{i:011d}" for i in range(n_genes)]},
                index=pd.Index(symbols),
            ),
        )


def assert_same_counts(got: anndata.AnnData, want: anndata.AnnData) -> None:
    assert isinstance(got.X, sp.csr_matrix)
    assert got.X.dtype == np.float32
    assert list(got.obs_names) == list(want.obs_names)
    want_symbols = anndata.utils.make_index_unique(pd.Index(want.var_names.astype(str)))
    assert list(got.var_names) == list(want_symbols)
    assert list(got.var["gene_ids"]) == list(want.var["gene_ids"])
    np.testing.assert_array_equal(got.X.toarray(), np.asarray(sp.csr_matrix(want.X).todense()))


def write_h5ad_normalized(path: Path, dense: bool = False) -> anndata.AnnData:
    """h5ad whose X is log-normalized and whose raw counts sit in layers['counts']."""
    adata = make_counts(dup_symbol=False)
    counts = adata.X.copy()
    adata.layers["counts"] = counts
    # log1p(CP10k) by hand: scanpy's helper warns about the deliberately empty first cell
    totals = np.asarray(counts.sum(axis=1)).ravel()
    scale = sp.diags(1e4 / np.maximum(totals, 1))
    norm = sp.csr_matrix(scale @ counts).log1p()
    adata.X = norm.toarray() if dense else norm
    adata.write_h5ad(path)
    return adata


# ----------------------------------------------------------------------------------------------
# detect_format
# ----------------------------------------------------------------------------------------------


def test_detect_format_each_layout(tmp_path: Path) -> None:
    adata = make_counts()
    write_10x_mtx(adata, tmp_path / "v3")
    write_10x_mtx(adata, tmp_path / "geo", prefix="GSM123_sampleA_")
    write_10x_h5(adata, tmp_path / "s.h5")
    adata.write_h5ad(tmp_path / "s.h5ad")
    v2 = tmp_path / "v2" / "hg19"  # Cell Ranger v2: plain genes.tsv with two columns
    v2.mkdir(parents=True)
    for name in ("matrix.mtx", "barcodes.tsv"):
        (v2 / name).write_bytes(gzip.decompress((tmp_path / "v3" / f"{name}.gz").read_bytes()))
    feats = pd.read_csv(tmp_path / "v3" / "features.tsv.gz", sep="\t", header=None)
    feats.iloc[:, :2].to_csv(v2 / "genes.tsv", sep="\t", header=False, index=False)

    assert detect_format(tmp_path / "v3") == "10x_mtx"
    assert detect_format(v2) == "10x_mtx"
    assert detect_format(tmp_path / "geo" / "GSM123_sampleA_matrix.mtx.gz") == "10x_mtx"
    assert detect_format(str(tmp_path / "s.h5")) == "10x_h5"
    assert detect_format(tmp_path / "s.h5ad") == "h5ad"
    files = locate_mtx(tmp_path / "geo" / "GSM123_sampleA_matrix.mtx.gz")
    assert files.prefix == "GSM123_sampleA_"
    assert files.barcodes.name == "GSM123_sampleA_barcodes.tsv.gz"
    assert_same_counts(io.read_counts(v2), adata)


def test_detect_format_reads_hdf5_content_not_just_the_name(tmp_path: Path) -> None:
    adata = make_counts(dup_symbol=False)
    adata.write_h5ad(tmp_path / "anndata_named.h5")  # what sc.write("x.h5", adata) produces
    write_10x_h5(adata, tmp_path / "cellranger_named.h5ad")
    assert detect_format(tmp_path / "anndata_named.h5") == "h5ad"
    assert detect_format(tmp_path / "cellranger_named.h5ad") == "10x_h5"
    assert_same_counts(io.read_counts(tmp_path / "anndata_named.h5"), adata)
    with pytest.raises(InputError, match=r"is a Cell Ranger \.h5 file.*Fix: set format to 10x_h5"):
        peek_counts(tmp_path / "cellranger_named.h5ad", "h5ad")


def test_detect_format_geo_triplet_with_genes_file(tmp_path: Path) -> None:
    adata = make_counts()
    write_10x_mtx(adata, tmp_path, prefix="GSM9_B_")
    (tmp_path / "GSM9_B_features.tsv.gz").rename(tmp_path / "GSM9_B_genes.tsv.gz")
    matrix = tmp_path / "GSM9_B_matrix.mtx.gz"
    assert detect_format(matrix) == "10x_mtx"
    assert_same_counts(io.read_counts(matrix), adata)


def test_detect_format_rejects_unknown_layouts(tmp_path: Path) -> None:
    (tmp_path / "counts.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="accepted layouts") as err:
        detect_format(tmp_path / "counts.csv", source="sheet line 2 (sample 'x')")
    assert str(err.value).startswith("sheet line 2 (sample 'x'): ")
    assert "Fix:" in str(err.value)

    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InputError, match=r"missing matrix\.mtx"):
        detect_format(tmp_path / "empty_dir")

    with pytest.raises(InputError, match="does not exist"):
        detect_format(tmp_path / "nope.h5")


def test_detect_format_geo_triplet_missing_sibling(tmp_path: Path) -> None:
    write_10x_mtx(make_counts(), tmp_path, prefix="GSM1_A_")
    (tmp_path / "GSM1_A_barcodes.tsv.gz").unlink()
    with pytest.raises(InputError, match=r"GSM1_A_barcodes\.tsv\(\.gz\)"):
        detect_format(tmp_path / "GSM1_A_matrix.mtx.gz")


def test_cellranger_v2_parent_folder_points_to_genome_subfolder(tmp_path: Path) -> None:
    write_10x_mtx(make_counts(), tmp_path / "filtered" / "GRCh38")
    with pytest.raises(InputError, match="subfolder 'GRCh38'"):
        detect_format(tmp_path / "filtered")


# ----------------------------------------------------------------------------------------------
# writers round trip
# ----------------------------------------------------------------------------------------------


def test_write_10x_mtx_round_trip(tmp_path: Path) -> None:
    adata = make_counts()
    matrix = write_10x_mtx(adata, tmp_path / "out", prefix="GSM1_")
    assert matrix == tmp_path / "out" / "GSM1_matrix.mtx.gz"
    with gzip.open(matrix, "rt") as fh:
        assert fh.readline().startswith("%%MatrixMarket matrix coordinate integer general")
    features = pd.read_csv(tmp_path / "out" / "GSM1_features.tsv.gz", sep="\t", header=None)
    assert list(features[2].unique()) == ["Gene Expression"]
    got = io.read_counts(matrix)
    assert_same_counts(got, adata)
    assert list(got.var_names[-1:]) == ["GENE0-1"]
    # scanpy's own reader agrees with the written folder layout
    ref = sc.read_10x_mtx(tmp_path / "out", prefix="GSM1_")
    np.testing.assert_array_equal(ref.X.toarray(), got.X.toarray())


def test_write_10x_h5_round_trip(tmp_path: Path) -> None:
    adata = make_counts()
    path = write_10x_h5(adata, tmp_path / "filtered_feature_bc_matrix.h5")
    got = io.read_counts(path)
    assert_same_counts(got, adata)
    with warnings.catch_warnings():  # scanpy keeps the duplicated symbol as is
        warnings.filterwarnings("ignore", "Variable names are not unique")
        ref = sc.read_10x_h5(path)
    assert list(ref.obs_names) == list(adata.obs_names)
    assert list(ref.var_names) == list(adata.var_names)
    assert list(ref.var["gene_ids"]) == list(adata.var["gene_ids"])
    np.testing.assert_array_equal(ref.X.toarray(), adata.X.toarray())


def test_writers_reject_non_integer_counts(tmp_path: Path) -> None:
    adata = make_counts(dup_symbol=False)
    adata.X = adata.X * 0.5
    with pytest.raises(ValueError, match="integer"):
        write_10x_h5(adata, tmp_path / "x.h5")


# ----------------------------------------------------------------------------------------------
# read_counts
# ----------------------------------------------------------------------------------------------


def test_read_counts_keeps_only_gene_expression(tmp_path: Path) -> None:
    adata = make_counts(dup_symbol=False)
    write_10x_mtx(adata, tmp_path)
    features = pd.read_csv(tmp_path / "features.tsv.gz", sep="\t", header=None)
    features.iloc[-2:, 2] = "Antibody Capture"
    with gzip.open(tmp_path / "features.tsv.gz", "wt") as fh:
        features.to_csv(fh, sep="\t", header=False, index=False)
    got = io.read_counts(tmp_path, fmt="10x_mtx")
    assert got.n_vars == N_GENES - 2
    assert_same_counts(got, adata[:, : N_GENES - 2])


def test_read_counts_h5ad_counts_layer_and_normalized_x(tmp_path: Path) -> None:
    path = tmp_path / "norm.h5ad"
    adata = write_h5ad_normalized(path)
    with pytest.raises(InputError) as err:
        io.read_counts(path, source="samples.tsv line 3 (sample 'D1_pre')")
    msg = str(err.value)
    assert msg.startswith("samples.tsv line 3 (sample 'D1_pre'): ")
    assert str(path) in msg and "normalized/log-transformed" in msg
    assert "Fix:" in msg and "counts_layer" in msg and "'counts'" in msg

    got = io.read_counts(path, counts_layer="counts")
    want = adata.copy()
    want.X = adata.layers["counts"]
    assert_same_counts(got, want)
    assert list(got.obs.columns) == []


def test_read_counts_h5ad_missing_layer_lists_layers(tmp_path: Path) -> None:
    path = tmp_path / "norm.h5ad"
    write_h5ad_normalized(path)
    with pytest.raises(InputError, match=r"'raw_counts' is not in .*available layers: 'counts'"):
        io.read_counts(path, counts_layer="raw_counts")


def test_read_counts_h5ad_dense_integer_x(tmp_path: Path) -> None:
    adata = make_counts(dup_symbol=False)
    dense = adata.copy()
    dense.X = adata.X.toarray()
    dense.write_h5ad(tmp_path / "dense.h5ad")
    assert_same_counts(io.read_counts(tmp_path / "dense.h5ad", fmt="h5ad"), adata)


def test_read_counts_rejects_negative_values(tmp_path: Path) -> None:
    adata = make_counts()
    adata.X = adata.X.toarray() - 1.0  # scaled data: integers but negative
    adata.write_h5ad(tmp_path / "scaled.h5ad")
    with pytest.raises(InputError, match="negative"):
        io.read_counts(tmp_path / "scaled.h5ad")


def _ensembl_h5ad(path: Path, symbol_column: str | None) -> anndata.AnnData:
    adata = make_counts(dup_symbol=False)
    var = pd.DataFrame(index=pd.Index(adata.var["gene_ids"].to_numpy()))
    if symbol_column:
        var[symbol_column] = pd.Categorical(adata.var_names)  # cellxgene stores categoricals
    ensembl = anndata.AnnData(X=adata.X, obs=adata.obs.copy(), var=var)
    ensembl.write_h5ad(path)
    return adata


def test_read_counts_ensembl_only_h5ad_rejected(tmp_path: Path) -> None:
    _ensembl_h5ad(tmp_path / "ens.h5ad", None)
    with pytest.raises(InputError) as err:
        io.read_counts(tmp_path / "ens.h5ad")
    assert "Ensembl ids and no symbol column was found" in str(err.value)
    assert "Fix: add a var column 'gene_symbols'" in str(err.value)
    with pytest.raises(InputError, match="Ensembl ids"):
        peek_counts(tmp_path / "ens.h5ad", "h5ad")


@pytest.mark.parametrize("column", ["gene_symbols", "feature_name"])
def test_read_counts_ensembl_h5ad_with_symbol_column(tmp_path: Path, column: str) -> None:
    adata = _ensembl_h5ad(tmp_path / "ens.h5ad", column)
    peek_counts(tmp_path / "ens.h5ad", "h5ad")
    got = io.read_counts(tmp_path / "ens.h5ad")
    assert_same_counts(got, adata)


def test_read_counts_mtx_single_ensembl_column_rejected(tmp_path: Path) -> None:
    write_10x_mtx(make_counts(), tmp_path)
    features = pd.read_csv(tmp_path / "features.tsv.gz", sep="\t", header=None)
    with gzip.open(tmp_path / "features.tsv.gz", "wt") as fh:
        features[[0]].to_csv(fh, sep="\t", header=False, index=False)
    for check in (io.read_counts, lambda p: peek_counts(p, "10x_mtx")):
        with pytest.raises(InputError, match="Ensembl ids and no symbol column"):
            check(tmp_path)


def test_read_counts_corrupt_files(tmp_path: Path) -> None:
    (tmp_path / "bad.h5").write_bytes(b"not an hdf5 file")
    (tmp_path / "bad.h5ad").write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    for name in ("bad.h5", "bad.h5ad"):
        with pytest.raises(InputError, match="cannot be read"):
            io.read_counts(tmp_path / name)
        with pytest.raises(InputError, match="cannot be read"):
            peek_counts(tmp_path / name, None)


def test_read_counts_rejects_layer_for_non_h5ad(tmp_path: Path) -> None:
    write_10x_h5(make_counts(), tmp_path / "x.h5")
    with pytest.raises(InputError, match=r"only applies to \.h5ad"):
        io.read_counts(tmp_path / "x.h5", counts_layer="counts")


# ----------------------------------------------------------------------------------------------
# peek_counts
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dense", [False, True])
def test_peek_normalized_h5ad_rejected_without_full_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dense: bool
) -> None:
    path = tmp_path / "norm.h5ad"
    write_h5ad_normalized(path, dense=dense)

    def forbidden(*args, **kwargs):
        raise AssertionError("peek_counts must not load the AnnData")

    monkeypatch.setattr(anndata, "read_h5ad", forbidden)
    monkeypatch.setattr(anndata.io, "read_elem", forbidden)
    with pytest.raises(InputError) as err:
        peek_counts(path, "h5ad", source="s.tsv line 2 (sample 'A')")
    msg = str(err.value)
    assert msg.startswith("s.tsv line 2 (sample 'A'): ")
    assert "normalized/log-transformed" in msg and "'counts'" in msg and "Fix:" in msg
    peek_counts(path, "h5ad", counts_layer="counts")  # raw layer passes
    with pytest.raises(InputError, match="available layers: 'counts'"):
        peek_counts(path, "h5ad", counts_layer="missing")


def test_peek_accepts_valid_inputs(tmp_path: Path) -> None:
    adata = make_counts()
    write_10x_mtx(adata, tmp_path / "mtx")
    write_10x_h5(adata, tmp_path / "x.h5")
    adata.write_h5ad(tmp_path / "x.h5ad")
    peek_counts(tmp_path / "mtx", "10x_mtx")
    peek_counts(tmp_path / "x.h5", "10x_h5")
    peek_counts(tmp_path / "x.h5ad", "h5ad", n_values=5)


def test_peek_mtx_non_integer_and_truncated(tmp_path: Path) -> None:
    write_10x_mtx(make_counts(), tmp_path)
    matrix = tmp_path / "matrix.mtx.gz"
    original = gzip.decompress(matrix.read_bytes()).decode()
    header, comment, size, *entries = original.splitlines()
    real = [header.replace("integer", "real"), comment, size]
    real += [f"{e.rsplit(' ', 1)[0]} {int(e.rsplit(' ', 1)[1]) / 3:.4f}" for e in entries]
    matrix.write_bytes(gzip.compress(("\n".join(real) + "\n").encode()))
    with pytest.raises(InputError, match="normalized/log-transformed"):
        peek_counts(tmp_path, "10x_mtx")
    with pytest.raises(InputError, match="normalized/log-transformed"):
        io.read_counts(tmp_path)

    matrix.write_bytes(gzip.compress(original.encode())[:-30])  # truncated download
    with pytest.raises(InputError, match="cannot be read"):
        peek_counts(tmp_path, "10x_mtx")


def test_peek_mtx_dimension_mismatch(tmp_path: Path) -> None:
    write_10x_mtx(make_counts(), tmp_path)
    write_10x_mtx(make_counts(n_cells=5), tmp_path / "other")
    (tmp_path / "other" / "barcodes.tsv.gz").replace(tmp_path / "barcodes.tsv.gz")
    with pytest.raises(InputError, match="5 barcodes"):
        peek_counts(tmp_path, None)


def test_read_h5ad_parts_reads_only_what_is_asked(tmp_path: Path) -> None:
    counts = sp.random(30, 12, density=0.3, format="csr", random_state=0, dtype=np.float32)
    full = anndata.AnnData(
        X=counts * 2,
        obs=pd.DataFrame({"sample": ["a"] * 30}, index=[f"c{i}" for i in range(30)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(12)]),
        layers={"counts": counts},
        obsm={"X_umap": np.ones((30, 2)), "X_pca": np.zeros((30, 5))},
        obsp={"connectivities": sp.identity(30, format="csr")},
    )
    path = tmp_path / "full.h5ad"
    full.write_h5ad(path)
    only_counts = read_h5ad_parts(path, x=False, layers=["counts"])
    assert (
        only_counts.X is None
        and list(only_counts.layers) == ["counts"]
        and not only_counts.obsm
        and not only_counts.obsp
    )
    assert (only_counts.layers["counts"] != counts).nnz == 0
    assert list(only_counts.obs["sample"]) == ["a"] * 30 and list(only_counts.var_names) == list(full.var_names)
    x_and_umap = read_h5ad_parts(path, obsm=["X_umap"])
    assert (x_and_umap.X != full.X).nnz == 0 and list(x_and_umap.obsm) == ["X_umap"] and not x_and_umap.layers
    with pytest.raises(KeyError, match="layers/spliced"):
        read_h5ad_parts(path, layers=["spliced"])


def test_read_h5ad_parts_reads_some_genes_block_by_block(tmp_path: Path, monkeypatch) -> None:
    import pbmc_prepost.h5ad as h5ad_module

    X = sp.random(50, 20, density=0.3, format="csr", random_state=1, dtype=np.float32)
    full = anndata.AnnData(
        X=X,
        obs=pd.DataFrame(index=[f"c{i}" for i in range(50)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(20)]),
        obsp={"connectivities": sp.identity(50, format="csr")},
    )
    path = tmp_path / "full.h5ad"
    full.write_h5ad(path)
    monkeypatch.setattr(h5ad_module, "ROW_BLOCK", 7)  # blocks that do not divide the rows
    # Asked in any order, with an unmeasured gene: the measured ones come in var order.
    some = read_h5ad_parts(path, obsp=["connectivities"], genes=["g17", "g3", "g4", "not_measured"])
    assert list(some.var_names) == ["g3", "g4", "g17"]
    assert sp.issparse(some.X) and (some.X != X[:, [3, 4, 17]]).nnz == 0
    assert some.n_obs == 50 and "connectivities" in some.obsp


def test_partial_reads_of_rows_blocks_and_column_means(tmp_path: Path, monkeypatch) -> None:
    import pbmc_prepost.h5ad as h5ad_module
    from pbmc_prepost.h5ad import column_means, iter_row_blocks

    X = sp.random(50, 20, density=0.3, format="csr", random_state=2, dtype=np.float32)
    full = anndata.AnnData(
        X=X,
        obs=pd.DataFrame({"n": np.arange(50)}, index=[f"c{i}" for i in range(50)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(20)]),
        layers={"counts": X * 3},
        obsm={"X_umap": np.arange(100.0).reshape(50, 2)},
        obsp={"connectivities": sp.random(50, 50, density=0.1, format="csr", random_state=3)},
    )
    path = tmp_path / "full.h5ad"
    full.write_h5ad(path)
    monkeypatch.setattr(h5ad_module, "ROW_BLOCK", 7)
    rows = np.array([0, 1, 2, 9, 10, 30, 49])  # runs of consecutive rows and single ones
    part = read_h5ad_parts(
        path, layers=["counts"], obsm=["X_umap"], obsp=["connectivities"], rows=rows, genes=["g2", "g5"]
    )
    assert list(part.obs_names) == [f"c{i}" for i in rows] and list(part.var_names) == ["g2", "g5"]
    assert np.array_equal(part.X.toarray(), X[rows][:, [2, 5]].toarray())
    assert np.array_equal(part.layers["counts"].toarray(), (X * 3)[rows][:, [2, 5]].toarray())
    assert np.array_equal(part.obsm["X_umap"], full.obsm["X_umap"][rows])
    graph = full.obsp["connectivities"]
    assert np.array_equal(part.obsp["connectivities"].toarray(), graph[rows][:, rows].toarray())
    blocks = list(iter_row_blocks(path, "layers/counts", genes=["g19", "g0"]))
    assert [(start, stop) for start, stop, _ in blocks][:2] == [(0, 7), (7, 14)] and blocks[-1][1] == 50
    assert np.array_equal(sp.vstack([b for _, _, b in blocks]).toarray(), (X * 3)[:, [0, 19]].toarray())
    means = column_means(path, "X")
    assert list(means.index) == list(full.var_names)
    assert np.allclose(means.to_numpy(), np.asarray(X.sum(axis=0, dtype="float64")).ravel() / 50, rtol=1e-12)
    with pytest.raises(KeyError, match="no X"):
        read_h5ad_parts(_without_x(full, tmp_path))


def _without_x(adata: anndata.AnnData, tmp_path: Path) -> Path:
    path = tmp_path / "counts_only.h5ad"
    anndata.AnnData(obs=adata.obs, var=adata.var, layers={"counts": adata.layers["counts"]}).write_h5ad(path)
    return path
