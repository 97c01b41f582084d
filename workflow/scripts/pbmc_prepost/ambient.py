"""Ambient RNA (the soup): its profile in each sample and the share of the cells' UMIs it makes up.

SoupX's model (Young & Behjati, GigaScience 2020): a droplet's counts are its cell's own plus a
fraction ``rho`` of its UMIs drawn from the soup, the expression profile of the sample's free RNA.
The soup is measured in droplets that caught no cell (the raw matrix, 0 < UMIs <= 100). ``rho``
comes from genes the cells cannot express, whose counts in cells are therefore all soup: the
Poisson maximum-likelihood estimate is the sum of those counts over the sum, over the same cells,
of UMIs x the genes' share of the soup (SoupX's ``calculateContaminationFraction``). In PBMC the
haemoglobin genes are such genes: no nucleated blood cell makes them, and lysed red cells put them
in every sample's soup. Cells that do carry them (red-cell or reticulocyte droplets) are left out
first, as SoupX's ``estimateNonExpressingCells`` does.

The Python ports of SoupX were evaluated against the simulator's truth (docs/ambient_evaluation.md):
their automatic estimate missed the planted fraction by 3-4 points and failed on a quarter of the
samples, and their estimate from named genes is this formula; so it is written here, in a few
lines, with the exclusion and an interval added.
"""

from __future__ import annotations

import logging
import re
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from scipy import stats

log = logging.getLogger(__name__)

#: Haemoglobin genes of adult and fetal red cells (not HBE1/HBZ/HBQ1: embryonic, rarely in the soup).
HAEMOGLOBIN_PATTERN = r"^HB(?:A1|A2|B|D|G1|G2|M)$"
#: A marker gene whose share of the cells' UMIs reaches this fraction of its soup share is made by
#: the cells (no contamination is that high), and is not used.
MAX_SOUP_RATIO = 0.5
#: Droplets with at most this many UMIs and no cell call are empty: their counts are the soup.
EMPTY_MAX_UMIS = 100


class AmbientEstimate(NamedTuple):
    """One sample's contamination fraction and what it rests on."""

    rho: float
    lower: float
    upper: float
    genes: tuple[str, ...]
    soup_counts: int
    cells_used: int
    cells_expressing: int
    soup_source: str
    empty_droplets: int


class Soup(NamedTuple):
    """A sample's soup: each gene's share, and what it was measured on."""

    profile: np.ndarray
    source: str
    droplets: int
    umis: float


def soup_from_droplets(raw: sp.spmatrix, is_cell: np.ndarray, max_umis: int = EMPTY_MAX_UMIS) -> Soup:
    """The soup profile (share of each gene) from the empty droplets of a raw matrix.

    Parameters
    ----------
    raw
        Every droplet x genes, counts.
    is_cell
        Droplets called cells (left out whatever their size).
    max_umis
        Droplets with 1 to ``max_umis`` UMIs and no cell call are taken as empty.
    """
    raw = sp.csr_matrix(raw)
    umis = np.asarray(raw.sum(1)).ravel()
    empty = ~np.asarray(is_cell, bool) & (umis > 0) & (umis <= max_umis)
    if not empty.any():
        raise ValueError(f"no empty droplets (1-{max_umis} UMIs, not a cell) in the raw matrix")
    total = np.asarray(raw[empty].sum(0)).ravel().astype(float)
    return Soup(total / total.sum(), "raw_droplets", int(empty.sum()), float(total.sum()))


def expressing_cells(
    counts: np.ndarray, umis: np.ndarray, soup_share: float, rho_max: float = 0.5, alpha: float = 0.001
) -> np.ndarray:
    """Cells whose counts of a gene set are too many to be soup: above the ``1 - alpha`` Poisson
    quantile even if ``rho_max`` of the cell's UMIs were soup (they make the genes themselves)."""
    expected = rho_max * umis * soup_share
    return counts > stats.poisson.ppf(1 - alpha, expected)


def contamination_fraction(
    cells: sp.spmatrix,
    genes: np.ndarray,
    soup: Soup,
    marker_pattern: str = HAEMOGLOBIN_PATTERN,
) -> AmbientEstimate:
    """Estimate a sample's contamination fraction from genes its cells do not make.

    Parameters
    ----------
    cells
        Cells x genes, raw counts (the filtered matrix).
    genes
        Gene symbols of the columns.
    soup
        The sample's soup (:func:`soup_from_droplets`), one share per column.
    marker_pattern
        Regular expression of the genes no cell of the sample makes (default haemoglobin); those
        the cells turn out to make (:data:`MAX_SOUP_RATIO`) are left out.

    Returns
    -------
    AmbientEstimate
        ``rho`` with a 95 % interval from the Poisson counts of the genes in the cells and in the
        soup's droplets (delta method on the log ratio); ``rho`` is NaN when the genes are absent
        from the soup (nothing to measure it by).
    """
    soup_source, empty_droplets = soup.source, soup.droplets
    profile = soup.profile
    cells = sp.csr_matrix(cells)
    umis = np.asarray(cells.sum(1)).ravel()
    candidates = np.flatnonzero([re.match(marker_pattern, str(g)) is not None for g in genes])
    # Droplets with a red cell or reticulocyte carry far more of these genes than soup can give.
    candidate_counts = cells[:, candidates]
    expressing = (
        expressing_cells(np.asarray(candidate_counts.sum(1)).ravel(), umis, float(profile[candidates].sum()))
        if len(candidates)
        else np.zeros(len(umis), bool)
    )
    used = ~expressing
    # In the other cells, a gene they make has about the same share of their UMIs as of the soup;
    # one they do not make has rho times its soup share. Keep the genes well below half of it.
    cell_share = np.asarray(candidate_counts[used].sum(0)).ravel() / max(umis[used].sum(), 1)
    made = cell_share >= MAX_SOUP_RATIO * profile[candidates]
    if made.any():
        log.info("left out of the estimate, made by the cells: %s", ", ".join(str(genes[i]) for i in candidates[made]))
    columns = candidates[~made]
    names = tuple(str(genes[i]) for i in columns)
    share = float(profile[columns].sum())
    observed = int(cells[used][:, columns].sum())
    expected_per_rho = float((umis[used] * share).sum())
    if expected_per_rho <= 0:
        log.warning(
            "none of %s is in the soup: the contamination fraction cannot be estimated", names or marker_pattern
        )
        return AmbientEstimate(
            np.nan, np.nan, np.nan, names, observed, int(used.sum()), int(expressing.sum()), soup_source, empty_droplets
        )
    # Both counts are Poisson: the genes' counts in the cells (exact Garwood bounds) and in the
    # soup's droplets (a log-normal factor on the soup share), combined conservatively.
    soup_factor = np.exp(1.96 / np.sqrt(max(share * soup.umis, 1)))
    lower = stats.chi2.ppf(0.025, 2 * observed) / 2 if observed else 0.0
    upper = stats.chi2.ppf(0.975, 2 * (observed + 1)) / 2
    return AmbientEstimate(
        observed / expected_per_rho,
        lower / expected_per_rho / soup_factor,
        upper / expected_per_rho * soup_factor,
        names,
        observed,
        int(used.sum()),
        int(expressing.sum()),
        soup_source,
        empty_droplets,
    )
