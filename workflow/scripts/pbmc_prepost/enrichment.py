"""Gene-set enrichment and donor-level module scores for the pre/post contrast.

Three views of the curated gene sets (``resources/genesets``), all per population:

- :func:`gsea_prerank`: GSEA (Subramanian et al. 2005, gseapy) on the signed pseudobulk DESeq2
  Wald statistic, with set-size bounds set explicitly and a fixed seed;
- :func:`ora`: over-representation of the significant genes, UP and DOWN separately, with the
  genes tested in that population as the universe;
- :func:`module_scores` + :func:`paired_score_test`: a score per cell, averaged per sample x
  population, then a paired t-test on the donor means. Cells are never replicates.

GSEA and ORA are *competitive, gene-level* tests: they ask whether a set's genes rank higher than
other genes and treat genes as independent. A nuisance that moves a whole set in every sample
(dissociation stress, interferon tone, the share of cycling cells) makes them over-confident
(Wu & Smyth 2012, Nucleic Acids Res 40:e133): with five donors, a set whose genes all shift in
the same direction by chance gets a tiny GSEA FDR. The paired module-score test uses the donors
as the unit of replication and is the calibrated set-level test; read GSEA and ORA as a
description of *which genes* move (NES, leading edge), and the paired test for *whether the set
changes across donors*.

Nothing here downloads gene sets: the library is read from GMT files on disk.
"""

from __future__ import annotations

import logging
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats
from statsmodels.stats.multitest import multipletests

from pbmc_prepost import InputError, plots
from pbmc_prepost.samplesheet import Contrast

log = logging.getLogger(__name__)

__all__ = [
    "CATEGORIES",
    "CELL_TYPES",
    "DEFAULT_GMT",
    "DEFAULT_METADATA",
    "DEFAULT_PERMUTATIONS",
    "DIRECTIONS",
    "GSEA_COLUMNS",
    "META_COLUMNS",
    "ORA_COLUMNS",
    "GeneSetLibrary",
    "donor_score_lines",
    "expression_bins",
    "gsea_all_groups",
    "gsea_prerank",
    "headline_heatmap",
    "module_scores",
    "ora",
    "ora_all_groups",
    "paired_score_test",
    "read_gene_sets",
    "read_gmt",
    "score_genes",
    "short_set_name",
]

GENESETS_DIR = Path(__file__).resolve().parents[3] / "resources" / "genesets"
#: The shipped curated library and its metadata.
DEFAULT_GMT = GENESETS_DIR / "immunosuppression_sets.gmt"
DEFAULT_METADATA = GENESETS_DIR / "sets.tsv"
#: Metadata columns of ``sets.tsv`` (besides ``gene_set``).
META_COLUMNS = ["category", "expected_direction", "cell_types", "caveat", "sources"]
#: Allowed categories, in the order the heatmap groups them; "user" = a set without metadata.
CATEGORIES = ("positive_control", "hypothesis", "context", "artefact_control", "user")
CATEGORY_LABELS = {"positive_control": "positive controls", "hypothesis": "hypotheses", "context": "context",
                   "artefact_control": "artefact controls", "user": "user sets"}
#: Allowed expected directions; "unknown" = a set without metadata.
DIRECTIONS = ("up", "down", "mixed", "none", "unknown")
#: Lineage labels a set can be meant for (the workflow's lineage level), plus "all".
CELL_TYPES = ("CD4 T", "CD8 T", "other T", "NK", "B", "plasma", "CD14 mono", "CD16 mono", "DC", "platelets",
              "all")
#: Gene-set permutations of GSEA. The smallest nominal p is 1/(n+1); BH-style control of 15 sets at
#: 5 % needs the best set at p <= 0.05/15 = 0.0033 (>= 300 permutations). 1000 gives a floor of
#: 0.001 and costs < 1 s per population.
DEFAULT_PERMUTATIONS = 1000
#: Prefixes stripped from set names in figure labels.
NAME_PREFIXES = ("IMSUP_", "PD_", "CTX_", "QC_")

DE_COLUMNS = ("gene", "log2FoldChange", "stat", "padj")
GSEA_COLUMNS = ["gene_set", "n_genes", "n_members", "NES", "pvalue", "fdr", "leading_edge", "expected_direction",
                "status"]
ORA_COLUMNS = ["gene_set", "direction", "n_set_in_universe", "n_significant", "overlap", "genes", "pvalue", "fdr",
               "expected_direction", "status"]
TESTED = "tested"


# ---------------------------------------------------------------------------------------------
# reading gene sets


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
        raise InputError(f"{path}: gene-set file not found. Fix: check the path in config key enrichment.gmt "
                         f"(paths are relative to the folder snakemake runs in).")
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
            problems.append(f"{path} line {number} (set '{name}'): no genes. Fix: GMT lines are "
                            f"name<TAB>description<TAB>gene<TAB>gene...; columns must be separated by tabs.")
            continue
        if name in seen:
            problems.append(f"{path} line {number}: set '{name}' already defined on line {seen[name]}. "
                            f"Fix: give each set a unique name or merge the two lines.")
            continue
        seen[name] = number
        out.append((name, fields[1] if len(fields) > 1 else "", genes))
    if problems:
        raise InputError("\n".join(problems))
    return out


def _read_metadata(path: Path) -> pd.DataFrame:
    """Validated ``sets.tsv`` indexed by gene_set."""
    if not path.is_file():
        raise InputError(f"{path}: gene-set metadata file not found. Fix: check config key "
                         f"enrichment.set_metadata, or set it to null to treat every set as a user set.")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in ["gene_set", *META_COLUMNS] if c not in table.columns]
    if missing:
        raise InputError(f"{path}: column(s) {', '.join(missing)} missing. Fix: the header must be "
                         f"gene_set<TAB>{'<TAB>'.join(META_COLUMNS)} (see resources/genesets/README.md).")
    table = table.apply(lambda col: col.str.strip())
    problems = []
    for i, row in enumerate(table.itertuples(index=False), start=2):  # line 1 is the header
        where = f"{path} line {i} (set '{row.gene_set}')"
        if not row.gene_set:
            problems.append(f"{path} line {i}: empty gene_set. Fix: name the set as in the GMT file.")
        if row.category not in CATEGORIES[:-1]:
            problems.append(f"{where}: category '{row.category}' unknown. Fix: use one of "
                            f"{', '.join(CATEGORIES[:-1])}.")
        if row.expected_direction not in DIRECTIONS[:-1]:
            problems.append(f"{where}: expected_direction '{row.expected_direction}' unknown. Fix: use one of "
                            f"{', '.join(DIRECTIONS[:-1])}.")
        bad = [c for c in _split_cell_types(row.cell_types) if c not in CELL_TYPES]
        if bad or not _split_cell_types(row.cell_types):
            problems.append(f"{where}: cell_types '{row.cell_types}' not understood. Fix: a comma-separated "
                            f"list of {', '.join(CELL_TYPES)}.")
    duplicated = sorted(set(table.loc[table["gene_set"].duplicated(), "gene_set"]))
    if duplicated:
        problems.append(f"{path}: set(s) listed more than once: {', '.join(duplicated)}. Fix: one row per set.")
    if problems:
        raise InputError("\n".join(problems))
    return table.set_index("gene_set")[META_COLUMNS]


def _split_cell_types(text: str) -> list[str]:
    return [c.strip() for c in str(text).split(",") if c.strip()]


def read_gene_sets(gmt_paths: Sequence[str | Path] | str | Path,
                   metadata_path: str | Path | None) -> GeneSetLibrary:
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
                problems.append(f"gene set '{name}' is defined in both {origin[name]} and {path}. Fix: rename the "
                                f"set in one of the files (names must be unique across all GMT files) or remove "
                                f"one file from config key enrichment.gmt.")
                continue
            sets[name], description[name], origin[name] = genes, desc, path
    if problems:
        raise InputError("\n".join(problems))
    metadata = _read_metadata(Path(metadata_path)) if metadata_path is not None else \
        pd.DataFrame(columns=META_COLUMNS, index=pd.Index([], name="gene_set"))
    orphans = sorted(set(metadata.index) - set(sets))
    if orphans:
        log.warning("gene-set metadata %s lists set(s) found in no GMT file (ignored): %s", metadata_path,
                    ", ".join(orphans))
    rows = []
    for name in sets:
        if name in metadata.index:
            row = metadata.loc[name].to_dict()
        else:
            row = {"category": "user", "expected_direction": "unknown", "cell_types": "all", "caveat": "",
                   "sources": origin[name].name}
        row.update(gene_set=name, description=description[name], source_file=origin[name].name,
                   n_members=len(sets[name]))
        rows.append(row)
    meta = pd.DataFrame(rows, columns=["gene_set", *META_COLUMNS, "description", "source_file", "n_members"])
    meta = meta.set_index("gene_set")
    log.info("read %d gene sets from %s", len(sets), ", ".join(str(p) for p in paths))
    return GeneSetLibrary(sets=sets, meta=meta)


# ---------------------------------------------------------------------------------------------
# GSEA and ORA on pseudobulk DE tables


def _check_de_table(de_table: pd.DataFrame, needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in de_table.columns]
    if missing:
        raise ValueError(f"DE table lacks column(s) {', '.join(missing)}; pass a pseudobulk_de results table "
                         f"(columns gene, baseMean, log2FoldChange, lfcSE, stat, pvalue, padj)")


def _ranking(de_table: pd.DataFrame) -> pd.Series:
    """Wald statistic per gene, NaN dropped, one value per gene, sorted high -> low (ties by name)."""
    _check_de_table(de_table, ("gene", "stat"))
    table = pd.DataFrame({"gene": de_table["gene"].astype(str).to_numpy(),
                          "stat": pd.to_numeric(de_table["stat"], errors="coerce").to_numpy(dtype=float)})
    n_nan = int(table["stat"].isna().sum())
    table = table.dropna(subset=["stat"])
    table = table[np.isfinite(table["stat"])]
    duplicated = table["gene"].duplicated()
    if duplicated.any():
        log.warning("DE table lists %d gene(s) twice; the first row of each is ranked", int(duplicated.sum()))
        table = table[~duplicated]
    if n_nan:
        log.info("%d gene(s) without a Wald statistic (NaN) left out of the ranking", n_nan)
    # Stable sort with the gene name as tie-breaker: the same input always gives the same ranking.
    table = table.sort_values(["stat", "gene"], ascending=[False, True], kind="mergesort")
    return pd.Series(table["stat"].to_numpy(), index=pd.Index(table["gene"].to_numpy(), name="gene"),
                     name="stat")


def _size_status(n: int, min_size: int, max_size: int | None = None) -> str:
    if n < min_size:
        return f"too small: {n} genes < min_size {min_size}"
    if max_size is not None and n > max_size:
        return f"too large: {n} genes > max_size {max_size}"
    return TESTED


def gsea_prerank(de_table: pd.DataFrame, library: GeneSetLibrary, min_size: int, max_size: int,
                 permutations: int, seed: int, threads: int = 1, label: str = "") -> pd.DataFrame:
    """Preranked GSEA (gseapy) of every set on one population's DESeq2 Wald statistic.

    Genes are ranked by the signed Wald ``stat`` (not p-values, which lose the direction);
    genes with NaN stat are dropped. gseapy runs with gene-set permutations, ``outdir=None``
    and no plots. ``min_size`` is passed explicitly and logged: gseapy's default of 15 would
    silently drop small curated sets (science brief 5.10). Sets outside [min_size, max_size]
    are not dropped but flagged with NaN statistics.

    Gene-set permutation treats genes as independent, so sets whose genes co-vary across samples
    (stress, interferon, cycling) get over-confident p-values (module docstring); read the
    donor-level :func:`paired_score_test` for those.

    Parameters
    ----------
    de_table
        A pseudobulk_de results table (``gene``, ``stat`` used).
    library
        Gene sets (:func:`read_gene_sets`).
    min_size, max_size
        Bounds on the members found among the ranked genes.
    permutations
        Gene-set permutations (:data:`DEFAULT_PERMUTATIONS` = 1000; see there why).
    seed
        Seed of gseapy's permutations: same input + seed -> identical table.
    threads
        gseapy threads (results do not depend on it).
    label
        Population name for log messages.

    Returns
    -------
    pandas.DataFrame
        One row per set in library order, columns :data:`GSEA_COLUMNS`: ``n_genes`` (members
        among the ranked genes), ``n_members`` (members in the set), ``NES``, ``pvalue``
        (gseapy's nominal p, floored at 1/(permutations+1) because a permutation p-value is
        never 0), ``fdr`` (gseapy's FDR q-value, computed over the tested sets), ``leading_edge``
        (';'-joined), ``expected_direction``, ``status`` ("tested" or why not).
    """
    import gseapy

    ranking = _ranking(de_table)
    ranked = set(ranking.index)
    members = {name: [g for g in genes if g in ranked] for name, genes in library.sets.items()}
    status = {name: _size_status(len(m), min_size, max_size) for name, m in members.items()}
    where = f" ({label})" if label else ""
    log.info("GSEA prerank%s: %d ranked genes, min_size=%d (set explicitly; gseapy's default 15 would drop small "
             "curated sets), max_size=%d, permutations=%d, seed=%d", where, len(ranking), min_size, max_size,
             permutations, seed)
    for name, found in members.items():
        log.info("GSEA%s: %s: %d of %d members ranked; %s", where, name, len(found), len(library.sets[name]),
                 status[name])
    testable = {name: found for name, found in members.items() if status[name] == TESTED}
    results = pd.DataFrame(columns=["NES", "pvalue", "fdr", "leading_edge"], index=pd.Index([], dtype=str))
    if testable and len(ranking) <= max(len(v) for v in testable.values()):
        # GSEA needs genes outside a set to compare with; a ranking of set members only has none.
        for name in testable:
            status[name] = "not tested: every ranked gene is in the set"
    elif testable:
        run = gseapy.prerank(rnk=ranking, gene_sets=testable, min_size=min_size, max_size=max_size,
                             permutation_num=permutations, seed=seed, threads=threads, outdir=None, no_plot=True,
                             verbose=False, ascending=None)  # already sorted, with a deterministic tie order
        res = run.res2d.set_index("Term")
        floor = 1.0 / (permutations + 1)
        results = pd.DataFrame({
            "NES": pd.to_numeric(res["NES"], errors="coerce"),
            "pvalue": pd.to_numeric(res["NOM p-val"], errors="coerce").clip(lower=floor, upper=1.0),
            "fdr": pd.to_numeric(res["FDR q-val"], errors="coerce").clip(lower=0.0, upper=1.0),
            "leading_edge": res["Lead_genes"].astype(str),
        }, index=res.index.astype(str))
        lost = sorted(set(testable) - set(results.index))
        for name in lost:  # gseapy filters on its own; say so rather than lose a row silently
            status[name] = "not returned by gseapy"
    rows = []
    for name in library.sets:
        tested = status[name] == TESTED and name in results.index
        rows.append({
            "gene_set": name,
            "n_genes": len(members[name]),
            "n_members": len(library.sets[name]),
            "NES": float(results.at[name, "NES"]) if tested else math.nan,
            "pvalue": float(results.at[name, "pvalue"]) if tested else math.nan,
            "fdr": float(results.at[name, "fdr"]) if tested else math.nan,
            "leading_edge": str(results.at[name, "leading_edge"]) if tested else "",
            "expected_direction": library.expected_direction(name),
            "status": status[name],
        })
    return pd.DataFrame(rows, columns=GSEA_COLUMNS)


def gsea_all_groups(tables: Mapping[str, pd.DataFrame], library: GeneSetLibrary, **kwargs) -> pd.DataFrame:
    """:func:`gsea_prerank` of every population; a ``cell_type`` column first.

    Parameters
    ----------
    tables
        Population label -> DE table (as returned by ``pseudobulk_de.de_all_groups``).
    library
        Gene sets.
    **kwargs
        Passed to :func:`gsea_prerank` (min_size, max_size, permutations, seed, threads).

    Returns
    -------
    pandas.DataFrame
        The per-population tables stacked, populations in sorted order.
    """
    frames = [gsea_prerank(tables[label], library, label=label, **kwargs).assign(cell_type=label)
              for label in sorted(tables)]
    columns = ["cell_type", *GSEA_COLUMNS]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def ora(de_table: pd.DataFrame, library: GeneSetLibrary, alpha: float, min_size: int) -> pd.DataFrame:
    """Over-representation of significant genes in each set, UP and DOWN separately.

    Significant UP (DOWN) genes: ``padj < alpha`` and ``log2FoldChange > 0`` (``< 0``); NaN padj
    (independent filtering) is not significant. The universe is every gene of ``de_table`` (the
    genes tested in this population), not the genome, and each set is restricted to it. One-sided
    hypergeometric test (``scipy.stats.hypergeom.sf``); Benjamini-Hochberg within a direction
    across the tested sets. Testing the directions separately keeps an MHC-II loss from being
    read as "MHC-II enriched" (science brief 5.11).

    Parameters
    ----------
    de_table
        A pseudobulk_de results table (``gene``, ``log2FoldChange``, ``padj`` used).
    library
        Gene sets.
    alpha
        padj cut-off defining significant genes.
    min_size
        Sets with fewer members in the universe are flagged (NaN p-values), not dropped.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`ORA_COLUMNS`, one row per set and direction (all "up" rows first, sets in
        library order): ``n_set_in_universe``, ``n_significant`` (significant genes of that
        direction in the universe), ``overlap``, ``genes`` (';'-joined overlap, ranked by padj),
        ``pvalue``, ``fdr``, ``expected_direction``, ``status``.
    """
    _check_de_table(de_table, DE_COLUMNS)
    table = de_table.drop_duplicates("gene")
    genes = table["gene"].astype(str).to_numpy()
    padj = pd.to_numeric(table["padj"], errors="coerce").to_numpy(dtype=float)
    lfc = pd.to_numeric(table["log2FoldChange"], errors="coerce").to_numpy(dtype=float)
    universe = set(genes)
    n_universe = len(universe)
    order = np.argsort(np.where(np.isnan(padj), np.inf, padj), kind="mergesort")
    significant = {
        "up": [genes[i] for i in order if padj[i] < alpha and lfc[i] > 0],
        "down": [genes[i] for i in order if padj[i] < alpha and lfc[i] < 0],
    }
    frames = []
    for direction, hits in significant.items():
        hit_set = set(hits)
        rows = []
        for name, members in library.sets.items():
            in_universe = [g for g in members if g in universe]
            overlap = [g for g in hits if g in set(in_universe)]
            status = _size_status(len(in_universe), min_size)
            pvalue = math.nan
            if status == TESTED:
                # P(X >= k), X ~ hypergeom(M=universe, n=set in universe, N=significant).
                pvalue = float(stats.hypergeom.sf(len(overlap) - 1, n_universe, len(in_universe), len(hit_set)))
            rows.append({"gene_set": name, "direction": direction, "n_set_in_universe": len(in_universe),
                         "n_significant": len(hit_set), "overlap": len(overlap), "genes": ";".join(overlap),
                         "pvalue": pvalue, "fdr": math.nan, "expected_direction": library.expected_direction(name),
                         "status": status})
        frame = pd.DataFrame(rows, columns=ORA_COLUMNS)
        tested = frame["pvalue"].notna().to_numpy()
        if tested.any():
            frame.loc[tested, "fdr"] = multipletests(frame.loc[tested, "pvalue"], method="fdr_bh")[1]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def ora_all_groups(tables: Mapping[str, pd.DataFrame], library: GeneSetLibrary, alpha: float,
                   min_size: int) -> pd.DataFrame:
    """:func:`ora` of every population (sorted), with a ``cell_type`` column first."""
    frames = [ora(tables[label], library, alpha, min_size).assign(cell_type=label) for label in sorted(tables)]
    columns = ["cell_type", *ORA_COLUMNS]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


# ---------------------------------------------------------------------------------------------
# module scores per donor


def _looks_like_counts(X) -> bool:
    """True when X holds only non-negative integers with large values (raw counts, not log data)."""
    values = X.data if sp.issparse(X) else np.asarray(X).ravel()
    values = values[: 1_000_000]  # a sample suffices to tell counts from log values
    if values.size == 0:
        return False
    return bool(np.nanmax(values) > 30 and np.all(np.mod(values, 1) == 0))


def _mean_over(X, axis: int, columns: np.ndarray | None = None) -> np.ndarray:
    """Mean over ``axis`` of X (or of its ``columns``), as scanpy's ``score_genes`` computes it."""
    part = X if columns is None else X[:, columns]
    if sp.issparse(part):
        return np.asarray(part.sum(axis=axis, dtype="float64")).ravel() / part.shape[axis]
    # scanpy: np.nanmean, in the data's dtype for the gene means and float64 for the cell means.
    return np.nanmean(part, axis=axis, dtype=None if axis == 0 else "float64")


def expression_bins(X, var_names: pd.Index, n_bins: int = 25) -> pd.Series:
    """Expression bin of every gene, as scanpy's ``score_genes`` cuts the gene pool.

    Genes are ranked by mean expression over all cells and cut into ``n_bins`` - 1 equal-sized
    bins (scanpy >= 1.10: ``rank(method="min") // round(n_genes / (n_bins - 1))``).

    Parameters
    ----------
    X
        Cells x genes, log-normalized (sparse or dense).
    var_names
        Gene names of the columns of ``X``.
    n_bins
        scanpy's ``n_bins``.

    Returns
    -------
    pandas.Series
        Bin per gene (index: gene names; genes whose mean is not finite left out).
    """
    means = pd.Series(_mean_over(X, axis=0), index=pd.Index(var_names, dtype="string"))
    means = means[np.isfinite(means)]
    n_items = int(np.round(len(means) / (n_bins - 1)))
    return means.rank(method="min") // n_items


def score_genes(X, var_names: pd.Index, bins: pd.Series, genes: Sequence[str], ctrl_size: int = 50,
                random_state: int = 0) -> np.ndarray:
    """Per-cell score of one gene set: scanpy's ``tl.score_genes`` with precomputed expression bins.

    The mean of the set's genes minus the mean of control genes drawn, ``ctrl_size`` per bin, from
    the expression bins the set's genes fall in (Satija et al. 2015; Tirosh et al. 2016). The
    draw repeats scanpy's exactly (``numpy`` RandomState seeded with ``random_state``, pandas
    ``sample``), so the scores equal ``sc.tl.score_genes(..., random_state=random_state)``
    (tested); unlike it, this neither copies X nor recomputes the gene means for every set.

    Parameters
    ----------
    X
        Cells x genes, log-normalized.
    var_names
        Gene names of the columns of ``X``.
    bins
        :func:`expression_bins` of ``X``.
    genes
        The set's genes (absent ones are ignored).
    ctrl_size
        Control genes per bin (scanpy's default 50).
    random_state
        Seed of the control-gene draw.

    Returns
    -------
    numpy.ndarray
        float64 score per cell.
    """
    var_names = pd.Index(var_names)
    gene_list = pd.Index(list(genes)).intersection(var_names)
    if len(gene_list) == 0:
        raise ValueError("score_genes: none of the genes are in the data")
    draw = np.random.RandomState(random_state)
    control = pd.Index([], dtype="string")
    for cut in np.unique(bins.loc[gene_list]):
        candidates = bins.index[bins.to_numpy() == cut]
        if ctrl_size < len(candidates):
            candidates = candidates.to_series().sample(ctrl_size, random_state=draw).index
        control = control.union(candidates.difference(gene_list))
    if len(control) == 0:
        raise RuntimeError(f"score_genes: no control genes in the expression bins of {list(gene_list)[:5]}")
    return (_mean_over(X, 1, var_names.get_indexer(gene_list))
            - _mean_over(X, 1, var_names.get_indexer(control)))


def module_scores(adata: ad.AnnData, library: GeneSetLibrary, group_col: str, contrast: Contrast,
                  sample_col: str = "sample", min_genes: int = 3, layer: str | None = None,
                  seed: int = 0) -> pd.DataFrame:
    """Score every set per cell (scanpy's ``score_genes`` method), then average per sample x population.

    Each set is scored on the log-normalized data with scanpy's control-gene method (Satija et
    al. 2015; Tirosh et al. 2016: mean of the set minus mean of expression-matched random genes,
    default ``ctrl_size=50``, fixed ``random_state``). Members absent from the data are dropped;
    a set with fewer than ``min_genes`` members present is skipped, logged, and listed in
    ``result.attrs["skipped_sets"]``. Per-cell scores are only a step: the output has one mean
    per sample x population x set, because cells are not independent replicates (Squair 2021).

    Parameters
    ----------
    adata
        Cells; log-normalized expression in ``X`` (or ``layer``), symbols as ``var_names``; obs
        with ``sample_col``, ``group_col``, the contrast column and (optional) pairing column.
    library
        Gene sets.
    group_col
        obs column with the population label (``lineage`` or ``cell_type``).
    contrast
        Names the contrast and pairing columns.
    sample_col
        obs column naming the sample.
    min_genes
        Fewest members present for a set to be scored.
    layer
        Layer with log-normalized data (None: ``X``).
    seed
        ``random_state`` of the control-gene draw.

    Returns
    -------
    pandas.DataFrame
        Columns ``sample``, ``<contrast.pair_by>`` ('' without pairing column),
        ``<contrast.column>``, ``group``, ``gene_set``, ``n_cells``, ``mean_score``; one row per
        sample x group x scored set, sorted by group, set (library order), sample.
        ``attrs["skipped_sets"]``: set -> reason; ``attrs["expected_direction"]``: set -> direction.

    Raises
    ------
    ValueError
        A column is missing, sample-level columns vary within a sample, or the data look like
        raw counts.
    """
    missing = [c for c in (sample_col, group_col, contrast.column) if c not in adata.obs.columns]
    if missing:
        raise ValueError(f"module_scores: obs column(s) {missing} missing; obs has {list(adata.obs.columns)}")
    X = adata.layers[layer] if layer is not None else adata.X
    if _looks_like_counts(X):
        raise ValueError("module_scores: the expression values look like raw counts; score log-normalized data "
                         "(X after normalize_total + log1p, or pass layer=)")
    obs = pd.DataFrame({
        "sample": adata.obs[sample_col].astype(str).to_numpy(),
        "pair": (adata.obs[contrast.pair_by].astype(str).to_numpy() if contrast.pair_by in adata.obs.columns
                 else np.full(adata.n_obs, "", dtype=object)),
        "level": adata.obs[contrast.column].astype(str).to_numpy(),
        "group": adata.obs[group_col].astype(object).to_numpy(),
    })
    for column in ("pair", "level"):
        varying = obs.groupby("sample")[column].nunique()
        if (varying > 1).any():
            bad = sorted(varying.index[varying > 1])[:5]
            raise ValueError(f"module_scores: {column} varies within sample(s) {bad}")
    has_group = pd.notna(obs["group"]).to_numpy()
    if not has_group.all():
        log.warning("module_scores: %d cell(s) without a '%s' label left out", int((~has_group).sum()), group_col)
    obs["group"] = obs["group"].astype(str)

    var_names = pd.Index(adata.var_names.astype(str))
    # The expression bins depend only on the data: computed once for all sets (scanpy recomputes
    # them, with two copies of X, for every set).
    bins = expression_bins(X, var_names)
    skipped: dict[str, str] = {}
    per_cell = {}
    for name, genes in library.sets.items():
        present = [g for g in genes if g in var_names]
        if len(present) < min_genes:
            skipped[name] = f"{len(present)} of {len(genes)} genes in the data < min_genes {min_genes}"
            log.warning("module_scores: %s skipped: %s", name, skipped[name])
            continue
        if len(present) < len(genes):
            log.info("module_scores: %s: %d of %d genes in the data", name, len(present), len(genes))
        per_cell[name] = score_genes(X, var_names, bins, present, random_state=seed)

    columns = ["sample", contrast.pair_by, contrast.column, "group", "gene_set", "n_cells", "mean_score"]
    cells = obs.loc[has_group].reset_index(drop=True)
    frames = []
    keys = ["group", "sample", "pair", "level"]
    for name, values in per_cell.items():
        part = cells.assign(score=values[has_group])
        agg = part.groupby(keys, sort=True).agg(n_cells=("score", "size"), mean_score=("score", "mean")).reset_index()
        frames.append(agg.assign(gene_set=name))
    if frames:
        result = pd.concat(frames, ignore_index=True)
        rank = {name: i for i, name in enumerate(library.sets)}
        result = result.assign(_rank=result["gene_set"].map(rank)) \
            .sort_values(["group", "_rank", "sample"], kind="mergesort").reset_index(drop=True)
        result = result.rename(columns={"pair": contrast.pair_by, "level": contrast.column})[columns]
        result["n_cells"] = result["n_cells"].astype(np.int64)
    else:
        result = pd.DataFrame(columns=columns)
    result.attrs["skipped_sets"] = skipped
    result.attrs["expected_direction"] = {name: library.expected_direction(name) for name in library.sets}
    return result


def paired_score_test(scores: pd.DataFrame, contrast: Contrast, min_pairs: int = 3,
                      meta: pd.DataFrame | None = None) -> pd.DataFrame:
    """Paired t-test of donor-level mean module scores, treated vs reference, per group x set.

    A donor's score at a level is the mean of its samples' ``mean_score`` (one sample per level
    in the usual design). Donors without both levels are excluded and named in ``note``.
    Benjamini-Hochberg across all tested group x set rows.

    Parameters
    ----------
    scores
        Output of :func:`module_scores` (columns ``sample``, ``<pair_by>``, ``<column>``,
        ``group``, ``gene_set``, ``mean_score``).
    contrast
        Reference and treated levels and the pairing column.
    min_pairs
        Fewest complete donor pairs for a p-value; below it p is NaN and the note says why.
    meta
        Library metadata (``GeneSetLibrary.meta``) for ``expected_direction``; default:
        ``scores.attrs["expected_direction"]`` when present, else "unknown".

    Returns
    -------
    pandas.DataFrame
        Columns ``cell_type`` (= group), ``gene_set``, ``n_pairs``, ``mean_<reference>``,
        ``mean_<treated>`` (means over the paired donors), ``delta`` (mean within-donor
        change, treated minus reference), ``pvalue``, ``padj``, ``expected_direction``,
        ``note``. Rows in the order of ``scores`` (group, then set).
    """
    ref, trt, pair_by = contrast.reference, contrast.treated, contrast.pair_by
    mean_ref, mean_trt = f"mean_{ref}", f"mean_{trt}"
    columns = ["cell_type", "gene_set", "n_pairs", mean_ref, mean_trt, "delta", "pvalue", "padj",
               "expected_direction", "note"]
    needed = ["group", "gene_set", contrast.column, "mean_score"]
    missing = [c for c in needed if c not in scores.columns]
    if missing:
        raise ValueError(f"paired_score_test: scores lack column(s) {missing}; pass the output of module_scores")
    if meta is not None:
        directions = meta["expected_direction"].astype(str).to_dict()
    else:
        directions = dict(scores.attrs.get("expected_direction", {}))
    table = scores.copy()
    table["_pair"] = table[pair_by].astype(str) if pair_by in table.columns else ""
    table["_level"] = table[contrast.column].astype(str)
    table = table[table["_level"].isin([ref, trt])]
    rows = []
    for (group, name), part in table.groupby(["group", "gene_set"], sort=False):
        donor_means = part.groupby(["_pair", "_level"])["mean_score"].mean().unstack("_level")
        donor_means = donor_means.reindex(columns=[ref, trt])
        donor_means = donor_means.drop(index="", errors="ignore")  # samples without a donor cannot pair
        complete = donor_means.dropna()
        notes = []
        incomplete = donor_means.index[donor_means.isna().any(axis=1)]
        if len(incomplete):
            named = [f"{d} (no {ref if pd.isna(donor_means.at[d, ref]) else trt})" for d in incomplete]
            notes.append(f"{pair_by}(s) without both {ref} and {trt} excluded: {', '.join(named)}")
        n_pairs = len(complete)
        diff = (complete[trt] - complete[ref]).to_numpy(dtype=float)
        pvalue = math.nan
        if n_pairs < min_pairs:
            notes.append(f"{n_pairs} complete {pair_by} pair(s) < min_pairs {min_pairs}: not tested")
        elif np.allclose(diff, diff[0], rtol=0, atol=1e-12 * max(1.0, float(np.abs(diff).max()))):
            notes.append("every donor changes by the same amount (zero variance): t-test undefined")
        else:
            pvalue = float(stats.ttest_rel(complete[trt], complete[ref]).pvalue)
        rows.append({
            "cell_type": group, "gene_set": name, "n_pairs": n_pairs,
            mean_ref: float(complete[ref].mean()) if n_pairs else math.nan,
            mean_trt: float(complete[trt].mean()) if n_pairs else math.nan,
            "delta": float(diff.mean()) if n_pairs else math.nan,
            "pvalue": pvalue, "padj": math.nan,
            "expected_direction": directions.get(name, "unknown"),
            "note": "; ".join(notes),
        })
    result = pd.DataFrame(rows, columns=columns)
    result["n_pairs"] = result["n_pairs"].astype(np.int64)
    tested = result["pvalue"].notna().to_numpy()
    if tested.any():
        result.loc[tested, "padj"] = multipletests(result.loc[tested, "pvalue"], method="fdr_bh")[1]
    return result


# ---------------------------------------------------------------------------------------------
# figures


def short_set_name(name: str) -> str:
    """Figure label of a set: known prefix stripped, lowercase, spaces: 'PD_IL7_STAT5...' -> 'il7 stat5 ...'."""
    for prefix in NAME_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return re.sub(r"_+", " ", name).strip().lower()


def _row_order(labels: Sequence[str]) -> list[str]:
    """Populations in the usual PBMC order, unknown labels after them alphabetically."""
    known = [c for c in CELL_TYPES if c != "all"]
    labels = list(dict.fromkeys(map(str, labels)))
    return [c for c in known if c in labels] + sorted(c for c in labels if c not in known)


def _column_groups(set_names: Sequence[str], meta: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(category, sets) in :data:`CATEGORIES` order; sets without metadata count as user sets."""
    category = {name: (str(meta.at[name, "category"]) if name in meta.index else "user") for name in set_names}
    order = [n for n in meta.index if n in set(set_names)] + [n for n in set_names if n not in meta.index]
    order = list(dict.fromkeys(order))
    groups = []
    for cat in CATEGORIES:
        members = [n for n in order if category[n] == cat]
        if members:
            groups.append((cat, members))
    others = [n for n in order if category[n] not in CATEGORIES]
    if others:
        groups.append(("user", others))
    return groups


def headline_heatmap(gsea: pd.DataFrame, meta: pd.DataFrame, paths: Sequence[str | Path], vmax: float = 3.0,
                     title: str = "Gene-set enrichment (GSEA NES, treated vs reference)",
                     footnote: str = ("* FDR < 0.05, ** FDR < 0.01 (gseapy, gene-set permutation: genes treated as "
                                      "independent; see the donor-level score test). Grey hatched: not tested. "
                                      "Framed: population the set is meant for.")) -> None:
    """Cell types x gene sets heatmap of GSEA NES with FDR marks.

    Colour = NES (blue-white-red, centred at 0, fixed limits +-``vmax`` so figures compare across
    runs); '*' fdr < 0.05, '**' fdr < 0.01; grey hatched = not tested (too few genes, or the
    population had no DE table); a black frame marks the populations a set is meant for
    (``cell_types`` in the metadata, not drawn for "all"). Columns are grouped by category,
    positive controls first and set apart from hypotheses, context and artefact controls.

    Parameters
    ----------
    gsea
        Stacked :func:`gsea_prerank` tables with a ``cell_type`` column (:func:`gsea_all_groups`).
    meta
        ``GeneSetLibrary.meta`` (category, cell_types).
    paths
        Output files (PNG/PDF).
    vmax
        Colour limit; |NES| beyond it is drawn at the limit.
    title
        Figure title.
    """
    plt = plots.plt
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    rows = _row_order(gsea["cell_type"]) if len(gsea) else []
    set_names = list(dict.fromkeys(list(meta.index) + list(gsea["gene_set"] if len(gsea) else [])))
    groups = _column_groups(set_names, meta)
    gap = 0.6
    x_of: dict[str, float] = {}
    spans = []
    x = 0.0
    for cat, members in groups:
        start = x
        for name in members:
            x_of[name] = x
            x += 1.0
        spans.append((cat, start, x))
        x += gap
    width = max(x - gap, 1.0)
    lookup = {(str(r.cell_type), str(r.gene_set)): r for r in gsea.itertuples(index=False)} if len(gsea) else {}
    cmap = plt.get_cmap("RdBu_r")
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax)

    fig, ax = plt.subplots(figsize=(min(3.5 + 0.42 * width, 30), 3.4 + 0.42 * max(len(rows), 1)))
    for i, cell_type in enumerate(rows):
        for name, x0 in x_of.items():
            rec = lookup.get((cell_type, name))
            nes = float(rec.NES) if rec is not None and pd.notna(rec.NES) else math.nan
            tested = rec is not None and str(rec.status) == TESTED and np.isfinite(nes)
            if tested:
                ax.add_patch(Rectangle((x0, i), 1, 1, facecolor=cmap(norm(np.clip(nes, -vmax, vmax))),
                                       edgecolor="white", linewidth=0.8))
                fdr = float(rec.fdr) if pd.notna(rec.fdr) else math.nan
                mark = "**" if fdr < 0.01 else "*" if fdr < 0.05 else ""
                if mark:
                    ax.text(x0 + 0.5, i + 0.5, mark, ha="center", va="center", fontsize=9,
                            color="white" if abs(nes) > 0.6 * vmax else "black")
            else:
                ax.add_patch(Rectangle((x0, i), 1, 1, facecolor="#e3e3e3", edgecolor="#a8a8a8", hatch="////",
                                       linewidth=0.0))
            intended = _split_cell_types(meta.at[name, "cell_types"]) if name in meta.index else ["all"]
            if "all" not in intended and cell_type in intended:
                ax.add_patch(Rectangle((x0 + 0.04, i + 0.04), 0.92, 0.92, fill=False, edgecolor="black",
                                       linewidth=1.1))
    ax.set_xlim(-0.2, width + 0.2)
    ax.set_ylim(max(len(rows), 1), 0)
    ax.set_yticks([i + 0.5 for i in range(len(rows))])
    ax.set_yticklabels(rows, fontsize=8)
    ax.set_xticks([x0 + 0.5 for x0 in x_of.values()])
    ax.set_xticklabels([short_set_name(n) for n in x_of], rotation=60, ha="right", fontsize=7.5)
    for cat, start, end in spans:
        ax.text((start + end) / 2, -0.25, CATEGORY_LABELS.get(cat, cat), ha="center", va="bottom", fontsize=8,
                weight="bold")
        ax.plot([start + 0.05, end - 0.05], [-0.12, -0.12], color="black", linewidth=0.8, clip_on=False)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    ax.tick_params(length=0)
    mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    colourbar = fig.colorbar(mappable, ax=ax, fraction=0.025, pad=0.02, ticks=np.linspace(-vmax, vmax, 5))
    colourbar.set_label("NES (treated vs reference)", fontsize=8)
    colourbar.ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=10, pad=26)
    fig.text(0.01, 0.005, footnote, fontsize=6.5, ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    plots.save(fig, paths)


def _panel_pairs(sets: Sequence[str], groups: Sequence[str]) -> list[tuple[str, str]]:
    sets, groups = list(sets), list(groups)
    if len(sets) == 1 and len(groups) > 1:
        sets = sets * len(groups)
    if len(groups) == 1 and len(sets) > 1:
        groups = groups * len(sets)
    if len(sets) != len(groups):
        raise ValueError(f"donor_score_lines: {len(groups)} group(s) and {len(sets)} set(s); give one group per set "
                         f"(panel i = groups[i] x sets[i]) or a single group or set")
    return list(zip(groups, sets))


def donor_score_lines(scores: pd.DataFrame, test: pd.DataFrame, sets: Sequence[str], groups: Sequence[str],
                      contrast: Contrast, paths: Sequence[str | Path],
                      title: str = "Module scores per donor") -> None:
    """Small multiples: one panel per (group, set), one line per donor from reference to treated.

    Parameters
    ----------
    scores
        Output of :func:`module_scores`.
    test
        Output of :func:`paired_score_test` (n pairs and padj go into the panel titles).
    sets, groups
        Panel i shows ``sets[i]`` in ``groups[i]``; a single set (or group) is used for every
        panel, e.g. ``sets=["PD_IL7_STAT5_RESPONSE_UP"], groups=["CD4 T", "CD8 T"]``.
    contrast
        x axis = reference, treated; one line per ``pair_by`` value.
    paths
        Output files (PNG/PDF).
    title
        Figure title.
    """
    plt = plots.plt
    pairs = _panel_pairs(sets, groups)
    ref, trt, pair_by = contrast.reference, contrast.treated, contrast.pair_by
    table = scores.copy()
    table["_pair"] = table[pair_by].astype(str) if pair_by in table.columns else ""
    table["_level"] = table[contrast.column].astype(str) if contrast.column in table.columns else ""
    table = table[table["_level"].isin([ref, trt])]
    donors = sorted(d for d in table["_pair"].unique() if d)
    colours = dict(zip(donors, plots.palette(len(donors))))
    n_cols = min(4, max(len(pairs), 1))
    n_rows = int(np.ceil(max(len(pairs), 1) / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.9 * n_cols, 2.9 * n_rows + 0.7), squeeze=False)
    for ax in axes.ravel()[len(pairs):]:
        ax.set_visible(False)
    for ax, (group, name) in zip(axes.ravel(), pairs):
        part = table[(table["group"].astype(str) == group) & (table["gene_set"] == name)]
        row = test[(test["cell_type"].astype(str) == group) & (test["gene_set"] == name)] if len(test) else test
        if len(row):
            rec = row.iloc[0]
            padj = f"padj {rec['padj']:.2g}" if pd.notna(rec["padj"]) else "not tested"
            stat_text = f"{int(rec['n_pairs'])} pairs, {padj}"
        else:
            stat_text = "not tested"
        ax.set_title("\n".join(textwrap.wrap(f"{short_set_name(name)} in {group}", 34)) + f"\n{stat_text}",
                     fontsize=8)
        ax.set_xticks([0, 1])
        ax.set_xticklabels([ref, trt], fontsize=8)
        ax.set_xlim(-0.35, 1.35)
        ax.tick_params(labelsize=7)
        if part.empty:
            ax.text(0.5, 0.5, "not scored", transform=ax.transAxes, ha="center", va="center", fontsize=8)
            continue
        means = part.groupby(["_pair", "_level"])["mean_score"].mean().unstack("_level").reindex(columns=[ref, trt])
        for donor, values in means.iterrows():
            y = values.to_numpy(dtype=float)
            if np.isfinite(y).all():
                ax.plot([0, 1], y, marker="o", markersize=4, linewidth=1.2, color=colours.get(donor, "grey"),
                        label=donor or "(no donor)")
            else:  # a donor with one timepoint: a hollow point, no line
                xs = [i for i in (0, 1) if np.isfinite(y[i])]
                ax.scatter(xs, y[xs], s=18, facecolors="none", edgecolors=colours.get(donor, "grey"))
        complete = means.dropna()
        if len(complete):
            ax.plot([0, 1], complete.mean().to_numpy(), color="black", linewidth=2.4, alpha=0.7, label="mean")
        ax.axhline(0, color="lightgrey", linewidth=0.6, zorder=0)
    axes[0, 0].set_ylabel("mean module score\n(cells averaged per sample)", fontsize=8)
    if donors and len(donors) <= 20:
        axes[0, 0].legend(frameon=False, fontsize=6, loc="best")
    fig.suptitle(f"{title}: one line per {pair_by}, {ref} -> {trt}; paired t-test on donor means, BH-adjusted",
                 fontsize=9)
    fig.tight_layout()
    plots.save(fig, paths)


# ---------------------------------------------------------------------------------------------
# donor-level competitive set test on pseudobulks

DONOR_SET_COLUMNS = ["gene_set", "n_pairs", "n_genes", "donor_shift", "donor_t", "donor_pvalue", "donor_fdr"]


def paired_set_test(pb_group: ad.AnnData, tested_genes: Sequence[str], library: GeneSetLibrary,
                    contrast: Contrast, min_size: int) -> pd.DataFrame:
    """Donor-level competitive test of every set in one population's pseudobulks.

    Gene-permutation GSEA treats genes as independent, so a set whose genes move together from
    sample to sample (handling stress, interferon tone, a few cycling cells) looks enriched even
    when only a handful of donors happened to shift the same way (Wu & Smyth 2012). Here the donor
    is the unit: per donor with both samples, the set's mean log2-CPM change minus that of all
    other tested genes (competitive, so global shifts cancel) is one observation, and a one-sample
    t-test across donors asks whether the set moved. Inter-gene correlation cannot inflate it.

    Parameters
    ----------
    pb_group
        Pseudobulks of one population (raw summed counts in ``X``; obs with the contrast and
        pairing columns).
    tested_genes
        Genes tested by the DE of this population (the ranked universe of the GSEA).
    library
        Gene sets.
    contrast
        Levels and pairing column.
    min_size
        Sets with fewer tested members get NaN statistics.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`DONOR_SET_COLUMNS`; ``donor_shift`` in log2 units (treated minus
        reference); ``donor_fdr`` is Benjamini-Hochberg across the tested sets of the population
        within the set's category (positive controls, hypotheses, context, artefact controls).
    """
    from scipy import stats
    from statsmodels.stats.multitest import multipletests

    X = pb_group.X.toarray() if hasattr(pb_group.X, "toarray") else np.asarray(pb_group.X, dtype=float)
    library_size = np.maximum(X.sum(axis=1), 1.0)
    genes = [g for g in dict.fromkeys(tested_genes) if g in pb_group.var_names]
    logcpm = pd.DataFrame(np.log2(X[:, pb_group.var_names.get_indexer(genes)] / library_size[:, None] * 1e6 + 1.0),
                          index=pb_group.obs_names, columns=genes)
    obs = pb_group.obs
    level = obs[contrast.column].astype(str)
    donor = obs[contrast.pair_by].astype(str) if contrast.pair_by in obs else pd.Series("", index=obs.index)
    post = logcpm[(level == contrast.treated).to_numpy()].groupby(donor[level == contrast.treated].to_numpy()).mean()
    pre = logcpm[(level == contrast.reference).to_numpy()].groupby(donor[level == contrast.reference].to_numpy()).mean()
    donors = sorted(set(post.index) & set(pre.index) - {""})
    change = post.loc[donors] - pre.loc[donors]
    rows = []
    for name, members in library.sets.items():
        inside = [g for g in members if g in change.columns]
        row = {"gene_set": name, "n_pairs": len(donors), "n_genes": len(inside), "donor_shift": np.nan,
               "donor_t": np.nan, "donor_pvalue": np.nan}
        if len(inside) >= min_size and len(donors) >= 2:
            outside = change.columns.difference(inside)
            shift = change[inside].mean(axis=1) - change[outside].mean(axis=1)
            row["donor_shift"] = float(shift.mean())
            if shift.std(ddof=1) > 0:
                result = stats.ttest_1samp(shift.to_numpy(), 0.0)
                row["donor_t"], row["donor_pvalue"] = float(result.statistic), float(result.pvalue)
        rows.append(row)
    table = pd.DataFrame(rows)
    # Benjamini-Hochberg within each pre-specified family of the population: positive controls,
    # hypotheses, context and artefact controls are different questions (science brief 5.9).
    family = table["gene_set"].map(library.meta["category"]).fillna("user")
    table["donor_fdr"] = np.nan
    for _, members in table[table["donor_pvalue"].notna()].groupby(family[table["donor_pvalue"].notna()]):
        table.loc[members.index, "donor_fdr"] = multipletests(members["donor_pvalue"], method="fdr_bh")[1]
    return table[DONOR_SET_COLUMNS]


def confirmed_call(gsea_fdr: float, nes: float, donor_fdr: float, donor_shift: float, alpha: float) -> str:
    """'up'/'down' when GSEA and the donor-level test both reach ``alpha`` in the same direction."""
    if not (gsea_fdr < alpha and donor_fdr < alpha):
        return "ns"
    if np.sign(nes) != np.sign(donor_shift):
        return "discordant"
    return "up" if nes > 0 else "down"
