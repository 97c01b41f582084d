"""Gene-set tests of each population's paired DE, and the rule that confirms a call.

- :func:`gsea_prerank`: GSEA (Subramanian et al. 2005, gseapy) on the signed pseudobulk DESeq2
  Wald statistic, with set-size bounds set explicitly and a fixed seed;
- :func:`ora`: over-representation of the significant genes, UP and DOWN separately, with the
  genes tested in that population as the universe;
- :func:`paired_set_test`: a donor-level competitive test on the pseudobulks.

GSEA and ORA are *competitive, gene-level* tests: they treat genes as independent. A nuisance that
moves a whole set in every sample (dissociation stress, interferon tone, the share of cycling
cells) makes them over-confident (Wu & Smyth 2012, Nucleic Acids Res 40:e133). The donor-level
test uses donors as the unit, so :func:`confirmed_call` requires both; :func:`enrich_populations`
writes the interpretation guards (set caveat, composition change, stress control) into every row.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from pbmc_prepost.ambient import ambient_note
from pbmc_prepost.genesets import GeneSetLibrary
from pbmc_prepost.set_calls import DONOR_SET_COLUMNS, confirm_calls, paired_set_test
from pbmc_prepost.settings import EnrichmentSettings

log = logging.getLogger(__name__)

#: 0.001 and costs < 1 s per population.
DEFAULT_PERMUTATIONS = 1000

DE_COLUMNS = ("gene", "log2FoldChange", "stat", "padj")
GSEA_COLUMNS = [
    "gene_set",
    "n_genes",
    "n_members",
    "NES",
    "pvalue",
    "fdr",
    "leading_edge",
    "expected_direction",
    "status",
]
ORA_COLUMNS = [
    "gene_set",
    "direction",
    "n_set_in_universe",
    "n_significant",
    "overlap",
    "genes",
    "pvalue",
    "fdr",
    "expected_direction",
    "status",
]
TESTED = "tested"


def _check_de_table(de_table: pd.DataFrame, needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in de_table.columns]
    if missing:
        raise ValueError(
            f"DE table lacks column(s) {', '.join(missing)}; pass a pseudobulk_de results table "
            f"(columns gene, baseMean, log2FoldChange, lfcSE, stat, pvalue, padj)"
        )


def _ranking(de_table: pd.DataFrame) -> pd.Series:
    """Wald statistic per gene, NaN dropped, one value per gene, sorted high -> low (ties by name)."""
    _check_de_table(de_table, ("gene", "stat"))
    table = pd.DataFrame(
        {
            "gene": de_table["gene"].astype(str).to_numpy(),
            "stat": pd.to_numeric(de_table["stat"], errors="coerce").to_numpy(dtype=float),
        }
    )
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
    return pd.Series(table["stat"].to_numpy(), index=pd.Index(table["gene"].to_numpy(), name="gene"), name="stat")


def _size_status(n: int, min_size: int, max_size: int | None = None) -> str:
    if n < min_size:
        return f"too small: {n} genes < min_size {min_size}"
    if max_size is not None and n > max_size:
        return f"too large: {n} genes > max_size {max_size}"
    return TESTED


def gsea_prerank(
    de_table: pd.DataFrame,
    library: GeneSetLibrary,
    min_size: int,
    max_size: int,
    permutations: int,
    seed: int,
    threads: int = 1,
    label: str = "",
) -> pd.DataFrame:
    """Preranked GSEA (gseapy) of every set on one population's DESeq2 Wald statistic.

    Genes are ranked by the signed Wald ``stat`` (not p-values, which lose the direction);
    genes with NaN stat are dropped. gseapy runs with gene-set permutations, ``outdir=None``
    and no plots. ``min_size`` is passed explicitly and logged: gseapy's default of 15 would
    silently drop small curated sets (Heumos et al. 2023 ask for at least 10 genes per set). Sets outside [min_size, max_size]
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
    log.info(
        "GSEA prerank%s: %d ranked genes, min_size=%d (set explicitly; gseapy's default 15 would drop small "
        "curated sets), max_size=%d, permutations=%d, seed=%d",
        where,
        len(ranking),
        min_size,
        max_size,
        permutations,
        seed,
    )
    for name, found in members.items():
        log.info(
            "GSEA%s: %s: %d of %d members ranked; %s", where, name, len(found), len(library.sets[name]), status[name]
        )
    testable = {name: found for name, found in members.items() if status[name] == TESTED}
    results = pd.DataFrame(columns=["NES", "pvalue", "fdr", "leading_edge"], index=pd.Index([], dtype=str))
    if testable and len(ranking) <= max(len(v) for v in testable.values()):
        # GSEA needs genes outside a set to compare with; a ranking of set members only has none.
        for name in testable:
            status[name] = "not tested: every ranked gene is in the set"
    elif testable:
        run = gseapy.prerank(
            rnk=ranking,
            gene_sets=testable,
            min_size=min_size,
            max_size=max_size,
            permutation_num=permutations,
            seed=seed,
            threads=threads,
            outdir=None,
            no_plot=True,
            verbose=False,
            ascending=None,
        )  # already sorted, with a deterministic tie order
        res = run.res2d.set_index("Term")
        floor = 1.0 / (permutations + 1)
        results = pd.DataFrame(
            {
                "NES": pd.to_numeric(res["NES"], errors="coerce"),
                "pvalue": pd.to_numeric(res["NOM p-val"], errors="coerce").clip(lower=floor, upper=1.0),
                "fdr": pd.to_numeric(res["FDR q-val"], errors="coerce").clip(lower=0.0, upper=1.0),
                "leading_edge": res["Lead_genes"].astype(str),
            },
            index=res.index.astype(str),
        )
        lost = sorted(set(testable) - set(results.index))
        for name in lost:  # gseapy filters on its own; say so rather than lose a row silently
            status[name] = "not returned by gseapy"
    rows = []
    for name in library.sets:
        tested = status[name] == TESTED and name in results.index
        rows.append(
            {
                "gene_set": name,
                "n_genes": len(members[name]),
                "n_members": len(library.sets[name]),
                "NES": float(results.at[name, "NES"]) if tested else math.nan,
                "pvalue": float(results.at[name, "pvalue"]) if tested else math.nan,
                "fdr": float(results.at[name, "fdr"]) if tested else math.nan,
                "leading_edge": str(results.at[name, "leading_edge"]) if tested else "",
                "expected_direction": library.expected_direction(name),
                "status": status[name],
            }
        )
    return pd.DataFrame(rows, columns=GSEA_COLUMNS)


def gsea_all_populations(tables: Mapping[str, pd.DataFrame], library: GeneSetLibrary, **kwargs) -> pd.DataFrame:
    """:func:`gsea_prerank` of every population; a ``population`` column first.

    Parameters
    ----------
    tables
        Population label -> DE table (as returned by :func:`pbmc_prepost.de.fit_all_populations`).
    library
        Gene sets.
    **kwargs
        Passed to :func:`gsea_prerank` (min_size, max_size, permutations, seed, threads).

    Returns
    -------
    pandas.DataFrame
        The per-population tables stacked, populations in sorted order.
    """
    frames = [
        gsea_prerank(tables[label], library, label=label, **kwargs).assign(population=label) for label in sorted(tables)
    ]
    columns = ["population", *GSEA_COLUMNS]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def ora(de_table: pd.DataFrame, library: GeneSetLibrary, alpha: float, min_size: int) -> pd.DataFrame:
    """Over-representation of significant genes in each set, UP and DOWN separately.

    Significant UP (DOWN) genes: ``padj < alpha`` and ``log2FoldChange > 0`` (``< 0``); NaN padj
    (independent filtering) is not significant. The universe is every gene of ``de_table`` (the
    genes tested in this population), not the genome, and each set is restricted to it. One-sided
    hypergeometric test (``scipy.stats.hypergeom.sf``); Benjamini-Hochberg within a direction
    across the tested sets. Testing the directions separately keeps an MHC-II loss from being
    read as "MHC-II enriched".

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
            members_in_universe = set(in_universe)
            overlap = [g for g in hits if g in members_in_universe]
            status = _size_status(len(in_universe), min_size)
            pvalue = math.nan
            if status == TESTED:
                # P(X >= k), X ~ hypergeom(M=universe, n=set in universe, N=significant).
                pvalue = float(stats.hypergeom.sf(len(overlap) - 1, n_universe, len(in_universe), len(hit_set)))
            rows.append(
                {
                    "gene_set": name,
                    "direction": direction,
                    "n_set_in_universe": len(in_universe),
                    "n_significant": len(hit_set),
                    "overlap": len(overlap),
                    "genes": ";".join(overlap),
                    "pvalue": pvalue,
                    "fdr": math.nan,
                    "expected_direction": library.expected_direction(name),
                    "status": status,
                }
            )
        frame = pd.DataFrame(rows, columns=ORA_COLUMNS)
        tested = frame["pvalue"].notna().to_numpy()
        if tested.any():
            frame.loc[tested, "fdr"] = multipletests(frame.loc[tested, "pvalue"], method="fdr_bh")[1]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def ora_all_populations(
    tables: Mapping[str, pd.DataFrame], library: GeneSetLibrary, alpha: float, min_size: int
) -> pd.DataFrame:
    """:func:`ora` of every population (sorted), with a ``population`` column first."""
    frames = [ora(tables[label], library, alpha, min_size).assign(population=label) for label in sorted(tables)]
    columns = ["population", *ORA_COLUMNS]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def enrich_populations(
    tables: Mapping[str, pd.DataFrame],
    summary: pd.DataFrame,
    pseudobulk: ad.AnnData,
    composition: pd.DataFrame,
    library: GeneSetLibrary,
    settings: EnrichmentSettings,
    threads: int = 1,
    annotation_notes: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """GSEA and ORA of every tested population, confirmed by the donor-level test, with guards.

    Parameters
    ----------
    tables
        Population -> DE table of the tested populations.
    summary
        The DE summary (``population``, ``status``, ``n_pairs``).
    pseudobulk
        The pseudobulks the DE fitted (obs with ``settings.level``, the contrast and pairing
        columns).
    composition
        The composition test (``level``, ``population``, ``log2_ratio``, ``padj``).
    library
        Gene sets with metadata.
    settings
        Set-size bounds, permutations, alpha, seed, contrast and the DE level.
    threads
        gseapy threads.
    annotation_notes
        Population -> note of a flagged annotation, in the ``annotation_note`` column.

    Returns
    -------
    gsea, ora
        One row per population x set (ORA: x direction), with ``level`` and ``population`` first,
        the donor pairs, the donor-level test and ``call`` (GSEA only), and the guards:
        ``caveat`` (the set's), ``composition_note`` (the population's share changed) and
        ``stress_control`` (the dissociation-stress set's call in the same population), and
        ``annotation_note``.
    """
    gsea = gsea_all_populations(
        tables,
        library,
        min_size=settings.min_size,
        max_size=settings.max_size,
        permutations=settings.permutations,
        seed=settings.seed,
        threads=threads,
    )
    ora = ora_all_populations(tables, library, alpha=settings.alpha, min_size=settings.min_size)
    donor_tests = []
    for label, table in tables.items():
        pb_group = pseudobulk[pseudobulk.obs[settings.level].astype(str).to_numpy() == label]
        donor_tests.append(
            paired_set_test(pb_group, table["gene"], library, settings.contrast, settings.min_size).assign(
                population=label
            )
        )
    donor_columns = [c for c in DONOR_SET_COLUMNS if c not in ("n_genes", "n_pairs")] + ["population"]
    donor = (
        pd.concat(donor_tests, ignore_index=True).drop(columns=["n_genes", "n_pairs"])
        if donor_tests
        else pd.DataFrame(columns=donor_columns)
    )
    gsea = gsea.merge(donor, on=["population", "gene_set"], how="left")
    gsea["call"] = "ns"  # confirm_calls decides, over every population and contrast of the run
    # Sets whose genes move mostly through the ambient RNA: noted, and never a confirmed call.
    flagged = {
        label: set(table.loc[table["ambient_flag"].astype(str).eq("True"), "gene"].astype(str))
        for label, table in tables.items()
        if "ambient_flag" in table
    }
    gsea["ambient_note"] = [
        ambient_note(genes, flagged.get(label, set())) for genes, label in zip(gsea["leading_edge"], gsea["population"])
    ]

    pairs = summary[summary["status"] == "tested"].set_index("population")["n_pairs"]
    composition = composition[composition["level"] == settings.level].set_index("population")
    changed = composition["padj"] < settings.alpha

    def guards(frame: pd.DataFrame) -> pd.DataFrame:
        frame.insert(1, "n_pairs", frame["population"].map(pairs).astype("Int64"))
        frame.insert(0, "level", settings.level)
        frame["caveat"] = frame["gene_set"].map(library.meta["caveat"]).fillna("")
        frame["composition_note"] = [
            (
                f"share {'rose' if composition.loc[c, 'log2_ratio'] > 0 else 'fell'} "
                f"(padj {composition.loc[c, 'padj']:.2g}); read with the composition table"
            )
            if c in composition.index and changed.get(c, False)
            else ""
            for c in frame["population"]
        ]
        frame["stress_control"] = "not tested"  # confirm_calls fills it, once every contrast is in
        frame["annotation_note"] = frame["population"].map(annotation_notes or {}).fillna("")
        return frame

    ora["ambient_note"] = [
        ambient_note(genes, flagged.get(label, set())) for genes, label in zip(ora["genes"], ora["population"])
    ]
    return guards(gsea), guards(ora)


def enrich_contrasts(
    tables: Mapping[tuple[str, str], pd.DataFrame],
    summary: pd.DataFrame,
    pseudobulk: ad.AnnData,
    composition: pd.DataFrame,
    library: GeneSetLibrary,
    settings: EnrichmentSettings,
    threads: int = 1,
    annotation_notes: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`enrich_populations` of every contrast on its own DE tables and pseudobulks.

    Parameters
    ----------
    tables
        (contrast, population) -> DE table.
    summary, composition
        The DE summary and the composition test of every contrast (``contrast`` column).

    Returns
    -------
    gsea, ora
        Every contrast's rows, ``contrast`` first, contrasts in config order.
    """
    results: tuple[list, list] = ([], [])
    for contrast in settings.contrasts:
        own = {label: table for (name, label), table in tables.items() if name == contrast.name}
        pb = pseudobulk[contrast.sample_mask(pseudobulk.obs)]
        frames = enrich_populations(
            own,
            summary[summary["contrast"] == contrast.name],
            pb,
            composition[composition["contrast"] == contrast.name],
            library,
            settings._replace(contrast=contrast),
            threads=threads,
            annotation_notes=annotation_notes,
        )
        for collected, frame in zip(results, frames):
            frame.insert(0, "contrast", contrast.name)
            collected.append(frame)
    gsea, ora = (pd.concat(frames, ignore_index=True) for frames in results)
    return confirm_calls(gsea, ora, library, settings.alpha)
