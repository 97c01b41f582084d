"""Ambient RNA without a raw droplet matrix: the soup and its share estimated from the cells.

Without empty droplets the soup's profile is taken from the sample's own cells: the soup is the
RNA of its lysed cells, so its profile is close to the sample's pooled transcriptome (SoupX's
fallback when no raw matrix is given). Its share of a droplet's UMIs comes from genes that some
lineages make and others do not (``resources/markers/ambient_genes.tsv``): in an annotated
population that cannot make a gene family, the family's counts are soup, so the Poisson
maximum-likelihood estimate of the contamination is their sum over the sum of UMIs x the
family's share of the soup (SoupX's ``calculateContaminationFraction`` with non-expressed genes
per cluster), from the family genes abundant in the soup (:data:`SOUP_QUANTILE`). Cells carrying
a family far beyond what soup can give (doublets, mislabelled cells) are left out first, as
SoupX's ``estimateNonExpressingCells`` does.

Genes that only the soup carries (haemoglobin, config ``ambient.marker_pattern``) are in the
cells only through the soup: their share of the cells' UMIs is measured directly and added, and
the soup profile gets them at that share. So a sample's contamination is the part that follows
its cells' composition, estimated from the families, plus the red-cell part, measured.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from pbmc_prepost.ambient import expressing_cells, poisson_interval

log = logging.getLogger(__name__)

#: A population whose counts of a family reach this share of its UMIs x the family's soup share
#: makes the genes (no contamination is that high): the pair is not used (a mislabel, or biology).
MAX_FAMILY_RATIO = 0.5
#: A family is used when the soup holds at least this share of its level in the population that
#: makes it most (its share of those cells' UMIs), i.e. when its makers are a large part of the
#: sample. The other lineages' own traces of a family (about 1/1000 of the makers' level in
#: sorted-cell RNA-seq) bias the estimate by at most trace / this share in absolute terms: 1e-3 /
#: 0.1 = 1 point, and a third of that for the usual shares of the myeloid and T families (0.15-0.5:
#: monocytes and T cells are large parts of a PBMC sample). A rare lineage's transcripts
#: (platelets, plasma cells) are too scarce in the soup for the other lineages' traces of them to
#: be negligible (SoupX's autoEstCont likewise uses only genes abundant in the soup).
MIN_SOUP_TO_MAKER = 0.1
#: A family gene the non-makers carry beyond this multiple of what its family's other genes predict
#: is left out (it is not restricted to the makers in these data).
GENE_EXCESS = 2.0
#: The second pass leaves out cells carrying a family beyond this multiple of the first estimate's
#: soup level (p < 0.001), and at least :data:`MIN_RHO_MAX` of their UMIs.
EXCESS_OVER_FIRST = 3.0
MIN_RHO_MAX = 0.02
#: Populations smaller than this do not stand for a family's makers.
MIN_MAKER_CELLS = 10
#: A cell carrying the soup-only genes beyond this multiple of the sample's typical level holds a
#: red cell or reticulocyte; it is left out of the pooled profile.
SOUP_ONLY_EXCESS = 10.0


class GeneFamily(NamedTuple):
    """Genes some lineages make, and the lineages in which they are soup only."""

    name: str
    genes: tuple[str, ...]
    absent_from: tuple[str, ...]


def read_families(path: str | Path) -> list[GeneFamily]:
    """The gene families of ``resources/markers/ambient_genes.tsv`` (``#`` lines are comments)."""
    table = pd.read_csv(path, sep="\t", comment="#", dtype=str)
    missing = {"family", "genes", "absent_from"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: no column(s) {', '.join(sorted(missing))}")
    return [
        GeneFamily(
            row.family,
            tuple(g.strip() for g in row.genes.split(",") if g.strip()),
            tuple(p.strip() for p in row.absent_from.split(",") if p.strip()),
        )
        for row in table.itertuples()
    ]


def family_genes(families: list[GeneFamily]) -> list[str]:
    """Every gene of the families, each once, in order."""
    return list(dict.fromkeys(g for family in families for g in family.genes))


def pooled_profile(cells: sp.spmatrix, genes: np.ndarray, soup_only_pattern: str) -> np.ndarray:
    """A sample's cells pooled: each gene's share of their UMIs, without the droplets that carry
    the soup-only genes themselves (:data:`SOUP_ONLY_EXCESS` times the typical share).

    Parameters
    ----------
    cells
        The sample's QC-passed cells x genes, raw counts.
    genes
        Gene symbols of the columns.
    soup_only_pattern
        Regular expression of the genes only the soup carries (haemoglobin in PBMC).
    """
    cells = sp.csr_matrix(cells)
    umis = np.asarray(cells.sum(1)).ravel().astype(float)
    soup_only = np.flatnonzero([re.match(soup_only_pattern, str(g)) is not None for g in genes])
    keep = np.ones(cells.shape[0], bool)
    if len(soup_only):
        carried = np.asarray(cells[:, soup_only].sum(1)).ravel()
        typical = carried.sum() / max(umis.sum(), 1.0)
        keep = ~expressing_cells(carried, umis, typical, rho_max=SOUP_ONLY_EXCESS)
    total = np.asarray(cells[keep].sum(0)).ravel().astype(float)
    return total / max(total.sum(), 1.0)


def _consistent_genes(
    present: list[str],
    counts: sp.csc_matrix,
    column: dict[str, int],
    umis: np.ndarray,
    absent: np.ndarray,
    soup: pd.Series,
    sample: str,
) -> list[str]:
    """The family's genes without those the non-makers carry far beyond the rest of the family:
    more than :data:`GENE_EXCESS` times what the other genes' estimate predicts, beyond Poisson
    noise (p < 0.001). Such a gene is made by some of those cells (not lineage-restricted here)."""
    if len(present) < 3 or not absent.any():
        return present
    observed = np.array([counts[absent, column[g]].sum() for g in present], dtype=float)
    expected = umis[absent].sum() * soup[present].to_numpy(dtype=float)
    keep = []
    for i, gene in enumerate(present):
        others = np.arange(len(present)) != i
        rho_others = observed[others].sum() / max(expected[others].sum(), 1e-300)
        limit = stats.poisson.ppf(0.999, GENE_EXCESS * max(rho_others, 1e-4) * expected[i])
        if observed[i] > limit:
            log.info(
                "%s: %s left out of its family (%d counts where %.1f were expected)",
                sample,
                gene,
                observed[i],
                rho_others * expected[i],
            )
        else:
            keep.append(gene)
    return keep


#: Columns of ``results/qc/ambient_by_population.tsv``.
POPULATION_COLUMNS = [
    "sample",
    "population",
    "family",
    "genes",
    "cells_used",
    "cells_expressing",
    "gene_counts",
    "expected_per_unit",
    "contamination",
    "soup_to_maker",
    "used",
]


class CellsEstimate(NamedTuple):
    """One sample's contamination from its cells, and the soup profile to correct with."""

    rho: float
    lower: float
    upper: float
    soup_only_share: float
    genes: tuple[str, ...]
    gene_counts: int
    cells_used: int
    cells_expressing: int
    profile: np.ndarray


def _family_pairs(
    counts: sp.csc_matrix,
    column: dict[str, int],
    umis: np.ndarray,
    population: np.ndarray,
    rest: pd.Series,
    families: list[GeneFamily],
    soup_only_share: float,
    sample: str,
    rho_max: float,
) -> tuple[pd.DataFrame, list[tuple[np.ndarray, np.ndarray]]]:
    """One row per population x family it cannot make, cells beyond ``rho_max`` of soup left out;
    and per row the population's cells with those used."""
    rows, cells_in = [], []
    for family in families:
        present = [g for g in family.genes if g in column and rest.get(g, 0.0) > 0]
        present = _consistent_genes(
            present, counts, column, umis, np.isin(population, family.absent_from), rest, sample
        )
        if not present:
            continue
        share = float(rest[present].sum())
        family_counts = np.asarray(counts[:, [column[g] for g in present]].sum(1)).ravel()
        makers = [
            family_counts[population == name].sum() / umis[population == name].sum()
            for name in np.unique(population)
            if name not in family.absent_from and (population == name).sum() >= MIN_MAKER_CELLS
        ]
        soup_to_maker = share / max(makers) if makers and max(makers) > 0 else np.nan
        for name in family.absent_from:
            in_population = population == name
            if not in_population.any():
                continue
            expressing = expressing_cells(family_counts[in_population], umis[in_population], share, rho_max)
            used = ~expressing
            cells_in.append((np.flatnonzero(in_population), used))
            observed = float(family_counts[in_population][used].sum())
            expected = float((umis[in_population][used] * share).sum())
            ratio = observed / expected if expected > 0 else np.nan
            rows.append(
                {
                    "sample": sample,
                    "population": name,
                    "family": family.name,
                    "genes": ",".join(present),
                    "cells_used": int(used.sum()),
                    "cells_expressing": int(expressing.sum()),
                    "gene_counts": int(observed),
                    "expected_per_unit": expected,
                    "contamination": ratio + soup_only_share if np.isfinite(ratio) else np.nan,
                    "soup_to_maker": soup_to_maker,
                    # A soup richer in the family than every candidate maker: the makers are not
                    # among the populations (too few cells), so the family cannot be judged.
                    "used": bool(expected > 0 and ratio < MAX_FAMILY_RATIO and MIN_SOUP_TO_MAKER <= soup_to_maker < 1),
                }
            )
    table = pd.DataFrame(rows, columns=POPULATION_COLUMNS)
    table["used"] = table["used"].astype(bool)
    return table, cells_in


def _pooled(table: pd.DataFrame) -> float:
    """The composition part of the contamination over the used pairs (NaN when none)."""
    used = table[table["used"]]
    expected = float(used["expected_per_unit"].sum())
    return float(used["gene_counts"].sum()) / expected if expected > 0 else np.nan


def estimate_from_cells(
    counts: sp.spmatrix,
    genes: np.ndarray,
    umis: np.ndarray,
    population: np.ndarray,
    profile: pd.Series,
    families: list[GeneFamily],
    soup_only_pattern: str,
    sample: str = "",
) -> tuple[CellsEstimate, pd.DataFrame]:
    """One sample's contamination fraction from the gene families its populations cannot make.

    Parameters
    ----------
    counts
        The sample's cells x the family genes (``genes``), raw counts.
    genes
        Gene symbols of ``counts``' columns.
    umis
        Each cell's UMIs (all genes: the space ``profile`` is a share of).
    population
        Each cell's population (the annotation's ``lineage``).
    profile
        The pooled profile (:func:`pooled_profile`), gene symbol -> share.
    families
        The gene families (:func:`read_families`).
    soup_only_pattern
        Genes only the soup carries: their pooled share is the red-cell part of the soup.
    sample
        For the table and the log.

    Returns
    -------
    CellsEstimate, pandas.DataFrame
        The estimate (NaN when no population could be used) and one row per population x family.
    """
    counts = sp.csc_matrix(counts)
    umis = np.asarray(umis, dtype=float)
    population = np.asarray(population).astype(str)
    soup_only = np.array([re.match(soup_only_pattern, str(g)) is not None for g in profile.index])
    soup_only_share = float(profile[soup_only].sum())
    rest = profile.where(~soup_only, 0.0)
    rest = rest / max(float(rest.sum()), 1e-300)
    column = {str(g): i for i, g in enumerate(genes)}
    pairs = (counts, column, umis, population, rest, families, soup_only_share, sample)
    # Twice: cells far beyond soup level at a loose bound first, then at a few times the first
    # estimate (a residual doublet holds a fraction of another lineage's transcripts, not 50 %).
    table, cells_in = _family_pairs(*pairs, rho_max=0.5)
    first = _pooled(table)
    if np.isfinite(first):
        table, cells_in = _family_pairs(*pairs, rho_max=max(EXCESS_OVER_FIRST * first, MIN_RHO_MAX))
    made = table[~table["used"] & (table["contamination"] >= MAX_FAMILY_RATIO)]
    for row in made.itertuples():
        log.info(
            "%s: %s cells make the %s genes (%.0f %% of their UMIs x soup share): not used",
            sample,
            row.population,
            row.family,
            100 * row.contamination,
        )
    used = table[table["used"]]
    # Cells counted once however many families they were used for.
    used_cells = np.zeros(len(umis), bool)
    expressing_cells_ = np.zeros(len(umis), bool)
    for (where, kept), take in zip(cells_in, table["used"], strict=True):
        if take:
            used_cells[where[kept]] = True
            expressing_cells_[where[~kept]] = True
    observed, expected = float(used["gene_counts"].sum()), float(used["expected_per_unit"].sum())
    if expected <= 0:
        nan = np.full(len(profile), np.nan)
        return CellsEstimate(np.nan, np.nan, np.nan, soup_only_share, (), 0, 0, 0, nan), table
    composition_part = observed / expected
    lower, upper = poisson_interval(observed, expected)
    rho = composition_part + soup_only_share
    # The soup: the cells' composition at the estimated share, and the soup-only genes as measured.
    mixed = np.where(soup_only, profile.to_numpy(), composition_part * rest.to_numpy())
    soup = mixed / rho if rho > 0 else rest.to_numpy()
    estimate = CellsEstimate(
        rho,
        lower + soup_only_share,
        upper + soup_only_share,
        soup_only_share,
        tuple(dict.fromkeys(g for genes_ in used["genes"] for g in genes_.split(","))),
        int(observed),
        int(used_cells.sum()),
        int((expressing_cells_ & ~used_cells).sum()),
        soup,
    )
    return estimate, table


def complete_ambient(
    table: pd.DataFrame,
    soups: dict[str, pd.Series],
    counts: sp.spmatrix,
    genes: np.ndarray,
    cells: pd.DataFrame,
    families: list[GeneFamily],
    soup_only_pattern: str,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.Series]]:
    """Fill the rows of method ``cells`` of ``results/qc/ambient.tsv`` once cells are annotated.

    Parameters
    ----------
    table
        The per-sample rows written by QC (:func:`pbmc_prepost.ambient.sample_ambient`).
    soups
        Sample -> soup share per gene: the empty droplets' soup, or for method ``cells`` the
        pooled profile of the sample's cells.
    counts
        The merged cells x ``genes`` (the family genes), raw counts.
    genes
        Gene symbols of ``counts``' columns.
    cells
        Per merged cell: ``sample``, ``lineage`` and ``total_counts`` (its UMIs over all genes).
    families, soup_only_pattern
        As for :func:`estimate_from_cells`.

    Returns
    -------
    pandas.DataFrame, pandas.DataFrame, dict
        The completed table, one row per sample x population x family
        (``results/qc/ambient_by_population.tsv``), and the soups to correct with (for method
        ``cells``: the composition part at its estimated share plus the soup-only genes).
    """
    table = table.copy()
    soups = dict(soups)
    counts = sp.csr_matrix(counts)
    sample_of = cells["sample"].astype(str).to_numpy()
    parts = []
    for i in np.flatnonzero((table["method"] == "cells").to_numpy()):
        sample = str(table.at[table.index[i], "sample"])
        mine = sample_of == sample
        if sample not in soups or not mine.any():
            table.loc[table.index[i], "note"] = "no cells of this sample in the merged stage: not estimated"
            soups.pop(sample, None)
            continue
        found, by_population = estimate_from_cells(
            counts[mine],
            genes,
            cells["total_counts"].to_numpy()[mine],
            cells["lineage"].to_numpy()[mine],
            soups[sample],
            families,
            soup_only_pattern,
            sample,
        )
        parts.append(by_population)
        used = by_population[by_population["used"]]
        if not np.isfinite(found.rho):
            note = "no population that lacks a gene family of ambient_genes.tsv: not estimated"
            soups.pop(sample)
        else:
            note = (
                f"soup from the sample's cells; composition part from {', '.join(sorted(set(used['family'])))} "
                f"in {', '.join(sorted(set(used['population'])))}; soup-only genes {100 * found.soup_only_share:.2f} %"
            )
            soups[sample] = pd.Series(found.profile, index=soups[sample].index)
            log.info(
                "%s: contamination %.2f %% (95 %% interval %.2f-%.2f) from the cells, %d counts of %s",
                sample,
                100 * found.rho,
                100 * found.lower,
                100 * found.upper,
                found.gene_counts,
                ", ".join(found.genes),
            )
        table.loc[table.index[i], ["contamination", "contamination_low", "contamination_high"]] = [
            found.rho,
            found.lower,
            found.upper,
        ]
        table.loc[table.index[i], ["gene_counts", "cells_used", "cells_expressing"]] = [
            found.gene_counts,
            found.cells_used,
            found.cells_expressing,
        ]
        table.loc[table.index[i], ["genes", "note"]] = [",".join(found.genes), note]
    by_population = pd.concat(parts, ignore_index=True) if parts else empty_population_table()
    return table, by_population, soups


def empty_population_table() -> pd.DataFrame:
    """``results/qc/ambient_by_population.tsv`` when no sample is estimated from its cells."""
    return pd.DataFrame(columns=POPULATION_COLUMNS)
