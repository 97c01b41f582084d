"""Simulate PBMC-like single-cell counts before and after recombinant IL-7, with known truth.

The simulator is what the embedded example, the test datasets and the benchmarks are made of.
It encodes the biology the workflow must recover (:mod:`.biology`) and the artefacts it
must remove (dying cells, heterotypic doublets, ambient RNA), and it can switch every treatment
effect off to make a null dataset with the same design.

Model, per sample (donor x timepoint):

- cell types at subset level (CD4 naive ... platelets) with PBMC-like proportions; after IL-7 the
  T-cell subsets expand in absolute number (naive most, Treg not at all) while every other
  population keeps its absolute number, so T cells rise from ~45 % to ~65 % of PBMC;
- expression profile per cell type = shared baseline x lineage program x subset program; named
  PBMC markers get strong folds, unnamed genes drawn from the human gene list add the breadth of
  real cell-type differences; a per donor x gene multiplier makes the donor effect;
- IL-7 effects in T cells (IL7R down; BCL2, CISH, SOCS, PIM1 ... up; cycling fraction 1 % -> 5 %)
  and an immunosuppressive shift in CD14 monocytes (suppressive/IL-10 genes up, MHC-II down);
  every donor responds with its own strength;
- nuisance that must *not* be found: a per-sample dissociation-stress and interferon level that
  is unrelated to timepoint, sex genes per donor;
- library sizes log-normal per cell type, dying cells (few UMIs, high mitochondrial share),
  heterotypic doublets (sum of two cells of different types), ambient RNA (each cell takes a few
  percent of its UMIs from the sample's soup);
- counts ~ negative binomial (Poisson-Gamma) with gene-wise dispersion.

The biology it plants is in :mod:`.biology`, the model in :mod:`.model`, the input layouts it
writes in :mod:`.writers`; ``python -m pbmc_prepost.simulation --help`` is the command line.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from pbmc_prepost.simulation import trial
from pbmc_prepost.simulation.biology import (
    CELL_CYCLE_GENES,
    COURSE_IFN_LOG2FC,
    COURSE_MONO_EFFECTS,
    EXCLUSIVE_BACKGROUND_LOG2,
    FEMALE_GENES,
    GENE_TABLE,
    HAEMOGLOBIN,
    HIDDEN_LINEAGE_GENES,
    HIDDEN_SUBSET_GENES,
    HOUSEKEEPING,
    IFN_GENES,
    IL7_NK_EFFECTS,
    IL7_T_EFFECTS,
    LIBRARY_FACTOR,
    LINEAGE,
    LINEAGE_EXCLUSIVE_GENES,
    LINEAGE_MARKERS,
    MALE_GENES,
    MONO_EFFECTS,
    NULL_EXHAUSTION_GENES,
    POST_EXPANSION,
    PRE_FRACTION,
    REFERENCE_GENES,
    RESOURCES,
    STRESS_GENES,
    SUBSET_MARKERS,
    SUBSET_PROGRAMS,
    T_SUBSETS,
)
from pbmc_prepost.simulation.soup_truth import SampleSoup, lineage_profiles, soup_only_genes


@dataclass
class SimulationParams:
    """Every knob of the simulation; defaults make the embedded example."""

    n_donors: int = 5
    cells_per_sample: int = 700
    n_genes: int = 3000
    seed: int = 20261122
    treatment_effect: bool = True
    library_median: float = 2200.0
    library_sdlog: float = 0.35
    dispersion: float = 0.25  # median NB dispersion (1/shape) of the gene-wise Gamma noise
    donor_sd: float = 0.15  # sd of the log donor x gene multiplier
    donor_response_sd: float = 0.2  # sd of the log per-donor strength of the treatment response
    dying_fraction: float = 0.04
    doublet_fraction: float = 0.05
    ambient_fraction: float = 0.03  # mean share of a cell's UMIs that comes from the soup
    mito_fraction: float = 0.04  # mitochondrial share of UMIs in a healthy cell
    cycling_pre: float = 0.01  # share of T cells in cycle before treatment
    cycling_post: float = 0.05
    timepoints: tuple[str, ...] = ("pre", "post")
    cells_sdlog: float = 0.2  # sd of the log number of cells per sample
    # Cells of named samples, e.g. {"D3_post": 40}: a sample that lost most of its cells.
    sample_sizes: dict = field(default_factory=dict)
    # Subset -> gene -> share of that subset's cells detecting the gene at library_median: overrides
    # the marker folds to give the dropout of shallow real data (biology.SHALLOW_10X_DETECTION).
    marker_detection: dict = field(default_factory=dict)
    # Trial designs (simulation.trial): donors in the placebo arm (0: one arm, no `arm` column), a
    # disease course in every donor, and the drug's and the course's strength per timepoint
    # (empty: 0 at the first timepoint, 1 after).
    n_placebo: int = 0
    disease_course: bool = False
    drug_by_timepoint: tuple[float, ...] = ()
    course_by_timepoint: tuple[float, ...] = ()
    # Processing batches: the healthy cells' median mitochondrial share per batch, donors assigned
    # in turn (empty: one batch at mito_fraction, and the sheet's `batch` column left empty).
    mito_by_batch: tuple[float, ...] = ()
    # A QC artefact: the healthy cells of one lineage at one timepoint carry `factor` times the
    # mitochondrial share, e.g. {"lineage": "CD14 mono", "timepoint": "post", "factor": 3.0}.
    mito_artefact: dict = field(default_factory=dict)
    # Empty droplets per sample (0: none): droplets that caught only soup, 5-100 UMIs drawn from the
    # sample's soup, written with the cells as a raw matrix (Cell Ranger's raw_feature_bc_matrix).
    empty_droplets: int = 0
    # Donors whose samples get the raw matrix (empty: every donor), and whether it holds only the
    # empty droplets (the embedded example, to stay small) instead of every droplet as Cell Ranger's.
    raw_donors: tuple[str, ...] = ()
    raw_empty_only: bool = False
    # Mean ambient fraction of named samples, e.g. {"D2_post": 0.08}: more soup in some samples.
    ambient_by_sample: dict = field(default_factory=dict)


@dataclass
class SimulatedData:
    """All simulated cells (one AnnData per sample) and the ground truth."""

    samples: dict[str, ad.AnnData]
    truth: dict
    # Per sample, the empty droplets (obs ``is_empty``) when ``empty_droplets`` was asked for.
    empty: dict[str, ad.AnnData] = field(default_factory=dict)


def _gene_universe(params: SimulationParams, rng: np.random.Generator) -> pd.DataFrame:
    table = pd.read_csv(GENE_TABLE, sep="\t", dtype=str)
    symbols = set(table["symbol"])
    named: list[str] = []
    for group in (LINEAGE_MARKERS, SUBSET_MARKERS):
        for markers in group.values():
            named += list(markers)
    named += CELL_CYCLE_GENES + list(IL7_T_EFFECTS) + list(MONO_EFFECTS) + STRESS_GENES
    named += IFN_GENES + NULL_EXHAUSTION_GENES + FEMALE_GENES + MALE_GENES + list(HOUSEKEEPING)
    named += ["IL7R", "PTPRC", "CD69", "FOXP3", *HAEMOGLOBIN]
    named += _curated_set_genes()
    mito = sorted(s for s in symbols if s.startswith("MT-"))
    ribo = sorted(s for s in symbols if re.fullmatch(r"RP[SL]\d+[A-Z]?\d*", s))
    named = list(dict.fromkeys(g for g in named + mito + ribo if g in symbols))
    n_fill = params.n_genes - len(named)
    if n_fill < 0:
        raise ValueError(f"n_genes must be at least {len(named)} (the named genes)")
    pool = sorted(symbols - set(named))
    fill = list(rng.choice(pool, size=n_fill, replace=False))
    genes = table.set_index("symbol").loc[named + fill].reset_index()
    genes["named"] = np.arange(len(genes)) < len(named)
    return genes


def _curated_set_genes() -> list[str]:
    """Members of the shipped curated gene sets, so every set can be scored on simulated data."""
    genes: list[str] = []
    for gmt in sorted((RESOURCES / "genesets").glob("*.gmt")) if (RESOURCES / "genesets").exists() else []:
        for line in gmt.read_text().splitlines():
            parts = line.split("\t")
            genes += [g for g in parts[2:] if g]
    return genes


def _build_profiles(genes: pd.DataFrame, params: SimulationParams, rng: np.random.Generator):
    """Return (log-expression per subset [K x G], cycling program [G], gene dispersions [G])."""
    symbols = genes["symbol"].to_numpy()
    index = {g: i for i, g in enumerate(symbols)}
    n_genes = len(symbols)
    subsets = list(LINEAGE)
    # Baseline: log-normal abundances; named markers start low so that they mark.
    base = rng.normal(0.0, 1.4, n_genes)
    scale = max(1.0, n_genes / REFERENCE_GENES)
    base[~genes["named"].to_numpy()] -= np.log(scale)  # the unnamed genes' total UMI mass stays put
    is_mito = np.char.startswith(symbols.astype(str), "MT-")
    is_ribo = np.array([bool(re.fullmatch(r"RP[SL]\d+[A-Z]?\d*", g)) for g in symbols])
    base[is_ribo] = rng.normal(3.9, 0.5, is_ribo.sum())  # ~20-30 % of UMIs, as in PBMC
    marker_genes = {g for grp in (LINEAGE_MARKERS, SUBSET_MARKERS) for m in grp.values() for g in m}
    # sorted: iterating a set of strings follows the per-process hash seed, not the simulation seed.
    for g in sorted(marker_genes | set(CELL_CYCLE_GENES) | set(FEMALE_GENES) | set(MALE_GENES)):
        if g in index:
            base[index[g]] = rng.normal(-0.7, 0.3)
    # IL7R is among the better-detected transcripts of resting T cells (about 1 UMI per cell here).
    base[index["IL7R"]] = -0.3
    # Haemoglobin: no PBMC population makes it; it arrives only with the ambient soup (lysed red cells).
    for g in HAEMOGLOBIN:
        if g in index:
            base[index[g]] = -9.0
    for g, level in HOUSEKEEPING.items():
        if g in index:
            base[index[g]] = level + rng.normal(0, 0.2)
    for g in list(IL7_T_EFFECTS) + list(MONO_EFFECTS) + STRESS_GENES + IFN_GENES:
        if g in index and g not in marker_genes:
            base[index[g]] = max(base[index[g]], rng.normal(0.8, 0.5))
    log_expr = np.tile(base, (len(subsets), 1))
    ln2 = np.log(2.0)

    fill_idx = np.flatnonzero(~is_mito & ~is_ribo & ~np.isin(symbols, list(marker_genes)))
    # Program genes come from the moderately expressed majority: in PBMC the most abundant
    # transcripts are ribosomal and housekeeping, and a lymphocyte's top-20 share stays modest.
    fill_idx = fill_idx[base[fill_idx] < np.quantile(base[fill_idx], 0.75)]
    hidden = {}
    for program in list(LINEAGE_MARKERS) + subsets + [f"own:{s}" for s in subsets if not SUBSET_PROGRAMS[s]]:
        n = round((HIDDEN_SUBSET_GENES if program in subsets else HIDDEN_LINEAGE_GENES) * scale)
        hidden[program] = rng.choice(fill_idx, size=n, replace=False)
    for k, subset in enumerate(subsets):
        for program in SUBSET_PROGRAMS[subset]:
            for g, fold in LINEAGE_MARKERS[program].items():
                if g in index:
                    log_expr[k, index[g]] = base[index[g]] + fold * ln2
            log_expr[k, hidden[program]] += rng.normal(2.0, 0.5, len(hidden[program])) * ln2
        for g, fold in SUBSET_MARKERS[subset].items():
            if g in index:
                log_expr[k, index[g]] = max(log_expr[k, index[g]], base[index[g]] + fold * ln2)
        log_expr[k, hidden[subset]] += rng.normal(1.1, 0.3, len(hidden[subset])) * ln2
        if not SUBSET_PROGRAMS[subset]:
            # pDC, plasmablasts and platelets are lineages of their own: a broad private program.
            log_expr[k, hidden[f"own:{subset}"]] += rng.normal(2.0, 0.5, len(hidden[f"own:{subset}"])) * ln2
        if subset in T_SUBSETS:
            # Lymphocytes, naive T most, are the most ribosome-rich PBMC.
            log_expr[k, is_ribo] += 0.6 if "naive" in subset else 0.3
    # Negative markers: naive/memory and CD56bright/dim differ by absence, too.
    for subset, genes_down in {
        "CD4 naive": ["S100A4", "GZMK"],
        "CD8 naive": ["GZMH", "GZMB", "NKG7", "GNLY", "CCL5", "CST7", "PRF1"],
        "NK CD56bright": ["FCGR3A", "FGFBP2"],
        "B naive": ["CD27"],
        "CD14 mono": ["FCGR3A"],
        "CD16 mono": ["CD14", "S100A12"],
    }.items():
        for g in genes_down:
            if g in index:
                log_expr[subsets.index(subset), index[g]] = base[index[g]]
    # Lineage-exclusive transcripts: near absent outside the subsets that raise them (realistic
    # soup-to-own ratios there: what an ambient estimate from "genes a population cannot make" needs).
    for g in LINEAGE_EXCLUSIVE_GENES:
        if g in index:
            column = log_expr[:, index[g]]
            floor = column.max() - EXCLUSIVE_BACKGROUND_LOG2 * ln2
            column[column <= base[index[g]]] = min(floor, base[index[g]])
    cycling = np.zeros(n_genes)
    for g in CELL_CYCLE_GENES:
        if g in index:
            cycling[index[g]] = rng.normal(4.0, 0.5) * ln2
    dispersion = params.dispersion * np.exp(rng.normal(0, 0.4, n_genes))
    dispersion[is_mito | is_ribo] *= 0.2  # abundant housekeeping transcripts vary little
    return log_expr, cycling, dispersion, is_mito


def _effects(genes: pd.DataFrame, params: SimulationParams) -> np.ndarray:
    """log2 treatment effect per subset x gene (all zero for the null simulation)."""
    index = {g: i for i, g in enumerate(genes["symbol"])}
    subsets = list(LINEAGE)
    effect = np.zeros((len(subsets), len(index)))
    if not params.treatment_effect:
        return effect
    for k, subset in enumerate(subsets):
        table = {}
        if subset in T_SUBSETS:
            table = IL7_T_EFFECTS
        elif LINEAGE[subset] == "NK":
            table = IL7_NK_EFFECTS
        elif subset == "CD14 mono":
            table = MONO_EFFECTS
        for g, fc in table.items():
            if g in index:
                effect[k, index[g]] = fc
    return effect


def _composition(
    params: SimulationParams, drug: float, course: float, rng: np.random.Generator, donor_noise: np.ndarray
) -> np.ndarray:
    weights = np.array([PRE_FRACTION[s] for s in LINEAGE])
    if params.treatment_effect:
        weights = weights * np.array([POST_EXPANSION.get(s, 1.0) for s in LINEAGE]) ** drug
    weights = weights * np.array([trial.course_expansion(s) for s in LINEAGE]) ** course
    weights = weights * donor_noise * np.exp(rng.normal(0, 0.1, len(weights)))
    return weights / weights.sum()


def _random_barcodes(n: int, rng: np.random.Generator) -> list[str]:
    seen: set[str] = set()
    out = []
    letters = np.array(list("ACGT"))
    while len(out) < n:
        bc = "".join(letters[rng.integers(0, 4, 16)]) + "-1"
        if bc not in seen:
            seen.add(bc)
            out.append(bc)
    return out


def _set_detection(
    log_expr: np.ndarray, symbols: np.ndarray, dispersion: np.ndarray, is_mito: np.ndarray, params: SimulationParams
) -> None:
    """Set the expression of the genes in ``params.marker_detection`` so that the share of a subset's
    cells with at least one UMI is the one asked for (at the median library of that subset).

    With a negative-binomial count of shape k = 1 / dispersion, P(0) = (1 + mu / k) ** -k, so a
    detection d needs mu = k ((1 - d) ** (-1 / k) - 1) UMIs per cell, i.e. a share mu / library of
    the cell's non-mitochondrial transcripts. Changed in place, per subset.
    """
    index = {g: i for i, g in enumerate(symbols)}
    subsets = list(LINEAGE)
    for subset, targets in params.marker_detection.items():
        k = subsets.index(subset)
        library = params.library_median * LIBRARY_FACTOR.get(subset, 1.0)
        weights = np.exp(log_expr[k]) * ~is_mito
        for gene, detection in targets.items():
            if gene not in index:
                continue
            g = index[gene]
            shape = 1.0 / dispersion[g]
            share = min(shape * ((1.0 - detection) ** (-1.0 / shape) - 1.0) / library, 0.5)
            others = weights.sum() - weights[g]
            weights[g] = share * others / (1.0 - share)  # the gene's share after the profile is normalized
            log_expr[k, g] = np.log(weights[g])


def simulate(params: SimulationParams | None = None) -> SimulatedData:
    """Simulate every sample of a paired pre/post design.

    Parameters
    ----------
    params
        Simulation settings; ``SimulationParams()`` gives the embedded example and
        ``SimulationParams(treatment_effect=False)`` its null twin.

    Returns
    -------
    SimulatedData
        ``samples`` maps sample id (``D1_pre`` ...) to an AnnData of raw integer counts whose
        ``obs`` holds the truth per barcode (``cell_type``, ``lineage``, ``cycling``,
        ``is_doublet``, ``is_dying``, ``ambient_fraction``); ``truth`` describes the planted
        effects.
    """
    params = params or SimulationParams()
    rng = np.random.default_rng([params.seed, 0])
    genes = _gene_universe(params, rng)
    symbols = genes["symbol"].to_numpy()
    log_expr, cycling_program, dispersion, is_mito = _build_profiles(genes, params, rng)
    _set_detection(log_expr, genes["symbol"].to_numpy(), dispersion, is_mito, params)
    effect = _effects(genes, params) * np.log(2.0)
    other_course = trial.course_genes(genes, params.seed) if params.disease_course else {}
    course_effect = trial.course_effects(genes, other_course) * np.log(2.0) if params.disease_course else 0.0
    drug_strength = trial.strengths(params.drug_by_timepoint, len(params.timepoints))
    course_strength = trial.strengths(params.course_by_timepoint, len(params.timepoints))
    arms = trial.donor_arms(params.n_donors, params.n_placebo)
    subsets = list(LINEAGE)
    n_subsets, n_genes = log_expr.shape
    index = {g: i for i, g in enumerate(symbols)}
    stress_idx = [index[g] for g in STRESS_GENES if g in index]
    ifn_idx = [index[g] for g in IFN_GENES if g in index]
    female_idx = [index[g] for g in FEMALE_GENES if g in index]
    male_idx = [index[g] for g in MALE_GENES if g in index]
    t_mask = np.array([s in T_SUBSETS for s in subsets])
    nk_mask = np.array([LINEAGE[s] == "NK" for s in subsets])
    lib_factor = np.array([LIBRARY_FACTOR.get(s, 1.0) for s in subsets])
    lineage_of = np.array([LINEAGE[s] for s in subsets])

    samples: dict[str, ad.AnnData] = {}
    empty: dict[str, ad.AnnData] = {}
    sample_rows = []
    soups: list[SampleSoup] = []
    for d in range(params.n_donors):
        donor = f"D{d + 1}"
        drng = np.random.default_rng([params.seed, 1, d])
        donor_gene = drng.normal(0, params.donor_sd, n_genes)
        donor_comp = np.exp(drng.normal(0, 0.25, n_subsets))
        response = np.exp(drng.normal(0, params.donor_response_sd))
        sex = "female" if d % 2 == 0 else "male"
        batch = f"B{d % len(params.mito_by_batch) + 1}" if params.mito_by_batch else ""
        mito_median = params.mito_by_batch[d % len(params.mito_by_batch)] if batch else params.mito_fraction
        for t, timepoint in enumerate(params.timepoints):
            sample = f"{donor}_{timepoint}"
            srng = np.random.default_rng([params.seed, 2, d, t])
            # The drug acts in the IL-7 arm only; the disease course in every donor.
            drug = drug_strength[t] * (arms[d] == trial.ARMS[0]) * params.treatment_effect
            course = course_strength[t] * params.disease_course
            n_cells = int(round(params.cells_per_sample * np.exp(srng.normal(0, params.cells_sdlog))))
            n_cells = int(params.sample_sizes.get(sample, n_cells))
            comp = _composition(params, drug, course, srng, donor_comp)
            types = srng.choice(n_subsets, size=n_cells, p=comp)
            cycling_rate = params.cycling_pre + (params.cycling_post - params.cycling_pre) * drug
            cycling_rate = {0: params.cycling_pre, 1: params.cycling_post}.get(drug, cycling_rate)
            cycling = (t_mask[types] & (srng.random(n_cells) < cycling_rate)) | (
                nk_mask[types] & (srng.random(n_cells) < params.cycling_pre)
            )
            # Sample-level nuisance: dissociation stress and interferon tone, unrelated to timepoint.
            stress = srng.normal(0, 0.35)
            ifn = srng.normal(0, 0.25)
            depth = np.exp(srng.normal(0, 0.15))

            log_mu = log_expr[types] + donor_gene
            if drug:
                log_mu += effect[types] * (response * drug)
            if course:
                log_mu += course_effect[types] * course
            log_mu[:, stress_idx] += stress
            log_mu[:, ifn_idx] += ifn
            log_mu[:, male_idx if sex == "female" else female_idx] = -8.0
            if sex == "female":
                log_mu[:, female_idx] += 3.0
            log_mu[cycling] += cycling_program
            # Mitochondrial share set directly: healthy ~mito_fraction, dying cells 20-60 %.
            log_mu[:, is_mito] = -np.inf
            profile = np.exp(log_mu)
            profile /= profile.sum(1, keepdims=True)
            dying = srng.random(n_cells) < params.dying_fraction
            mito_share = np.clip(mito_median * np.exp(srng.normal(0, 0.12, n_cells)), 0.005, 0.2)
            artefact = params.mito_artefact
            if artefact and artefact["timepoint"] == timepoint:
                mito_share[lineage_of[types] == artefact["lineage"]] *= artefact["factor"]
            mito_share[dying] = srng.uniform(0.2, 0.6, dying.sum())
            mito_weights = np.exp(drng.normal(0, 0.3, is_mito.sum()))
            mito_weights /= mito_weights.sum()
            profile *= (1 - mito_share)[:, None]
            profile[:, is_mito] = mito_share[:, None] * mito_weights
            library = np.exp(srng.normal(np.log(params.library_median * depth), params.library_sdlog, n_cells))
            library *= lib_factor[types]
            library[dying] *= srng.uniform(0.1, 0.45, dying.sum())

            # Heterotypic doublets: two cells of different lineages in one droplet (doublets of
            # one lineage look like singlets to every detector and change no conclusion).
            n_doublets = int(round(params.doublet_fraction * n_cells))
            first = srng.choice(np.flatnonzero(~dying), n_doublets, replace=False)
            second = np.array(
                [srng.choice(np.flatnonzero((lineage_of[types] != lineage_of[types[i]]) & ~dying)) for i in first],
                dtype=int,
            )
            dbl_profile = profile[first] * library[first, None] + profile[second] * library[second, None]
            dbl_library = dbl_profile.sum(1)
            dbl_profile /= dbl_library[:, None]
            profile = np.vstack([profile, dbl_profile])
            library = np.concatenate([library, dbl_library])
            n_total = n_cells + n_doublets

            # Ambient RNA: the soup is the sample's average transcriptome (monocyte-dominated).
            soup = (profile[:n_cells] * library[:n_cells, None]).sum(0)
            soup /= soup.sum()
            # Lysed red cells add haemoglobin to the soup, more in some samples than others.
            red_cell_share = srng.uniform(0.002, 0.02)
            for g, share in HAEMOGLOBIN.items():
                if g in index:
                    soup[index[g]] += red_cell_share * share
            soup /= soup.sum()
            ambient_mean = params.ambient_by_sample.get(sample, params.ambient_fraction)
            healthy = ~dying
            soups.append(
                SampleSoup(
                    donor,
                    timepoint,
                    ambient_mean,
                    soup,
                    lineage_profiles(
                        profile[:n_cells][healthy], library[:n_cells][healthy], lineage_of[types][healthy]
                    ),
                )
            )
            ambient = srng.beta(2.0, 2.0 / ambient_mean - 2.0, n_total) if ambient_mean > 0 else np.zeros(n_total)
            profile = profile * (1 - ambient)[:, None] + ambient[:, None] * soup
            mean = profile * library[:, None]
            shape = 1.0 / dispersion
            mean *= srng.gamma(shape, 1.0 / shape, size=mean.shape)
            counts = srng.poisson(mean).astype(np.float32)
            # Keep droplets that caught something (Cell Ranger's filtered matrix would).
            keep = counts.sum(1) >= 50
            order = srng.permutation(n_total)
            order = order[keep[order]]

            obs = (
                pd.DataFrame(
                    {
                        "cell_type": np.concatenate([np.array(subsets)[types], np.full(n_doublets, "doublet")]),
                        "lineage": np.concatenate(
                            [np.array([LINEAGE[s] for s in subsets])[types], np.full(n_doublets, "doublet")]
                        ),
                        "cycling": np.concatenate([cycling, np.zeros(n_doublets, bool)]),
                        "is_doublet": np.concatenate([np.zeros(n_cells, bool), np.ones(n_doublets, bool)]),
                        "doublet_types": np.concatenate(
                            [
                                np.full(n_cells, ""),
                                [f"{subsets[types[i]]}+{subsets[types[j]]}" for i, j in zip(first, second)],
                            ]
                        ),
                        "is_dying": np.concatenate([dying, np.zeros(n_doublets, bool)]),
                        "ambient_fraction": ambient,
                    }
                )
                .iloc[order]
                .reset_index(drop=True)
            )
            obs.index = _random_barcodes(len(obs), srng)
            obs.index.name = None
            var = pd.DataFrame({"gene_ids": genes["ensembl_id"].to_numpy()}, index=pd.Index(symbols))
            adata = ad.AnnData(X=sp.csr_matrix(counts[order]), obs=obs, var=var)
            samples[sample] = adata
            if params.empty_droplets and (not params.raw_donors or donor in params.raw_donors):
                empty[sample] = _empty_droplets(soup, var, params, [params.seed, 3, d, t])
            sample_rows.append(
                {
                    "sample": sample,
                    "donor": donor,
                    "timepoint": timepoint,
                    **({"arm": arms[d]} if params.n_placebo else {}),
                    **({"batch": batch} if batch else {}),
                    "sex": sex,
                    "n_barcodes": adata.n_obs,
                    "stress_log_shift": round(stress, 4),
                    "ifn_log_shift": round(ifn, 4),
                    "response_strength": round(response, 4),
                }
            )

    truth = {
        "params": {k: v for k, v in asdict(params).items()},
        "lineage_of_cell_type": LINEAGE,
        "pre_fraction": PRE_FRACTION,
        "post_absolute_expansion": POST_EXPANSION if params.treatment_effect else {},
        "de_log2fc": {
            "T cells (all T subsets)": IL7_T_EFFECTS if params.treatment_effect else {},
            "NK": IL7_NK_EFFECTS if params.treatment_effect else {},
            "CD14 mono": MONO_EFFECTS if params.treatment_effect else {},
        },
        "cycling_fraction_of_T": {
            "pre": params.cycling_pre,
            "post": params.cycling_post if params.treatment_effect else params.cycling_pre,
        },
        "null_genes": {
            "exhaustion_in_T": NULL_EXHAUSTION_GENES,
            "dissociation_stress": STRESS_GENES,
            "interferon": IFN_GENES,
        },
        "samples": sample_rows,
        # Later timepoint -> lineage -> genes whose counts there move only through the soup.
        "soup_only_genes": soup_only_genes(soups, symbols, params.timepoints[0]),
        "donor_arms": {f"D{d + 1}": arm for d, arm in enumerate(arms)},
        "timepoint_strength": {"drug": drug_strength, "course": course_strength},
        # Lineage -> gene -> log2 fold change of the disease course at full strength (every donor).
        "course_log2fc": (
            {
                lineage: {
                    **other_course,
                    **dict.fromkeys(IFN_GENES, COURSE_IFN_LOG2FC),
                    **(COURSE_MONO_EFFECTS if lineage == "CD14 mono" else {}),
                }
                for lineage in dict.fromkeys(LINEAGE.values())
            }
            if params.disease_course
            else {}
        ),
    }
    return SimulatedData(samples=samples, truth=truth, empty=empty)


def _empty_droplets(soup: np.ndarray, var: pd.DataFrame, params: SimulationParams, seed: list[int]) -> ad.AnnData:
    """Droplets without a cell: Poisson counts of the soup at 5-100 UMIs (log-uniform), from their
    own random stream, so that asking for them changes none of the cells."""
    rng = np.random.default_rng(seed)
    umis = np.exp(rng.uniform(np.log(5), np.log(100), params.empty_droplets))
    counts = sp.csr_matrix(rng.poisson(umis[:, None] * soup[None, :]).astype(np.float32))
    keep = np.asarray(counts.sum(1)).ravel() > 0
    obs = pd.DataFrame({"is_empty": np.ones(int(keep.sum()), bool)})
    obs.index = _random_barcodes(len(obs), rng)
    obs.index.name = None
    return ad.AnnData(X=counts[keep], obs=obs, var=var.copy())
