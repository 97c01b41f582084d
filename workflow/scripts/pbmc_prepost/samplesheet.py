"""Loading and validating the sample sheet (``config/samples.tsv``).

The sheet is tab-separated text: one header line, then one line per sample. Lines starting with
``#`` and blank lines are ignored. Every problem is collected first and reported together in one
:class:`pbmc_prepost.InputError`, one problem per line, each naming the sheet, the line number as
an editor shows it, the sample and a fix::

    config/samples.tsv line 4 (sample 'D2_post'): path 'data/D2' does not exist. Fix: ...

Soft issues (unpaired donors, extra timepoints) come back as warnings in the same style.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pbmc_prepost import InputError, preflight
from pbmc_prepost.design import Contrast, Design
from pbmc_prepost.formats import FORMATS
from pbmc_prepost.sheet_design import check_design_columns

#: Batch given to samples whose batch is empty: one constant batch means "no batch structure".
DEFAULT_BATCH = "batch_1"
#: Columns the workflow itself understands (besides the contrast and pairing columns).
STANDARD_COLUMNS: tuple[str, ...] = (
    "sample",
    "donor",
    "timepoint",
    "path",
    "format",
    "batch",
    "counts_layer",
    "raw_path",
)
#: Columns added by :func:`load_sample_sheet`; a sheet may not use these names.
RESERVED_COLUMNS: tuple[str, ...] = ("resolved_path", "resolved_raw_path", "source", "paired")
_SAMPLE_ID_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_FORMAT_ALIASES = {
    "mtx": "10x_mtx",
    "10x": "10x_mtx",
    "cellranger": "10x_mtx",
    "10x_mex": "10x_mtx",
    "h5": "10x_h5",
    "10xh5": "10x_h5",
    "anndata": "h5ad",
    "10x_h5ad": "h5ad",
    "cellbender": "cellbender_h5",
}


@dataclass
class SheetReport:
    """A validated sample sheet.

    Attributes
    ----------
    samples
        One row per sample in sheet order, index = sample id (named ``sample``). All columns are
        str except the bool ``paired``. Always present: the contrast column, the ``pair_by``
        column ('' when the sheet has none), ``path`` (as written), ``format`` (given, detected,
        or guessed from the name when files are not checked), ``batch`` (empty ->
        ``DEFAULT_BATCH``), ``counts_layer`` ('' = use X), ``resolved_path`` (absolute),
        ``source`` (label such as ``"config/samples.tsv line 3 (sample 'D1_pre')"`` to pass to
        :func:`pbmc_prepost.io.read_counts`), ``paired`` (the donor has both contrast
        timepoints and this sample is one of them), plus allowed extra columns.
    warnings
        Soft problems, one line each, same style as errors.
    paired_donors
        Donors with both a reference and a treated sample, sorted.
    """

    samples: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    paired_donors: list[str] = field(default_factory=list)


class _Messages:
    """Collects problems and warnings with the ``<sheet> line N (sample 'x'): ...`` prefix."""

    def __init__(self, sheet: str) -> None:
        self.sheet = sheet
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def where(self, line: int | None = None, sample: str = "") -> str:
        text = self.sheet
        if line is not None:
            text += f" line {line}"
        if sample:
            text += f" (sample '{sample}')"
        return text

    def problem(self, what: str, fix: str, line: int | None = None, sample: str = "") -> None:
        self.problems.append(f"{self.where(line, sample)}: {what}. Fix: {fix}.")

    def warn(self, what: str, fix: str, line: int | None = None, sample: str = "") -> None:
        self.warnings.append(f"{self.where(line, sample)}: {what}. Fix: {fix}.")

    def raise_if_any(self) -> None:
        if self.problems:
            n = len(self.problems)
            head = f"{self.sheet}: the sample sheet has {n} problem{'s' if n > 1 else ''}:"
            raise InputError("\n".join([head, *self.problems]))


def _unquote(value: str) -> str:
    # Spreadsheet exports wrap some values in double quotes; the quotes are never meant.
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].strip()
    return value


def _read_table(path: Path, msgs: _Messages) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Split the sheet into header and (line number, values) rows, recording problems.

    Parsed by hand rather than with ``pandas.read_csv(comment="#")`` because pandas also cuts
    lines at a '#' inside a value and forgets the original line numbers.
    """
    fix_path = "correct the sample sheet path in the config, or create the sheet"
    if not path.exists():
        msgs.problem("the sample sheet does not exist", fix_path)
        return [], []
    if path.is_dir():
        msgs.problem("the sample sheet path is a folder, not a file", fix_path)
        return [], []
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        msgs.problem("the sample sheet is not UTF-8 text", "save it as UTF-8 tab-separated text")
        return [], []
    except OSError as exc:
        msgs.problem(f"the sample sheet cannot be read ({exc.strerror})", "fix its permissions")
        return [], []

    lines = [
        (number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    layout = "a header line 'sample<TAB>donor<TAB>timepoint<TAB>path', then one line per sample"
    if not lines:
        msgs.problem("the sample sheet is empty", f"write {layout}")
        return [], []
    header_line, header_text = lines[0]
    if "\t" not in header_text:
        for sep, name in ((",", "comma"), (";", "semicolon")):
            if sep in header_text:
                msgs.problem(
                    f"the header is {name}-separated, but the sheet must be tab-separated",
                    "save the sheet as tab-separated text (TSV), one tab between columns",
                    header_line,
                )
                return [], []
        if len(header_text.split()) > 1:
            msgs.problem(
                "the header columns are separated by spaces, but the sheet must be tab-separated",
                "put exactly one tab between columns",
                header_line,
            )
            return [], []
    header = [_unquote(h) for h in header_text.split("\t")]
    rows: list[tuple[int, list[str]]] = []
    for number, line in lines[1:]:
        if "\t" not in line and "," in line and len(header) > 1:
            msgs.problem(
                "the line has commas but no tabs, so it looks comma-separated",
                "separate the values with tabs, like the header",
                number,
            )
            continue
        values = [_unquote(v) for v in line.split("\t")]
        if len(values) > len(header):
            if any(values[len(header) :]):
                msgs.problem(
                    f"the line has {len(values)} tab-separated values but the header has {len(header)} columns",
                    "remove the extra values (or stray tabs), or add a header for the column",
                    number,
                    values[header.index("sample")] if "sample" in header else "",
                )
                continue
            values = values[: len(header)]  # trailing tabs only
        values += [""] * (len(header) - len(values))  # editors drop trailing empty cells
        rows.append((number, values))
    # A trailing tab in the header gives a nameless, empty column: harmless, drop it.
    keep = [i for i, name in enumerate(header) if name or any(values[i] for _, values in rows)]
    for i in range(len(header)):
        if i in keep and not header[i]:
            msgs.problem(
                f"column {i + 1} of the header has no name but holds values",
                "give the column a name in the header line",
                header_line,
            )
    header = [header[i] for i in keep]
    rows = [(number, [values[i] for i in keep]) for number, values in rows]
    if not rows and not msgs.problems:
        msgs.problem("the sample sheet has a header but no samples", f"write {layout}")
    return header, rows


def _check_columns(
    header: Sequence[str],
    contrast: Design,
    extra_columns: Sequence[str],
    msgs: _Messages,
) -> bool:
    """Record column-level problems; return False when required columns are missing."""
    found = ", ".join(f"'{h}'" for h in header if h)
    seen: set[str] = set()
    for name in header:
        if name and name in seen:
            msgs.problem(
                f"column '{name}' appears more than once in the header",
                "keep one column of that name",
            )
        seen.add(name)
    design_columns = [c for c in (contrast.arm, *contrast.covariates) if c]
    required = ["sample", contrast.column, "path", *design_columns]
    complete = True
    lower = {h.lower(): h for h in header}
    for name in required:
        if name in seen:
            continue
        complete = False
        hint = ""
        if name.lower() in lower:
            hint = f" (rename '{lower[name.lower()]}' to '{name}': names are case-sensitive)"
        why = ", the config design column" if name == contrast.column != "timepoint" else ""
        if name in design_columns:
            key = "design.arm" if name == contrast.arm else "design.covariates"
            why = f", named by config key `{key}`"
        msgs.problem(
            f"missing required column '{name}'{why} (columns found: {found or 'none'})",
            f"add a '{name}' column{hint}",
        )
    for name in RESERVED_COLUMNS:
        if name in seen:
            msgs.problem(
                f"column name '{name}' is reserved: the workflow adds it",
                f"rename the '{name}' column",
            )
    known = set(STANDARD_COLUMNS) | {contrast.column, contrast.pair_by, *design_columns} | set(extra_columns)
    for name in header:
        if name and name not in known:
            msgs.problem(
                f"unknown column '{name}'",
                "remove it, or list it in config key `extra_sample_columns` to carry it into the outputs",
            )
    for name in extra_columns:
        if name not in seen:
            msgs.problem(
                f"config key `extra_sample_columns` lists '{name}' but the sheet has no such "
                f"column (columns found: {found or 'none'})",
                f"add a '{name}' column, or remove '{name}' from `extra_sample_columns`",
            )
    for c in contrast.contrasts:
        if c.reference == c.treated:
            msgs.problem(
                f"contrast {c.name}: reference and treated are both '{c.reference}'",
                "set two different levels in the config `contrasts` section",
            )
    return complete


def _guess_format(path: str) -> str:
    """Format from the name alone (used when files are not checked); '' when unknown."""
    name = Path(path).name.lower()
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith(".h5"):
        return "10x_h5"
    if name.endswith(("matrix.mtx", "matrix.mtx.gz")) or Path(path).suffix == "":
        return "10x_mtx"
    return ""


def _check_row(
    row: dict[str, str],
    line: int,
    contrast: Design,
    check_files: bool,
    seen_ids: dict[str, int],
    msgs: _Messages,
    mito_pattern: str | None = None,
) -> dict[str, str]:
    """Validate one sample row; return the derived values (format, resolved_path, source)."""
    sample = row["sample"]
    source = msgs.where(line, sample)
    before = len(msgs.problems)
    fixes = {
        "sample": "give the sample a unique id (letters, digits, '.', '_', '-')",
        contrast.column: f"set it to {' or '.join(repr(v) for v in contrast.levels)}",
        "path": "give the path to the sample's count matrix (Cell Ranger folder, .h5 or .h5ad)",
    }
    for column, fix in fixes.items():
        if not row[column]:
            msgs.problem(f"empty '{column}'", fix, line, sample)

    if sample:
        if not _SAMPLE_ID_RE.match(sample) or set(sample) == {"."}:
            better = re.sub(r"[^A-Za-z0-9._-]+", "_", sample).strip("._") or "sample1"
            msgs.problem(
                f"sample id '{sample}' may only contain letters, digits, '.', '_' and '-' "
                "(it becomes part of file paths)",
                f"rename it, e.g. to '{better}'",
                line,
                sample,
            )
        if sample in seen_ids:
            msgs.problem(
                f"sample id '{sample}' is used twice (lines {seen_ids[sample]} and {line})",
                "give each sample a unique id",
                line,
                sample,
            )
        else:
            seen_ids[sample] = line

    fmt = row.get("format", "")
    if fmt and fmt not in FORMATS:
        alias = _FORMAT_ALIASES.get(fmt.lower().replace("-", "_"))
        hint = f" (did you mean '{alias}'?)" if alias else ""
        msgs.problem(
            f"unknown format '{fmt}'",
            f"use one of {', '.join(FORMATS)}{hint}, or leave it empty to auto-detect",
            line,
            sample,
        )
        fmt = ""
        format_ok = False
    else:
        format_ok = True

    path = row["path"]
    expanded = os.path.expanduser(path)
    resolved = os.path.abspath(expanded) if path else ""
    detected = ""
    if path and check_files:
        # An explicit format is trusted for unusual names; its content is peeked below.
        detected, problems = preflight.locate_count_file(
            path, fmt, report_undetected=not fmt and format_ok, source=source
        )
        msgs.problems += problems
    elif path:
        detected = _guess_format(path)
    effective = fmt or detected

    # The raw droplet matrix (Cell Ranger's raw_feature_bc_matrix), for the soup: optional.
    raw_path = row.get("raw_path", "")
    resolved_raw = os.path.abspath(os.path.expanduser(raw_path)) if raw_path else ""
    if raw_path and check_files and not os.path.exists(resolved_raw):
        msgs.problem(
            f"raw_path '{raw_path}' does not exist (resolved to {resolved_raw})",
            "give Cell Ranger's raw_feature_bc_matrix folder or .h5 of this sample, relative to the folder "
            "where snakemake runs, or leave raw_path empty",
            line,
            sample,
        )

    layer = row.get("counts_layer", "")
    if layer and effective and effective != "h5ad":
        msgs.problem(
            f"counts_layer '{layer}' is given but '{path}' is {effective}, which has no layers",
            "leave counts_layer empty (it only applies to .h5ad files)",
            line,
            sample,
        )

    if check_files and effective and len(msgs.problems) == before:
        msgs.problems += preflight.peek_count_file(path, effective, layer, source, mito_pattern)
    return {"format": effective, "resolved_path": resolved, "resolved_raw_path": resolved_raw, "source": source}


def _pairing(
    table: pd.DataFrame,
    lines: dict[str, int],
    design: Design,
    has_pair_column: bool,
    msgs: _Messages,
) -> list[str]:
    """Record pairing warnings; return the sorted donors having both levels of some contrast."""
    levels = design.levels
    names = " or ".join(f"'{v}'" for v in levels)
    for sample, tp in table[design.column].items():
        if tp not in levels:
            typo = next((a for a in levels if a.lower() == tp.lower()), None)
            fix = f"write '{typo}' (values are case-sensitive)" if typo else f"nothing, unless it should be {names}"
            where = (
                f"is neither '{levels[0]}' nor '{levels[1]}'"
                if len(levels) == 2
                else f"is in no contrast (levels {names})"
            )
            msgs.warn(
                f"{design.column} '{tp}' {where}: kept for QC and clustering, excluded from the "
                f"contrast{'s' if len(design.contrasts) > 1 else ''}",
                fix,
                lines[sample],
                str(sample),
            )
    for c in design.contrasts:
        for level in c.levels:
            if not (table[design.column] == level).any():
                msgs.warn(
                    f"no sample has {design.column} '{level}', so contrast {c.name} "
                    f"('{c.treated}' vs '{c.reference}') cannot be computed",
                    f"check the {design.column} values and the config `contrasts` section",
                )
    pair = design.pair_by
    unpaired_fix = f"add a '{pair}' column naming the patient of each sample to get a paired test"
    if not has_pair_column:
        msgs.warn(
            f"no '{pair}' column, so no pairing: the contrast{'s fall' if len(design.contrasts) > 1 else ' falls'} "
            "back to an unpaired design",
            unpaired_fix,
        )
        return []

    in_contrast = table[table[design.column].isin(levels)]
    for sample in in_contrast.index[in_contrast[pair] == ""]:
        msgs.warn(
            f"empty '{pair}': excluded from paired tests",
            f"fill in the {pair} (patient) of this sample",
            lines[sample],
            str(sample),
        )
    with_donor = in_contrast[in_contrast[pair] != ""]
    paired: set[str] = set()
    for donor, group in with_donor.groupby(pair, sort=True):
        present = set(group[design.column])
        warned: set[str] = set()
        for c in design.contrasts:
            have = present & set(c.levels)
            if len(have) == 2:
                paired.add(str(donor))
            elif have and not (have <= warned):
                (level,) = have
                other = c.treated if level == c.reference else c.reference
                warned |= have
                for sample in group.index[group[design.column] == level]:
                    which = f" of contrast {c.name}" if len(design.contrasts) > 1 else ""
                    msgs.warn(
                        f"{pair} '{donor}' has only {design.column} '{level}' (no '{other}' "
                        f"sample): excluded from paired tests{which}",
                        f"add the {pair}'s '{other}' sample, or ignore this if it is missing on purpose",
                        lines[sample],
                        str(sample),
                    )
        for tp, same in group.groupby(design.column, sort=False):
            if len(same) > 1:
                where = ", ".join(str(lines[s]) for s in same.index)
                for sample in same.index[1:]:
                    msgs.warn(
                        f"{pair} '{donor}' has {len(same)} samples at {design.column} '{tp}' "
                        f"(lines {where}): their pseudobulks are treated as separate samples",
                        f"nothing if they are replicates; otherwise correct the {pair} or {design.column}",
                        lines[sample],
                        str(sample),
                    )
    if not paired:
        first = design.contrasts[0]
        msgs.warn(
            f"no {pair} has both a '{first.reference}' and a '{first.treated}' sample"
            + (" (nor both levels of another contrast)" if len(design.contrasts) > 1 else "")
            + ", so no pairing: the "
            + ("contrasts fall" if len(design.contrasts) > 1 else "contrast falls")
            + " back to an unpaired design",
            f"check that the {pair} ids match between the {design.column}s",
        )
    return sorted(paired)


def load_sample_sheet(
    path: str | Path,
    contrast: Design | Contrast,
    extra_columns: Sequence[str] = (),
    check_files: bool = True,
    mito_pattern: str | None = None,
    mito_overrides: dict[str, str] | None = None,
) -> SheetReport:
    """Read and validate the sample sheet.

    Parameters
    ----------
    path
        The tab-separated sheet; error messages name it as given here.
    contrast
        The design (:meth:`pbmc_prepost.design.Design.from_config`): timepoint, pairing, arm and
        covariate columns, and the contrasts' levels and arms; or a single contrast.
    extra_columns
        Extra metadata columns allowed in the sheet (config ``extra_sample_columns``).
    check_files
        Also check each sample's count file: exists, readable, format matches, and a cheap
        :func:`pbmc_prepost.io.peek_counts` (raw integer counts, gene symbols, layer present).
        When False, no count file is opened and an empty format is guessed from the name.
    mito_pattern, mito_overrides
        Config ``qc.mito_pattern`` and the per-sample ones of ``qc.sample_overrides``: a count file
        whose genes it misses but matches in another case (mouse ``mt-``) is refused.

    Returns
    -------
    SheetReport
        The validated table, warnings and paired donors.

    Raises
    ------
    InputError
        Listing every problem found, one per line.
    """
    if isinstance(contrast, Contrast):
        contrast = Design.single(contrast)
    msgs = _Messages(str(path))
    header, rows = _read_table(Path(path), msgs)
    if not header:
        msgs.raise_if_any()
    complete = _check_columns(header, contrast, extra_columns, msgs)
    if not complete or not rows:
        msgs.raise_if_any()

    records: list[dict[str, str]] = []
    lines: dict[str, int] = {}
    seen_ids: dict[str, int] = {}
    for line, values in rows:
        row = dict(zip(header, values, strict=True))
        pattern = (mito_overrides or {}).get(row["sample"], mito_pattern)
        derived = _check_row(row, line, contrast, check_files, seen_ids, msgs, pattern)
        records.append({**row, **derived})
        lines.setdefault(row["sample"], line)
    msgs.raise_if_any()

    table = pd.DataFrame.from_records(records, columns=list(dict.fromkeys(header)))
    for column in (contrast.pair_by, "format", "batch", "counts_layer"):
        if column not in table.columns:
            table[column] = ""
    if "raw_path" not in table.columns:
        table["raw_path"] = ""
    for column in ("format", "resolved_path", "resolved_raw_path", "source"):
        table[column] = [r[column] for r in records]
    if (table["batch"] != "").any() and (table["batch"] == "").any():
        for sample in table.loc[table["batch"] == "", "sample"]:
            msgs.warn(
                f"empty batch while other samples have one: filled with '{DEFAULT_BATCH}'",
                "fill in the batch of every sample, or of none",
                lines[sample],
                sample,
            )
    table.loc[table["batch"] == "", "batch"] = DEFAULT_BATCH
    first_use: dict[str, str] = {}
    for sample, resolved in zip(table["sample"], table["resolved_path"], strict=True):
        if resolved in first_use:
            other = first_use[resolved]
            msgs.warn(
                f"the same path is also used by sample '{other}' (line {lines[other]}), so "
                "its cells would be counted twice",
                "correct the path if this is a copy-paste slip",
                lines[sample],
                sample,
            )
        else:
            first_use[resolved] = sample
    table = table.set_index("sample").astype(str)

    has_pair_column = contrast.pair_by in header
    paired_donors = _pairing(table, lines, contrast, has_pair_column, msgs)
    check_design_columns(table, lines, contrast, msgs)
    msgs.raise_if_any()
    table["paired"] = table[contrast.pair_by].isin(paired_donors) & table[contrast.column].isin(contrast.levels)
    return SheetReport(samples=table, warnings=msgs.warnings, paired_donors=paired_donors)
