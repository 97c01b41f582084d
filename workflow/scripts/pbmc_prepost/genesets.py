"""The gene-set library: GMT files and the per-set metadata (category, expected direction, caveat).

Nothing is downloaded: the curated sets ship in ``resources/genesets`` with their sources and
licences (its README); users add GMT files through config ``enrichment.gmt``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pbmc_prepost import InputError

log = logging.getLogger(__name__)

GENESETS_DIR = Path(__file__).resolve().parents[3] / "resources" / "genesets"
#: The shipped curated library and its metadata.
DEFAULT_GMT = GENESETS_DIR / "immunosuppression_sets.gmt"
DEFAULT_METADATA = GENESETS_DIR / "sets.tsv"
#: Metadata columns of ``sets.tsv`` (besides ``gene_set``).
META_COLUMNS = ["category", "expected_direction", "cell_types", "caveat", "sources"]
#: Allowed categories, in the order the heatmap groups them; "user" = a set without metadata.
CATEGORIES = ("positive_control", "hypothesis", "context", "artefact_control", "user")
CATEGORY_LABELS = {
    "positive_control": "positive controls",
    "hypothesis": "hypotheses",
    "context": "context",
    "artefact_control": "artefact controls",
    "user": "user sets",
}
#: Allowed expected directions; "unknown" = a set without metadata.
DIRECTIONS = ("up", "down", "mixed", "none", "unknown")
#: Lineage labels a set can be meant for (the workflow's lineage level), plus "all".
CELL_TYPES = ("CD4 T", "CD8 T", "other T", "NK", "B", "plasma", "CD14 mono", "CD16 mono", "DC", "platelets", "all")
#: Gene-set permutations of GSEA. The smallest nominal p is 1/(n+1); BH-style control of 15 sets at
#: 5 % needs the best set at p <= 0.05/15 = 0.0033 (>= 300 permutations). 1000 gives a floor of
#: Prefixes stripped from set names in figure labels.
NAME_PREFIXES = ("IMSUP_", "PD_", "CTX_", "QC_")


@dataclass
class GeneSetLibrary:
    """Gene sets with their metadata.

    Attributes
    ----------
    sets
        Set name -> member symbols, in file order (duplicates within a set removed).
    meta
        Indexed by ``gene_set`` in the order of :attr:`sets`; columns :data:`META_COLUMNS` plus
        ``description`` (GMT column 2), ``source_file`` (GMT file name) and ``n_members``.
    """

    sets: dict[str, list[str]]
    meta: pd.DataFrame

    @property
    def names(self) -> list[str]:
        """Set names in library order."""
        return list(self.sets)

    def __len__(self) -> int:
        return len(self.sets)

    def subset(self, names: Sequence[str]) -> GeneSetLibrary:
        """A library with only ``names`` (in the given order)."""
        missing = [n for n in names if n not in self.sets]
        if missing:
            raise KeyError(f"gene set(s) not in the library: {', '.join(missing)}")
        return GeneSetLibrary({n: list(self.sets[n]) for n in names}, self.meta.loc[list(names)].copy())

    def expected_direction(self, name: str) -> str:
        """Expected direction of a set ("unknown" when the set is not in the library)."""
        return str(self.meta["expected_direction"].get(name, "unknown"))


def read_gmt(path: str | Path) -> list[tuple[str, str, list[str]]]:
    """Read one GMT file: ``name<TAB>description<TAB>gene<TAB>gene...`` per line.

    Blank lines are skipped; whitespace around fields is removed; a gene repeated within a set
    is kept once.

    Parameters
    ----------
    path
        GMT file.

    Returns
    -------
    list of tuple
        (name, description, genes) per set, in file order.

    Raises
    ------
    InputError
        The file is missing, a line has no genes or no name, or a name appears twice. All
        problems of the file are listed, each with its line number and a fix.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"{path}: gene-set file not found. Fix: check the path in config key enrichment.gmt "
            f"(paths are relative to the folder snakemake runs in)."
        )
    problems: list[str] = []
    seen: dict[str, int] = {}
    out: list[tuple[str, str, list[str]]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        name = fields[0]
        genes = list(dict.fromkeys(g for g in fields[2:] if g))
        if not name:
            problems.append(f"{path} line {number}: the set has no name. Fix: put the set name in column 1.")
            continue
        if len(fields) < 3 or not genes:
            problems.append(
                f"{path} line {number} (set '{name}'): no genes. Fix: GMT lines are "
                f"name<TAB>description<TAB>gene<TAB>gene...; columns must be separated by tabs."
            )
            continue
        if name in seen:
            problems.append(
                f"{path} line {number}: set '{name}' already defined on line {seen[name]}. "
                f"Fix: give each set a unique name or merge the two lines."
            )
            continue
        seen[name] = number
        out.append((name, fields[1] if len(fields) > 1 else "", genes))
    if problems:
        raise InputError("\n".join(problems))
    return out


def _read_metadata(path: Path) -> pd.DataFrame:
    """Validated ``sets.tsv`` indexed by gene_set."""
    if not path.is_file():
        raise InputError(
            f"{path}: gene-set metadata file not found. Fix: check config key "
            f"enrichment.set_metadata, or set it to null to treat every set as a user set."
        )
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in ["gene_set", *META_COLUMNS] if c not in table.columns]
    if missing:
        raise InputError(
            f"{path}: column(s) {', '.join(missing)} missing. Fix: the header must be "
            f"gene_set<TAB>{'<TAB>'.join(META_COLUMNS)} (see resources/genesets/README.md)."
        )
    table = table.apply(lambda col: col.str.strip())
    problems = []
    for i, row in enumerate(table.itertuples(index=False), start=2):  # line 1 is the header
        where = f"{path} line {i} (set '{row.gene_set}')"
        if not row.gene_set:
            problems.append(f"{path} line {i}: empty gene_set. Fix: name the set as in the GMT file.")
        if row.category not in CATEGORIES[:-1]:
            problems.append(
                f"{where}: category '{row.category}' unknown. Fix: use one of {', '.join(CATEGORIES[:-1])}."
            )
        if row.expected_direction not in DIRECTIONS[:-1]:
            problems.append(
                f"{where}: expected_direction '{row.expected_direction}' unknown. Fix: use one of "
                f"{', '.join(DIRECTIONS[:-1])}."
            )
        bad = [c for c in split_cell_types(row.cell_types) if c not in CELL_TYPES]
        if bad or not split_cell_types(row.cell_types):
            problems.append(
                f"{where}: cell_types '{row.cell_types}' not understood. Fix: a comma-separated "
                f"list of {', '.join(CELL_TYPES)}."
            )
    duplicated = sorted(set(table.loc[table["gene_set"].duplicated(), "gene_set"]))
    if duplicated:
        problems.append(f"{path}: set(s) listed more than once: {', '.join(duplicated)}. Fix: one row per set.")
    if problems:
        raise InputError("\n".join(problems))
    return table.set_index("gene_set")[META_COLUMNS]


def split_cell_types(text: str) -> list[str]:
    return [c.strip() for c in str(text).split(",") if c.strip()]


def read_gene_sets(gmt_paths: Sequence[str | Path] | str | Path, metadata_path: str | Path | None) -> GeneSetLibrary:
    """Read GMT files and the per-set metadata into one library.

    Parameters
    ----------
    gmt_paths
        GMT files (the shipped library and any user files), read in this order.
    metadata_path
        ``sets.tsv`` (columns ``gene_set`` + :data:`META_COLUMNS`), or None. A set without a
        metadata row gets category ``user``, expected_direction ``unknown``, cell_types ``all``,
        an empty caveat and its GMT file name as sources. Metadata rows of sets in no GMT file
        are ignored (logged).

    Returns
    -------
    GeneSetLibrary
        Sets in file order.

    Raises
    ------
    InputError
        A file is missing or malformed, or one set name is defined in two files (the message
        names both files and the fix).
    """
    if isinstance(gmt_paths, (str, Path)):
        gmt_paths = [gmt_paths]
    paths = list(dict.fromkeys(Path(p) for p in gmt_paths))
    if not paths:
        raise InputError("no gene-set file given. Fix: list at least one GMT file in config key enrichment.gmt.")
    sets: dict[str, list[str]] = {}
    description: dict[str, str] = {}
    origin: dict[str, Path] = {}
    problems = []
    for path in paths:
        for name, desc, genes in read_gmt(path):
            if name in origin:
                problems.append(
                    f"gene set '{name}' is defined in both {origin[name]} and {path}. Fix: rename the "
                    f"set in one of the files (names must be unique across all GMT files) or remove "
                    f"one file from config key enrichment.gmt."
                )
                continue
            sets[name], description[name], origin[name] = genes, desc, path
    if problems:
        raise InputError("\n".join(problems))
    metadata = (
        _read_metadata(Path(metadata_path))
        if metadata_path is not None
        else pd.DataFrame(columns=META_COLUMNS, index=pd.Index([], name="gene_set"))
    )
    orphans = sorted(set(metadata.index) - set(sets))
    if orphans:
        log.warning(
            "gene-set metadata %s lists set(s) found in no GMT file (ignored): %s", metadata_path, ", ".join(orphans)
        )
    rows = []
    for name in sets:
        if name in metadata.index:
            row = metadata.loc[name].to_dict()
        else:
            row = {
                "category": "user",
                "expected_direction": "unknown",
                "cell_types": "all",
                "caveat": "",
                "sources": origin[name].name,
            }
        row.update(
            gene_set=name, description=description[name], source_file=origin[name].name, n_members=len(sets[name])
        )
        rows.append(row)
    meta = pd.DataFrame(rows, columns=["gene_set", *META_COLUMNS, "description", "source_file", "n_members"])
    meta = meta.set_index("gene_set")
    log.info("read %d gene sets from %s", len(sets), ", ".join(str(p) for p in paths))
    return GeneSetLibrary(sets=sets, meta=meta)


def short_set_name(name: str) -> str:
    """Figure label of a set: known prefix stripped, lowercase, spaces: 'PD_IL7_STAT5...' -> 'il7 stat5 ...'."""
    for prefix in NAME_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return re.sub(r"_+", " ", name).strip().lower()
