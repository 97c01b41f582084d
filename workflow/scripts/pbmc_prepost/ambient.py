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
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

if TYPE_CHECKING:
    from pbmc_prepost.design import Contrast, Study
    from pbmc_prepost.settings import AmbientSettings

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


def poisson_interval(observed: float, expected_per_rho: float) -> tuple[float, float]:
    """Exact (Garwood) 95 % bounds of a Poisson count, per unit of ``expected_per_rho``."""
    lower = stats.chi2.ppf(0.025, 2 * observed) / 2 if observed else 0.0
    upper = stats.chi2.ppf(0.975, 2 * (observed + 1)) / 2
    return lower / expected_per_rho, upper / expected_per_rho


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
        ``rho`` with a 95 % interval: exact Poisson bounds of the genes' counts in the cells,
        widened by the Poisson error of their counts in the soup's droplets; ``rho`` is NaN when
        the genes are absent from the soup (nothing to measure it by).
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
    lower, upper = poisson_interval(observed, expected_per_rho)
    return AmbientEstimate(
        observed / expected_per_rho,
        lower / soup_factor,
        upper * soup_factor,
        names,
        observed,
        int(used.sum()),
        int(expressing.sum()),
        soup_source,
        empty_droplets,
    )


#: Columns of a sample's soup profile (``results/qc/<sample>.soup.tsv.gz``).
SOUP_COLUMNS = ["gene", "soup_share"]
#: Columns of ``results/qc/ambient.tsv`` (per sample), after the study's metadata columns.
AMBIENT_COLUMNS = [
    "sample",
    "method",
    "contamination",
    "contamination_low",
    "contamination_high",
    "genes",
    "gene_counts",
    "cells_used",
    "cells_expressing",
    "empty_droplets",
    "note",
]


def sample_ambient(
    cells: ad.AnnData,
    raw: ad.AnnData | None,
    called: pd.Index,
    sample: str,
    settings: AmbientSettings,
    corrected_by: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One sample's row of ``results/qc/ambient.tsv``, and its soup (``gene``, ``soup_share``;
    empty when not estimated).

    Parameters
    ----------
    cells
        The sample's cells that passed QC, raw counts in ``X``.
    raw
        Its raw droplet matrix (every barcode), or None when the sheet gives none: then (and for
        method ``cells``) the soup is the cells' pooled profile and the row's contamination is
        left for :func:`pbmc_prepost.ambient_cells.complete_ambient`.
    called
        Barcodes of the filtered matrix (the cell calls: not empty droplets, whatever their size).
    sample
        The sample id.
    settings
        Method, marker genes and the empty droplets' UMI bound (config ``ambient``).
    corrected_by
        The tool that already removed the soup from the counts (``"CellBender"`` for its output),
        or None. Such a sample is neither estimated nor corrected again: method
        ``corrected_upstream``, and its note names the tool.
    """
    row = dict.fromkeys(AMBIENT_COLUMNS, np.nan) | {"sample": sample, "genes": "", "note": ""}
    if corrected_by:
        note = f"counts already corrected for ambient RNA by {corrected_by}: not estimated or corrected again"
        return pd.DataFrame([row | {"method": "corrected_upstream", "note": note}])[AMBIENT_COLUMNS], pd.DataFrame(
            columns=SOUP_COLUMNS
        )
    if settings.method == "none":
        return pd.DataFrame([row | {"method": "none", "note": "ambient.method none"}])[AMBIENT_COLUMNS], pd.DataFrame(
            columns=SOUP_COLUMNS
        )
    if raw is None or settings.method == "cells":
        # No empty droplets: the soup is the cells' pooled profile, its share is estimated once
        # cells are annotated (pbmc_prepost.ambient_cells).
        from pbmc_prepost.ambient_cells import pooled_profile

        profile = pooled_profile(cells.X, cells.var_names.to_numpy(), settings.marker_pattern)
        note = "soup from the sample's cells (no raw_path): contamination estimated from the annotated populations"
        return pd.DataFrame([row | {"method": "cells", "note": note}])[AMBIENT_COLUMNS], pd.DataFrame(
            {"gene": cells.var_names.astype(str), "soup_share": profile}
        )
    genes = raw.var_names.intersection(cells.var_names)
    soup = soup_from_droplets(raw[:, genes].X, raw.obs_names.isin(called), settings.empty_max_umis)
    found = contamination_fraction(cells[:, genes].X, genes.to_numpy(), soup, settings.marker_pattern)
    note = "" if np.isfinite(found.rho) else f"no gene matching {settings.marker_pattern} in the soup"
    if found.cells_expressing:
        note = f"{found.cells_expressing} droplets carrying the genes themselves (red cells?) left out"
    log.info(
        "%s: contamination %.2f %% (95 %% interval %.2f-%.2f) from %s (%d counts), soup of %d empty droplets",
        sample,
        100 * found.rho,
        100 * found.lower,
        100 * found.upper,
        ", ".join(found.genes),
        found.soup_counts,
        found.empty_droplets,
    )
    profile = pd.DataFrame({"gene": genes.astype(str), "soup_share": soup.profile})
    return pd.DataFrame(
        [
            {
                "sample": sample,
                "method": found.soup_source,
                "contamination": found.rho,
                "contamination_low": found.lower,
                "contamination_high": found.upper,
                "genes": ",".join(found.genes),
                "gene_counts": found.soup_counts,
                "cells_used": found.cells_used,
                "cells_expressing": found.cells_expressing,
                "empty_droplets": found.empty_droplets,
                "note": note,
            }
        ]
    )[AMBIENT_COLUMNS], profile


def combine_ambient(paths: list[str], study: Study) -> pd.DataFrame:
    """``results/qc/ambient.tsv``: every sample's row, with the study's metadata after ``sample``
    (a change of contamination between timepoints is itself worth seeing)."""
    from pbmc_prepost.tables import read_tsv

    table = pd.concat([read_tsv(path, keep_default_na=False, na_values={c: [""] for c in NUMERIC}) for path in paths])
    table = table.reset_index(drop=True)
    meta = study.sample_meta()
    for column in reversed(study.meta_columns):
        table.insert(1, column, table["sample"].map(meta[column]))
    estimated = table[table["contamination"].notna()]
    if len(estimated):
        by_level = estimated.groupby(study.contrast.column)["contamination"].median()
        log.info("median contamination by %s: %s", study.contrast.column, (100 * by_level).round(2).to_dict())
    return table


#: Numeric columns of the ambient table (NaN where not estimated).
NUMERIC = [
    "contamination",
    "contamination_low",
    "contamination_high",
    "gene_counts",
    "cells_used",
    "cells_expressing",
    "empty_droplets",
]


def read_soups(paths: list[str]) -> dict[str, pd.Series]:
    """Sample -> soup share per gene, from ``results/qc/<sample>.soup.tsv.gz`` (samples without an
    estimate wrote an empty table and are left out)."""
    from pbmc_prepost.tables import read_tsv

    soups = {}
    for path in paths:
        soup = read_tsv(path)
        if len(soup):
            soups[Path(path).name.removesuffix(".soup.tsv.gz")] = soup.set_index("gene")["soup_share"]
    return soups


def soups_table(soups: dict[str, pd.Series]) -> pd.DataFrame:
    """``results/qc/soups.tsv.gz``: one column per sample with a soup (the share of each gene; 0
    where a sample did not measure the gene), genes in the first sample's order."""
    if not soups:
        return pd.DataFrame(columns=["gene"])
    wide = pd.concat(soups, axis=1, sort=False).fillna(0.0)
    wide.index.name = "gene"
    return wide.reset_index()


def read_soups_table(path: str | Path) -> dict[str, pd.Series]:
    """Sample -> soup share per gene, from :func:`soups_table`'s file."""
    from pbmc_prepost.tables import read_tsv

    wide = read_tsv(path, keep_default_na=False).set_index("gene")
    return {str(sample): wide[sample] for sample in wide.columns}


def expected_soup_counts(pb: ad.AnnData, contamination: pd.Series, soups: dict[str, pd.Series]) -> np.ndarray:
    """The soup's expected share of each pseudobulk's counts: its sample's contamination x the
    soup's share of the gene x the pseudobulk's UMIs (SoupX's model summed over the population's
    cells). Zero where the sample has no estimate.

    Parameters
    ----------
    pb
        Pseudobulks (obs ``sample``, ``total_counts``; var the genes).
    contamination
        Sample -> contamination fraction (NaN: not estimated).
    soups
        Sample -> soup share per gene (``results/qc/<sample>.soup.tsv.gz``).
    """
    expected = np.zeros(pb.shape, dtype=np.float64)
    genes = pb.var_names.astype(str)
    for i, (sample, total) in enumerate(zip(pb.obs["sample"].astype(str), pb.obs["total_counts"], strict=True)):
        rho = contamination.get(sample, np.nan)
        if sample in soups and np.isfinite(rho):
            expected[i] = rho * float(total) * soups[sample].reindex(genes).fillna(0.0).to_numpy()
    return expected


def subtract_soup(pb: ad.AnnData) -> None:
    """Remove the soup's expected counts (``layers["ambient"]``) from the pseudobulks, in place:
    ``X`` becomes the rounded difference floored at zero, and the counts as summed stay in
    ``layers["uncorrected"]`` (the DE fits ``X``; its ambient columns compare with the uncorrected)."""
    observed = np.asarray(pb.X, dtype=np.float64)
    pb.layers["uncorrected"] = observed.copy()
    pb.X = np.maximum(np.rint(observed - np.asarray(pb.layers["ambient"], dtype=np.float64)), 0.0)
    removed = 1 - pb.X.sum() / max(observed.sum(), 1)
    log.info("soup subtracted from the pseudobulks: %.2f %% of their counts", 100 * removed)


#: A DE gene is flagged when the soup makes up at least this share of the population's counts of
#: it, or explains at least this share of its change (a majority: not tuned to any cohort).
FLAG_SHARE = 0.5


def ambient_columns(table: pd.DataFrame, pb: ad.AnnData, contrast: Contrast) -> pd.DataFrame:
    """``ambient_share``, ``ambient_change_share`` and ``ambient_flag`` of a population's DE table.

    ``ambient_share``: the soup's expected counts of the gene over its observed counts, summed over
    the contrast's pseudobulks. ``ambient_change_share``: the change the soup's expected counts
    per million predict over the observed change, when both go the same way (for a difference of
    changes, the difference of the arms' changes). ``ambient_flag``: either is at least
    :data:`FLAG_SHARE`. NaN and False where no sample of the contrast has an estimate.
    """
    out = table.copy()
    out["ambient_share"] = np.nan
    out["ambient_change_share"] = np.nan
    out["ambient_flag"] = False
    if table.empty or "ambient" not in pb.layers:
        return out
    pb = pb[contrast.sample_mask(pb.obs)]
    soup_all = np.asarray(pb.layers["ambient"], dtype=np.float64)
    if not soup_all.any():
        return out
    genes = out["gene"].astype(str).to_numpy()
    columns = pb.var_names.get_indexer(genes)
    counts = pb.layers["uncorrected"] if "uncorrected" in pb.layers else pb.X
    observed = np.asarray(counts, dtype=np.float64)[:, columns]
    soup = soup_all[:, columns]
    total = pb.obs["total_counts"].to_numpy(dtype=np.float64)[:, None]
    level = pb.obs[contrast.column].astype(str).to_numpy()
    arm = pb.obs[contrast.arm_column].astype(str).to_numpy() if contrast.arm_column else None

    def change(values: np.ndarray, in_arm: np.ndarray) -> np.ndarray:
        cpm = 1e6 * values / np.maximum(total, 1)
        return cpm[(level == contrast.treated) & in_arm].mean(0) - cpm[(level == contrast.reference) & in_arm].mean(0)

    def contrast_change(values: np.ndarray) -> np.ndarray:
        everyone = np.ones(len(level), bool)
        if contrast.is_interaction:
            return change(values, arm == contrast.arm) - change(values, arm == contrast.versus_arm)
        return change(values, arm == contrast.arm if contrast.arm else everyone)

    observed_change, soup_change = contrast_change(observed), contrast_change(soup)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = soup.sum(0) / observed.sum(0)
        change_share = np.where(
            (np.sign(observed_change) == np.sign(soup_change)) & (observed_change != 0),
            np.abs(soup_change) / np.abs(observed_change),
            0.0,
        )
    out["ambient_share"] = np.clip(np.nan_to_num(share, nan=0.0), 0, 1)
    out["ambient_change_share"] = np.clip(np.nan_to_num(change_share, nan=0.0), 0, 1)
    out["ambient_flag"] = (out["ambient_share"] >= FLAG_SHARE) | (out["ambient_change_share"] >= FLAG_SHARE)
    return out


def ambient_note(genes: str, flagged: set[str]) -> str:
    """A note when most of a row's genes (``;``-separated: the leading edge, or the ORA overlap)
    are explained by the ambient RNA (the DE tables' ``ambient_flag``)."""
    members = [g for g in str(genes).split(";") if g and g != "nan"]
    hits = [g for g in members if g in flagged]
    if not members or 2 * len(hits) <= len(members):
        return ""
    return (
        f"{len(hits)} of {len(members)} genes explained by ambient RNA ({', '.join(hits[:5])}"
        f"{' ...' if len(hits) > 5 else ''}): not a confirmed call"
    )
