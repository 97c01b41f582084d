"""Tests for pbmc_prepost.samplesheet: every error and warning, and a valid paired sheet."""

from __future__ import annotations

import os
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pbmc_prepost import InputError, samplesheet
from pbmc_prepost.design import Contrast
from pbmc_prepost.samplesheet import DEFAULT_BATCH, SheetReport
from pbmc_prepost.simulation.writers import write_10x_h5, write_10x_mtx

from conftest import CONTRAST


def load_sample_sheet(path, contrast: Contrast = CONTRAST, **kwargs) -> SheetReport:
    """The sheet with the shipped configuration's contrast unless another is given."""
    return samplesheet.load_sample_sheet(path, contrast, **kwargs)


SHEET = "config/samples.tsv"
HEADER = "sample\tdonor\ttimepoint\tpath"


def counts(seed: int = 0, n_cells: int = 8, n_genes: int = 6) -> anndata.AnnData:
    rng = np.random.default_rng(seed)
    return anndata.AnnData(
        X=sp.csr_matrix(rng.poisson(2.0, size=(n_cells, n_genes)).astype(np.float32)),
        obs=pd.DataFrame(index=[f"BC{i:03d}-1" for i in range(n_cells)]),
        var=pd.DataFrame(
            {"gene_ids": [f"ENSG{i:011d}" for i in range(n_genes)]},
            index=[f"GENE{i}" for i in range(n_genes)],
        ),
    )


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder (the cwd) holding one input of every layout under data/."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    write_10x_mtx(counts(1), "data/D1_pre")  # Cell Ranger folder
    write_10x_h5(counts(2), "data/D1_post.h5")
    counts(3).write_h5ad("data/D2_pre.h5ad")
    write_10x_mtx(counts(4), "data/geo", prefix="GSM4_D2_post_")  # GEO triplet
    layered = counts(5)
    layered.layers["counts"] = layered.X.copy()
    layered.X = layered.X.multiply(0.37).tocsr()  # "normalized" X, raw counts in a layer
    layered.write_h5ad("data/D3_pre.h5ad")
    return tmp_path


def write_sheet(*lines: str, name: str = SHEET) -> str:
    Path(name).parent.mkdir(parents=True, exist_ok=True)
    Path(name).write_text("\n".join(lines) + "\n")
    return name


def row(*values: str) -> str:
    return "\t".join(values)


def load_problems(sheet: str = SHEET, **kwargs) -> list[str]:
    with pytest.raises(InputError) as err:
        load_sample_sheet(sheet, **kwargs)
    head, *problems = str(err.value).splitlines()
    assert head.startswith(f"{sheet}: the sample sheet has")
    assert problems
    return problems


def find(messages: list[str], line: int | None, sample: str | None, *fragments: str) -> str:
    """The one message for that line/sample containing all fragments and a Fix: hint."""
    prefix = SHEET
    if line is not None:
        prefix += f" line {line}"
    if sample is not None:
        prefix += f" (sample '{sample}')"
    prefix += ": "
    hits = [m for m in messages if m.startswith(prefix) and all(f in m for f in fragments)]
    assert len(hits) == 1, f"no single message {prefix!r} with {fragments} in:\n" + "\n".join(messages)
    assert "Fix:" in hits[0]
    return hits[0]


VALID = (
    "# PBMC pre/post sample sheet",
    "# paths are relative to the project folder",
    HEADER + "\tformat\tcounts_layer",
    row("D1_pre", "D1", "pre", "data/D1_pre", "", ""),
    row("D1_post", "D1", "post", "data/D1_post.h5", "10x_h5", ""),
    "",
    row("D2_pre", "D2", "pre", "data/D2_pre.h5ad", "", ""),
    "# second donor, GEO download",
    row("D2_post", "D2", "post", "data/geo/GSM4_D2_post_matrix.mtx.gz", "", ""),
    row("D3_pre", "D3", "pre", "data/D3_pre.h5ad", "h5ad", "counts"),
)


# ----------------------------------------------------------------------------------------------
# valid sheet
# ----------------------------------------------------------------------------------------------


def test_valid_sheet_paired_donors_and_filled_columns(project: Path) -> None:
    report = load_sample_sheet(write_sheet(*VALID))
    assert isinstance(report, SheetReport)
    s = report.samples
    assert list(s.index) == ["D1_pre", "D1_post", "D2_pre", "D2_post", "D3_pre"]
    assert s.index.name == "sample"
    assert report.paired_donors == ["D1", "D2"]
    assert s["paired"].tolist() == [True, True, True, True, False]
    assert s["paired"].dtype == bool
    assert s["format"].tolist() == ["10x_mtx", "10x_h5", "h5ad", "10x_mtx", "h5ad"]
    assert (s["batch"] == DEFAULT_BATCH).all()
    assert s.loc["D2_post", "path"] == "data/geo/GSM4_D2_post_matrix.mtx.gz"  # as written
    assert s.loc["D2_post", "resolved_path"] == str(project / "data/geo/GSM4_D2_post_matrix.mtx.gz")
    assert s.loc["D3_pre", "counts_layer"] == "counts"
    # line numbers count comment and blank lines, as an editor shows them
    assert s.loc["D3_pre", "source"] == f"{SHEET} line 10 (sample 'D3_pre')"
    assert all(s[c].map(type).eq(str).all() for c in s.columns if c != "paired")
    # D3 only has 'pre': the single warning
    assert len(report.warnings) == 1
    find(report.warnings, 10, "D3_pre", "donor 'D3' has only timepoint 'pre'", "excluded from")


def test_inputs_never_modified(project: Path) -> None:
    sheet = write_sheet(*VALID)
    files = [p for p in project.rglob("*") if p.is_file()]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    load_sample_sheet(sheet)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in project.rglob("*") if p.is_file()}
    assert after == before  # no file changed, none created


def test_check_files_false_opens_nothing(project: Path) -> None:
    sheet = write_sheet(
        HEADER,
        row("A_pre", "A", "pre", "missing/A_filtered_feature_bc_matrix"),
        row("A_post", "A", "post", "missing/A_post.h5"),
    )
    report = load_sample_sheet(sheet, check_files=False)
    assert report.samples["format"].tolist() == ["10x_mtx", "10x_h5"]
    assert report.paired_donors == ["A"]


def test_extra_columns_are_carried(project: Path) -> None:
    sheet = write_sheet(
        HEADER + "\tage\tbatch",
        row("D1_pre", "D1", "pre", "data/D1_pre", "54", "run1"),
        row("D1_post", "D1", "post", "data/D1_post.h5", "54", "run2"),
    )
    report = load_sample_sheet(sheet, extra_columns=["age"])
    assert report.samples["age"].tolist() == ["54", "54"]
    assert report.samples["batch"].tolist() == ["run1", "run2"]


def test_custom_contrast_column(project: Path) -> None:
    contrast = Contrast(column="treatment", reference="untreated", treated="drug", pair_by="donor")
    sheet = write_sheet(
        "sample\tdonor\ttreatment\tpath",
        row("D1_pre", "D1", "untreated", "data/D1_pre"),
        row("D1_post", "D1", "drug", "data/D1_post.h5"),
    )
    report = load_sample_sheet(sheet, contrast=contrast)
    assert report.paired_donors == ["D1"]
    assert report.warnings == []

    sheet = write_sheet(HEADER, row("D1_pre", "D1", "pre", "data/D1_pre"))
    problems = load_problems(sheet, contrast=contrast)
    find(problems, None, None, "missing required column 'treatment'")


# ----------------------------------------------------------------------------------------------
# errors: the sheet file itself
# ----------------------------------------------------------------------------------------------


def test_missing_sheet(project: Path) -> None:
    with pytest.raises(InputError) as err:
        load_sample_sheet("config/nope.tsv")
    assert "config/nope.tsv: the sample sheet does not exist. Fix:" in str(err.value)


def test_empty_sheet(project: Path) -> None:
    write_sheet("# only a comment", "")
    find(load_problems(), None, None, "the sample sheet is empty")
    write_sheet(HEADER)
    find(load_problems(), None, None, "header but no samples")


def test_comma_separated_sheet(project: Path) -> None:
    write_sheet("# exported from Excel", "sample,donor,timepoint,path", "D1_pre,D1,pre,data/D1_pre")
    msg = find(load_problems(), 2, None, "comma-separated", "must be tab-separated")
    assert "tab-separated text (TSV)" in msg


def test_comma_separated_line_in_tab_sheet(project: Path) -> None:
    write_sheet(HEADER, row("D1_pre", "D1", "pre", "data/D1_pre"), "D1_post,D1,post,data/x.h5")
    find(load_problems(), 3, None, "looks comma-separated", "tabs")


# ----------------------------------------------------------------------------------------------
# errors: columns
# ----------------------------------------------------------------------------------------------


def test_missing_required_column(project: Path) -> None:
    write_sheet("sample\tdonor\tTimepoint", row("D1_pre", "D1", "pre"))
    problems = load_problems()
    find(problems, None, None, "missing required column 'path'", "columns found: 'sample'")
    msg = find(problems, None, None, "missing required column 'timepoint'")
    assert "rename 'Timepoint' to 'timepoint'" in msg


def test_unknown_column(project: Path) -> None:
    write_sheet(HEADER + "\tsex", row("D1_pre", "D1", "pre", "data/D1_pre", "F"))
    msg = find(load_problems(), None, None, "unknown column 'sex'")
    assert "Fix: remove it, or list it in config key `extra_sample_columns`" in msg


def test_extra_column_missing_from_sheet(project: Path) -> None:
    write_sheet(HEADER, row("D1_pre", "D1", "pre", "data/D1_pre"))
    find(load_problems(extra_columns=["age"]), None, None, "lists 'age'")


# ----------------------------------------------------------------------------------------------
# errors: rows
# ----------------------------------------------------------------------------------------------


def test_empty_required_value(project: Path) -> None:
    write_sheet(HEADER, row("D1_pre", "D1", "", "data/D1_pre"), row("D1_post", "D1", "post", ""))
    problems = load_problems()
    find(problems, 2, "D1_pre", "empty 'timepoint'", "set it to 'pre' or 'post'")
    find(problems, 3, "D1_post", "empty 'path'")


def test_duplicate_sample_id(project: Path) -> None:
    write_sheet(
        HEADER,
        "# comment shifts the line numbers",
        row("D1_pre", "D1", "pre", "data/D1_pre"),
        row("D1_pre", "D1", "post", "data/D1_post.h5"),
    )
    find(load_problems(), 4, "D1_pre", "used twice (lines 3 and 4)", "unique id")


def test_invalid_sample_id(project: Path) -> None:
    write_sheet(HEADER, row("D1 pre/1", "D1", "pre", "data/D1_pre"))
    msg = find(load_problems(), 2, "D1 pre/1", "may only contain letters, digits")
    assert "'D1_pre_1'" in msg


def test_path_does_not_exist(project: Path) -> None:
    write_sheet(HEADER, row("D1_pre", "D1", "pre", "data/typo"))
    msg = find(load_problems(), 2, "D1_pre", "path 'data/typo' does not exist")
    assert str(project) in msg and "relative to the folder where snakemake runs" in msg


def test_raw_path_is_optional_resolved_and_checked(project: Path) -> None:
    write_10x_h5(counts(9, n_cells=40), "data/D1_post_raw.h5")
    write_sheet(
        HEADER + "\traw_path",
        row("D1_pre", "D1", "pre", "data/D1_pre", ""),
        row("D1_post", "D1", "post", "data/D1_post.h5", "data/D1_post_raw.h5"),
    )
    samples = load_sample_sheet(SHEET).samples
    assert samples.loc["D1_pre", "resolved_raw_path"] == ""
    assert samples.loc["D1_post", "resolved_raw_path"] == str(project / "data" / "D1_post_raw.h5")
    write_sheet(HEADER + "\traw_path", row("D1_pre", "D1", "pre", "data/D1_pre", "data/nothing.h5"))
    find(load_problems(), 2, "D1_pre", "raw_path 'data/nothing.h5' does not exist", "raw_feature_bc_matrix")


def test_unknown_format(project: Path) -> None:
    write_sheet(HEADER + "\tformat", row("D1_pre", "D1", "pre", "data/D1_pre", "mtx"))
    find(load_problems(), 2, "D1_pre", "unknown format 'mtx'", "did you mean '10x_mtx'")


def test_format_mismatch(project: Path) -> None:
    write_sheet(HEADER + "\tformat", row("D1_post", "D1", "post", "data/D1_post.h5", "h5ad"))
    find(load_problems(), 2, "D1_post", "format is 'h5ad' but", "looks like 10x_h5")


def test_undetectable_layout(project: Path) -> None:
    Path("data/D1.csv").write_text("x\n")
    write_sheet(HEADER, row("D1_pre", "D1", "pre", "data/D1.csv"))
    find(load_problems(), 2, "D1_pre", "cannot tell the format", "accepted layouts")


def test_counts_layer_for_non_h5ad(project: Path) -> None:
    write_sheet(HEADER + "\tcounts_layer", row("D1_post", "D1", "post", "data/D1_post.h5", "raw"))
    find(load_problems(), 2, "D1_post", "counts_layer 'raw' is given", "only applies to .h5ad")


def test_too_many_values_on_a_line(project: Path) -> None:
    write_sheet(HEADER, row("D1_pre", "D1", "pre", "data/D1_pre", "oops"))
    find(load_problems(), 2, "D1_pre", "5 tab-separated values but the header has 4")


def _normalized(path: str) -> None:
    adata = counts(7)
    adata.X = adata.X.multiply(0.5).tocsr()
    adata.write_h5ad(path)


def _ensembl_only(path: str) -> None:
    adata = counts(8)
    adata.var_names = adata.var["gene_ids"].to_numpy()
    del adata.var["gene_ids"]
    adata.write_h5ad(path)


@pytest.mark.parametrize(
    ("maker", "layer", "fragment"),
    [
        (_normalized, "", "normalized/log-transformed"),
        (_ensembl_only, "", "Ensembl ids and no symbol column was found"),
        (lambda p: counts(9).write_h5ad(p), "raw_counts", "counts_layer 'raw_counts' is not in"),
        (lambda p: Path(p).write_bytes(b"garbage"), "", "cannot be read as an AnnData"),
    ],
    ids=["normalized", "ensembl", "missing-layer", "corrupt"],
)
def test_count_file_problems_name_the_sheet_line(project: Path, maker, layer, fragment) -> None:
    maker("data/bad.h5ad")
    write_sheet(
        HEADER + "\tcounts_layer",
        row("D1_pre", "D1", "pre", "data/D1_pre", ""),
        row("D1_post", "D1", "post", "data/bad.h5ad", layer),
    )
    find(load_problems(), 3, "D1_post", fragment, "data/bad.h5ad")
    assert len(load_problems()) == 1  # the good sample raises nothing


def test_all_problems_reported_in_one_error(project: Path) -> None:
    write_sheet(
        "# header below",
        HEADER + "\tformat",
        row("D1_pre", "D1", "pre", "data/D1_pre", ""),
        row("bad id", "D1", "post", "data/D1_post.h5", ""),
        row("D2_pre", "D2", "pre", "data/none.h5ad", ""),
        row("D2_post", "D2", "post", "data/D1_post.h5", "bogus"),
    )
    problems = load_problems()
    assert len(problems) == 3
    find(problems, 4, "bad id", "may only contain")
    find(problems, 5, "D2_pre", "does not exist")
    find(problems, 6, "D2_post", "unknown format 'bogus'")


# ----------------------------------------------------------------------------------------------
# warnings
# ----------------------------------------------------------------------------------------------


def test_warning_donor_with_one_timepoint(project: Path) -> None:
    report = load_sample_sheet(
        write_sheet(
            HEADER,
            row("D1_pre", "D1", "pre", "data/D1_pre"),
            row("D1_post", "D1", "post", "data/D1_post.h5"),
            row("D2_post", "D2", "post", "data/D2_pre.h5ad"),
        )
    )
    find(report.warnings, 4, "D2_post", "donor 'D2' has only timepoint 'post'", "no 'pre'")
    assert report.samples.loc["D2_post", "paired"] == False  # noqa: E712 (numpy bool)


def test_warning_other_timepoint(project: Path) -> None:
    report = load_sample_sheet(
        write_sheet(
            HEADER,
            row("D1_pre", "D1", "pre", "data/D1_pre"),
            row("D1_post", "D1", "post", "data/D1_post.h5"),
            row("D1_followup", "D1", "followup", "data/D2_pre.h5ad"),
            row("D2_pre", "D2", "Pre", "data/geo/GSM4_D2_post_matrix.mtx.gz"),
        )
    )
    msg = find(report.warnings, 4, "D1_followup", "timepoint 'followup' is neither")
    assert "kept for QC and clustering, excluded from the contrast" in msg
    find(report.warnings, 5, "D2_pre", "timepoint 'Pre'", "write 'pre' (values are case-sensitive)")
    assert report.samples["paired"].tolist() == [True, True, False, False]


def test_warning_no_donor_column(project: Path) -> None:
    report = load_sample_sheet(
        write_sheet(
            "sample\ttimepoint\tpath",
            row("D1_pre", "pre", "data/D1_pre"),
            row("D1_post", "post", "data/D1_post.h5"),
        )
    )
    find(report.warnings, None, None, "no 'donor' column", "falls back to an unpaired design")
    assert report.paired_donors == []
    assert not report.samples["paired"].any()
    assert report.samples["donor"].tolist() == ["", ""]


def test_warning_no_donor_has_both_timepoints(project: Path) -> None:
    report = load_sample_sheet(
        write_sheet(
            HEADER,
            row("D1_pre", "D1", "pre", "data/D1_pre"),
            row("D2_post", "D2", "post", "data/D1_post.h5"),
        )
    )
    find(report.warnings, None, None, "no donor has both", "falls back to an unpaired design")
    assert report.paired_donors == []


def test_warning_same_donor_same_timepoint(project: Path) -> None:
    report = load_sample_sheet(
        write_sheet(
            HEADER,
            row("D1_pre", "D1", "pre", "data/D1_pre"),
            row("D1_pre_rep2", "D1", "pre", "data/D2_pre.h5ad"),
            row("D1_post", "D1", "post", "data/D1_post.h5"),
        )
    )
    msg = find(report.warnings, 3, "D1_pre_rep2", "donor 'D1' has 2 samples at timepoint 'pre'")
    assert "(lines 2, 3)" in msg and "pseudobulks are treated as separate samples" in msg
    assert report.paired_donors == ["D1"]


def test_warning_partial_batch(project: Path) -> None:
    report = load_sample_sheet(
        write_sheet(
            HEADER + "\tbatch",
            row("D1_pre", "D1", "pre", "data/D1_pre", "run1"),
            row("D1_post", "D1", "post", "data/D1_post.h5", ""),
        )
    )
    find(report.warnings, 3, "D1_post", "empty batch", DEFAULT_BATCH)
    assert report.samples["batch"].tolist() == ["run1", DEFAULT_BATCH]


def test_warning_same_path_twice(project: Path) -> None:
    report = load_sample_sheet(
        write_sheet(
            HEADER,
            row("D1_pre", "D1", "pre", "data/D1_pre"),
            row("D1_post", "D1", "post", "./data/D1_pre/"),
        )
    )
    find(report.warnings, 3, "D1_post", "also used by sample 'D1_pre' (line 2)")


def test_relative_paths_resolve_against_cwd(project: Path) -> None:
    sheet = write_sheet(HEADER, row("D1_pre", "D1", "pre", "data/D1_pre"))
    os.chdir(project / "config")  # monkeypatch.chdir in the fixture restores the cwd
    with pytest.raises(InputError, match="does not exist"):
        load_sample_sheet(Path("..") / sheet)
