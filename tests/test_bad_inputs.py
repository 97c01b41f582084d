"""The bad-input catalog (issue 15): real inputs that go wrong, each with one clear message naming the
file, the line and the fix, and no traceback; or, where the user's data are fine, a clean load.

Cases already covered elsewhere: missing/unknown/empty columns, duplicate ids, missing files, format
mismatches, normalized values, Ensembl ids without symbols (tests/test_samplesheet.py); unknown and
out-of-range config keys (tests/test_configuration.py); trial-design checks (tests/test_contrasts.py).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pbmc_prepost import InputError, samplesheet
from pbmc_prepost.configuration import validate_config
from pbmc_prepost.io import read_counts
from pbmc_prepost.settings import SCHEMA
from pbmc_prepost.simulation.writers import write_10x_h5, write_10x_mtx

from conftest import CONTRAST

HEADER = "sample\tdonor\ttimepoint\tpath"
GOOD = ["D1_pre\tD1\tpre\tdata/a.h5", "D1_post\tD1\tpost\tdata/b.h5"]


def counts(seed: int = 0, n_cells: int = 8, names: list[str] | None = None) -> anndata.AnnData:
    names = names or ["MT-CO1", "MT-ND1", "ACTB", "CD3E", "LYZ", "PTPRC"]
    rng = np.random.default_rng(seed)
    return anndata.AnnData(
        X=sp.csr_matrix(rng.poisson(2.0, size=(n_cells, len(names))).astype(np.float32)),
        obs=pd.DataFrame(index=[f"BC{i:03d}-1" for i in range(n_cells)]),
        var=pd.DataFrame({"gene_ids": [f"ENSG{i:011d}" for i in range(len(names))]}, index=names),
    )


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write_10x_h5(counts(1), "data/a.h5")
    write_10x_h5(counts(2), "data/b.h5")
    return tmp_path


def load(text: str | bytes, **kwargs):
    Path("samples.tsv").write_bytes(text if isinstance(text, bytes) else text.encode())
    return samplesheet.load_sample_sheet("samples.tsv", CONTRAST, mito_pattern="^MT-", **kwargs)


def one_problem(text: str | bytes, line: int | None, *fragments: str) -> str:
    with pytest.raises(InputError) as error:
        load(text)
    problems = str(error.value).splitlines()[1:]
    where = "samples.tsv" + (f" line {line}" if line else "")
    hits = [p for p in problems if p.startswith(where) and all(f in p for f in fragments)]
    assert len(hits) == 1 and "Fix:" in hits[0], problems
    assert "Traceback" not in str(error.value)
    return hits[0]


def sheet(*rows: str, header: str = HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


# ---- sheet text: fine as written ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        sheet(*GOOD).replace("\n", "\r\n"),  # saved on Windows
        "\ufeff" + sheet(*GOOD),  # UTF-8 BOM from a spreadsheet export
    ],
    ids=["crlf", "bom"],
)
def test_windows_line_ends_and_a_bom_read_cleanly(folder, text):
    report = load(text)
    assert list(report.samples.index) == ["D1_pre", "D1_post"] and list(report.samples.columns[:3]) == [
        "donor",
        "timepoint",
        "path",
    ]


def test_spaces_and_shell_metacharacters_in_a_path_are_just_characters(folder):
    odd = Path("data/run 1 $(rm -rf x); `y` & z")
    odd.mkdir(parents=True)
    write_10x_h5(counts(3), odd / "b.h5")
    report = load(sheet(GOOD[0], f"D1_post\tD1\tpost\t{odd / 'b.h5'}"))
    assert report.samples.loc["D1_post", "resolved_path"] == str((folder / odd / "b.h5").resolve())
    assert (folder / odd).exists() and not (folder / "x").exists()


# ---- sheet text: refused -------------------------------------------------------------------------


@pytest.mark.parametrize(("sample", "better"), [("../x", "'x'"), ("a/b", "'a_b'")])
def test_a_sample_id_that_is_a_path_is_refused(folder, sample, better):
    message = one_problem(sheet(GOOD[0], f"{sample}\tD1\tpost\tdata/b.h5"), 3, f"sample id '{sample}'")
    assert f"rename it, e.g. to {better}" in message


def test_duplicate_column_names_are_refused(folder):
    rows = [r + "\tD1" for r in GOOD]
    one_problem(sheet(*rows, header=HEADER + "\tdonor"), None, "column 'donor' appears more than once")


# ---- matrix files ----------------------------------------------------------------------------------


def test_a_truncated_h5_is_named_with_its_line(folder):
    Path("data/b.h5").write_bytes(Path("data/a.h5").read_bytes()[:300])
    one_problem(sheet(*GOOD), 3, "'data/b.h5' cannot be read as a Cell Ranger .h5 file", "truncated")


def test_a_gzip_cut_short_is_named_with_its_line(folder):
    write_10x_mtx(counts(4), "data/mtx")
    matrix = Path("data/mtx/matrix.mtx.gz")
    matrix.write_bytes(matrix.read_bytes()[:-20])
    one_problem(sheet(GOOD[0], "D1_post\tD1\tpost\tdata/mtx"), 3, "cannot be read", "truncated .gz download")


def test_a_matrix_with_no_cells_is_refused(folder):
    write_10x_h5(counts(5, n_cells=0), "data/b.h5")
    one_problem(sheet(*GOOD), 3, "has no cells (0 barcodes)", "remove its row")


def test_a_matrix_with_no_genes_is_refused(folder):
    empty = anndata.AnnData(X=sp.csr_matrix((4, 0), dtype=np.float32), obs=pd.DataFrame(index=list("abcd")))
    empty.write_h5ad("data/b.h5ad")
    one_problem(sheet(GOOD[0], "D1_post\tD1\tpost\tdata/b.h5ad"), 3, "has no genes (0 features)")


def test_a_mouse_matrix_says_which_patterns_to_set(folder):
    write_10x_h5(counts(6, names=["mt-Co1", "mt-Nd1", "Actb", "Cd3e", "Lyz2", "Ptprc"]), "data/b.h5")
    message = one_problem(sheet(*GOOD), 3, "no gene matches the mitochondrial pattern qc.mito_pattern '^MT-'")
    assert "'mt-Co1'" in message and "qc.mito_pattern: '^mt-'" in message
    # ... and with the mouse patterns set, the same matrix is accepted.
    report = samplesheet.load_sample_sheet(
        "samples.tsv", CONTRAST, mito_pattern="^MT-", mito_overrides={"D1_post": "^mt-"}
    )
    assert "D1_post" in report.samples.index


def test_duplicated_symbols_are_made_unique_and_logged(folder, caplog):
    write_10x_h5(counts(7, names=["GENE0", "GENE0", "GENE1", "MT-CO1", "GENE3", "GENE0"]), "data/b.h5")
    assert "D1_post" in load(sheet(*GOOD)).samples.index
    with caplog.at_level(logging.INFO, logger="pbmc_prepost.io"):
        adata = read_counts("data/b.h5", "10x_h5")
    assert list(adata.var_names[:2]) == ["GENE0", "GENE0-1"] and adata.var_names.is_unique
    assert "1 gene symbol(s) appear more than once" in caplog.text and "GENE0" in caplog.text


# ---- configuration -----------------------------------------------------------------------------------


def test_a_section_given_as_text_on_the_command_line_is_read_when_unambiguous():
    warnings: list[str] = []
    config = validate_config({"doublets": "{mean_center: true}"}, SCHEMA, warnings=warnings)
    assert config["doublets"]["mean_center"] is True and config["doublets"]["remove"] is True
    assert "arrived as text" in warnings[0] and "--configfile" in warnings[0]


def test_a_section_given_as_plain_text_is_refused_with_the_exact_fix():
    with pytest.raises(InputError) as error:
        validate_config({"doublets": "mean_center"}, SCHEMA)
    assert "should be a section (key: value pairs), not text" in str(error.value)
    assert "--configfile" in str(error.value) and "doublets: {...}" in str(error.value)


def test_inputs_are_never_written(folder):
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in Path("data").rglob("*") if p.is_file()}
    load(sheet(*GOOD))
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in Path("data").rglob("*") if p.is_file()}
    assert before == after and os.access("data/a.h5", os.R_OK)


# ---- runs that go wrong downstream ----------------------------------------------------------------


def test_a_sample_left_with_too_few_cells_is_left_out_of_the_merge_and_named(caplog):
    from pbmc_prepost.design import Study
    from pbmc_prepost.preprocess import merge_samples
    from pbmc_prepost.provenance import fallbacks
    from pbmc_prepost.settings import MergeSettings

    from conftest import settings_of

    meta = pd.DataFrame(
        {"donor": ["D1", "D1", "D2"], "timepoint": ["pre", "post", "pre"], "batch": "b1"},
        index=pd.Index(["D1_pre", "D1_post", "D2_pre"], name="sample"),
    )
    sizes = {"D1_pre": 30, "D1_post": 25, "D2_pre": 12}
    objects = {}
    for i, (sample, n) in enumerate(sizes.items()):
        part = counts(i, n_cells=n)
        part.obs_names = [f"{sample}:{b}" for b in part.obs_names]
        objects[sample] = part
    settings = settings_of(MergeSettings, study=Study.from_sheet(meta, CONTRAST))
    with caplog.at_level(logging.WARNING, logger="pbmc_prepost.preprocess"):
        merged = merge_samples(objects, settings)
    assert set(merged.obs["sample"]) == {"D1_pre", "D1_post"} and merged.n_obs == 55
    assert "sample D2_pre left out of the merged stage: 12 cells passed QC" in caplog.text
    summary = pd.DataFrame({"sample": list(sizes), "cells_out": list(sizes.values()), "doublet_score_threshold": 0.2})
    empty = pd.DataFrame(columns=["batch", "status", "detail"]), pd.DataFrame(columns=["cluster", "n_cells", "reason"])
    table = fallbacks(summary, *empty, min_cells_per_sample=settings.min_cells_per_sample)
    assert table[["step", "subject"]].values.tolist() == [["merge_samples", "D2_pre"]]
    with pytest.raises(ValueError, match=r"no sample has merge\.min_cells_per_sample = 100"):
        merge_samples(objects, settings._replace(min_cells_per_sample=100))


def test_a_nested_number_given_as_text_is_read_as_a_number():
    config = validate_config({"merge": {"min_cells_per_sample": "500"}, "seed": "3"}, SCHEMA)
    assert config["merge"]["min_cells_per_sample"] == 500 and config["seed"] == 3
    with pytest.raises(InputError, match="seed = 'three' should be of type integer"):
        validate_config({"seed": "three"}, SCHEMA)
