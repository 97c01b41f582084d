"""Simulate PBMC-like single-cell counts before and after recombinant IL-7, with known truth.

The simulator is what the embedded example, the test datasets and the benchmarks are made of.
It encodes the biology the workflow must recover (science brief section 4) and the artefacts it
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

Run ``python -m pbmc_prepost.simulate --help`` for the command line.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

RESOURCES = Path(__file__).resolve().parents[3] / "resources"
GENE_TABLE = RESOURCES / "simulation" / "human_genes.tsv.gz"

# Subset -> lineage (the two annotation levels of the workflow).
LINEAGE = {
    "CD4 naive": "CD4 T", "CD4 memory": "CD4 T", "Treg": "CD4 T",
    "CD8 naive": "CD8 T", "CD8 effector": "CD8 T",
    "MAIT": "other T", "gd T": "other T",
    "NK CD56bright": "NK", "NK CD56dim": "NK",
    "B naive": "B", "B memory": "B", "plasmablast": "plasma",
    "CD14 mono": "CD14 mono", "CD16 mono": "CD16 mono",
    "cDC": "DC", "pDC": "DC", "platelets": "platelets",
}
T_SUBSETS = [k for k, v in LINEAGE.items() if v in ("CD4 T", "CD8 T", "other T")]

# Share of PBMC before treatment (relative; normalised below).
PRE_FRACTION = {
    "CD4 naive": 0.12, "CD4 memory": 0.12, "Treg": 0.025, "CD8 naive": 0.06,
    "CD8 effector": 0.08, "MAIT": 0.025, "gd T": 0.02, "NK CD56bright": 0.012,
    "NK CD56dim": 0.08, "B naive": 0.06, "B memory": 0.035, "plasmablast": 0.006,
    "CD14 mono": 0.25, "CD16 mono": 0.045, "cDC": 0.015, "pDC": 0.008, "platelets": 0.02,
}
# Absolute expansion after IL-7 (science brief P1/P2): naive T most, Treg not (its share falls).
POST_EXPANSION = {
    "CD4 naive": 2.9, "CD4 memory": 2.1, "Treg": 1.0, "CD8 naive": 2.9, "CD8 effector": 2.1,
    "MAIT": 2.1, "gd T": 2.1,
}
# Library-size multiplier per cell type (monocytes are RNA-rich, platelets poor).
LIBRARY_FACTOR = {
    "CD14 mono": 1.6, "CD16 mono": 1.4, "cDC": 1.5, "pDC": 1.2, "plasmablast": 2.0,
    "platelets": 0.35,
}

# Named markers: gene -> log2 fold over the gene's background level.
LINEAGE_MARKERS = {
    "T": {"CD3E": 4, "CD3D": 4, "CD3G": 3.5, "CD2": 3, "CD247": 3, "LCK": 3, "TRAC": 4, "TRBC2": 3.5,
          "BCL11B": 3, "CD6": 3, "CD5": 2.5, "CD28": 2.5},
    "CD4": {"CD4": 3, "CD40LG": 2.5, "TRAT1": 2},
    "CD8": {"CD8A": 4, "CD8B": 4},
    "NKlike": {"NKG7": 4.5, "GNLY": 5, "PRF1": 3.5, "GZMA": 3.5, "CST7": 3, "KLRD1": 3.5, "CTSW": 3},
    "NK": {"KLRF1": 3.5, "NCAM1": 2, "SH2D1B": 3, "TYROBP": 3, "FCER1G": 3},
    "B": {"MS4A1": 4.5, "CD79A": 4.5, "CD79B": 4, "CD19": 3, "BANK1": 3, "CD22": 3, "IGHM": 4,
          "IGKC": 4, "HLA-DQA1": 2.5, "PAX5": 3},
    "myeloid": {"LYZ": 6, "CST3": 4.5, "TYROBP": 4, "FCER1G": 4, "AIF1": 4, "LST1": 4,
                "SPI1": 3, "CSF1R": 3, "HLA-DRA": 3.5, "HLA-DRB1": 3, "HLA-DPA1": 3, "HLA-DPB1": 3,
                "CD74": 3, "HLA-DMA": 2.5, "HLA-DMB": 2, "CIITA": 2, "CD86": 2, "HLA-DQB1": 2},
}
SUBSET_MARKERS = {
    "CD4 naive": {"CCR7": 3, "SELL": 2.5, "LEF1": 3, "TCF7": 2.5, "NOSIP": 2, "PRKCA": 1.5},
    "CD4 memory": {"S100A4": 3, "AQP3": 3, "ANXA1": 2.5, "KLRB1": 2.5, "GZMK": 2, "CCL5": 1.5,
                   "LGALS1": 2},
    "Treg": {"FOXP3": 4.5, "IL2RA": 3.5, "CTLA4": 3.5, "IKZF2": 3.5, "RTKN2": 3.5, "TIGIT": 3,
             "FCRL3": 3, "CCR4": 2},
    "CD8 naive": {"CCR7": 3, "SELL": 2.5, "LEF1": 3, "TCF7": 2.5, "NELL2": 3},
    "CD8 effector": {"GZMH": 4, "GZMB": 3.5, "NKG7": 4, "GNLY": 3.5, "CCL5": 4, "FGFBP2": 3.5,
                     "GZMK": 2.5, "CST7": 3, "PRF1": 3},
    "MAIT": {"SLC4A10": 4.5, "KLRB1": 4.5, "TRAV1-2": 4.5, "NCR3": 3.5, "ZBTB16": 3, "RORC": 3,
             "CCL5": 2},
    "gd T": {"TRDC": 5, "TRGC1": 4.5, "TRGC2": 4.5, "TRDV2": 4, "TRGV9": 4, "KLRC1": 2},
    "NK CD56bright": {"NCAM1": 4.5, "XCL1": 4, "XCL2": 4, "GZMK": 3.5, "SELL": 3, "KLRC1": 3.5},
    "NK CD56dim": {"FCGR3A": 4.5, "SPON2": 3.5, "FGFBP2": 4, "GZMB": 4, "GZMH": 2.5},
    "B naive": {"IGHD": 4, "TCL1A": 4, "FCER2": 3.5, "IL4R": 2.5, "YBX3": 2},
    "B memory": {"CD27": 3, "AIM2": 3, "TNFRSF13B": 3.5, "IGHG1": 4, "IGHA1": 3.5, "SSPN": 2.5},
    "plasmablast": {"JCHAIN": 6, "MZB1": 5, "XBP1": 4, "TNFRSF17": 4.5, "PRDM1": 3,
                    "IGHG1": 7, "IGHA1": 6, "CD38": 4, "IGKC": 6},
    "CD14 mono": {"CD14": 4.5, "S100A8": 6, "S100A9": 6, "VCAN": 4.5, "FCN1": 4.5, "S100A12": 4,
                  "CSF3R": 2.5, "MNDA": 3},
    "CD16 mono": {"FCGR3A": 5, "MS4A7": 4.5, "CDKN1C": 4.5, "CX3CR1": 3.5, "LILRB2": 2.5,
                  "RHOC": 3, "IFITM2": 2},
    "cDC": {"FCER1A": 5, "CD1C": 4.5, "CLEC10A": 4.5, "CLEC9A": 2, "HLA-DQA1": 3.5,
            "HLA-DQB1": 3.5},
    "pDC": {"LILRA4": 5.5, "IL3RA": 4, "CLEC4C": 5, "TCF4": 4, "IRF7": 3, "PLD4": 4.5, "GZMB": 3.5,
            "SERPINF1": 3.5},
    "platelets": {"PPBP": 7, "PF4": 7, "GP9": 5, "ITGA2B": 4.5, "TUBB1": 5, "NRGN": 4.5, "GNG11": 5,
                  "SPARC": 4},
}
SUBSET_PROGRAMS = {
    "CD4 naive": ["T", "CD4"], "CD4 memory": ["T", "CD4"], "Treg": ["T", "CD4"],
    "CD8 naive": ["T", "CD8"], "CD8 effector": ["T", "CD8", "NKlike"],
    "MAIT": ["T", "CD8"], "gd T": ["T", "NKlike"],
    "NK CD56bright": ["NKlike", "NK"], "NK CD56dim": ["NKlike", "NK"],
    "B naive": ["B", "myeloid_mhc"], "B memory": ["B", "myeloid_mhc"], "plasmablast": [],
    "CD14 mono": ["myeloid"], "CD16 mono": ["myeloid"], "cDC": ["myeloid"], "pDC": [],
    "platelets": [],
}
# B cells express MHC-II too, more weakly than myeloid cells.
LINEAGE_MARKERS["myeloid_mhc"] = {g: 2.5 for g in ("HLA-DRA", "HLA-DRB1", "HLA-DPA1", "HLA-DPB1",
                                                   "CD74", "HLA-DMA", "HLA-DMB", "CIITA")}
# IL7R (CD127) by subset, log2 fold over background: high on naive/memory T and MAIT, low on
# Treg (CD127lo), lower on effector-memory CD8 (science brief 2.9). Not an annotation marker: IL-7 lowers it.
IL7R_LEVEL = {"CD4 naive": 3.0, "CD4 memory": 3.5, "CD8 naive": 3.0, "CD8 effector": 2.5, "MAIT": 4.0,
              "gd T": 2.5, "NK CD56bright": 2.5, "Treg": 0.5}
for _subset, _fold in IL7R_LEVEL.items():
    SUBSET_MARKERS[_subset]["IL7R"] = _fold
# Unnamed genes per program / subset: the breadth of real cell-type differences.
HIDDEN_LINEAGE_GENES = 150
HIDDEN_SUBSET_GENES = 25
# Gene count the program sizes above are tuned for (the example). With more genes (real data: about
# 20k detected) the programs grow in proportion and the unnamed genes share the same UMI mass, so
# markers and programs keep their share of each cell's UMIs instead of drowning in extra genes.
REFERENCE_GENES = 3000

CELL_CYCLE_GENES = [
    "MCM2", "MCM4", "MCM5", "MCM6", "PCNA", "TYMS", "FEN1", "RRM1", "RRM2", "UNG", "GINS2", "CDC6",
    "CDC45", "DTL", "UHRF1", "HELLS", "RAD51", "CLSPN", "E2F8", "CCNE2", "SLBP", "MKI67", "TOP2A",
    "CDK1", "CCNB2", "BIRC5", "TPX2", "UBE2C", "NUSAP1", "CENPF", "CKS2", "CKS1B", "AURKA",
    "AURKB", "BUB1", "KIF11", "CDC20", "HMMR", "NUF2", "NDC80", "HMGB2", "SMC4", "CENPE", "TACC3",
    "DLGAP5", "STMN1", "TUBA1B", "H2AZ1", "CCNA2", "CCNB1",
]
# IL-7 pharmacodynamics in T cells (science brief P3, P4, P6, P7): log2 fold post vs pre.
IL7_T_EFFECTS = {
    "IL7R": -1.0, "BCL2": 0.8, "CISH": 1.2, "SOCS1": 0.7, "SOCS2": 0.9, "SOCS3": 0.6,
    "PIM1": 0.8, "PIM2": 0.5, "OSM": 0.6, "MCL1": 0.5, "BCL2L1": 0.5, "CCND2": 0.5,
    "TFRC": 0.5, "SLC2A1": 0.4, "MYC": 0.4, "CDKN1B": -0.4,
}
IL7_NK_EFFECTS = {"CISH": 0.5, "BCL2": 0.3}
# Immunosuppressive shift in CD14 monocytes: suppressive/MDSC and IL-10 response up, MHC-II down.
MONO_EFFECTS = {
    "S100A12": 0.8, "CD163": 1.0, "IL1R2": 1.0, "RETN": 0.8, "ALOX5AP": 0.7, "CYP1B1": 0.7,
    "PLAC8": 0.6, "CLU": 0.8, "ARG1": 0.9, "MMP9": 0.7, "CEBPB": 0.5, "STAT3": 0.5, "IL10": 1.0,
    "CD274": 0.6, "VCAN": 0.4, "SOCS3": 0.8, "BCL3": 0.7, "ETV3": 0.6, "SBNO2": 0.7, "NFIL3": 0.7,
    "HMOX1": 0.8, "IL4R": 0.6, "FCGR1A": 0.7, "IL10RA": 0.4,
    "HLA-DRA": -0.8, "HLA-DRB1": -0.8, "HLA-DRB5": -0.7, "HLA-DPA1": -0.8, "HLA-DPB1": -0.8,
    "HLA-DQA1": -0.7, "HLA-DQB1": -0.7, "HLA-DMA": -0.6, "HLA-DMB": -0.6, "CD74": -0.7,
    "CIITA": -0.5, "CD86": -0.5,
}
# Genes that must show no treatment effect (nuisance varies per sample, not per timepoint).
STRESS_GENES = ["FOS", "FOSB", "JUN", "JUNB", "JUND", "EGR1", "ATF3", "IER2", "IER3", "DUSP1",
                "HSPA1A", "HSPA1B", "HSPA8", "HSPB1", "HSP90AA1", "DNAJB1", "NR4A1", "ZFP36",
                "KLF6", "PPP1R15A"]
IFN_GENES = ["IFI27", "IFI44L", "IFIT1", "ISG15", "RSAD2", "IFI44", "IFI6", "IFIT2", "IFIT3", "MX1",
             "MX2", "OAS1", "OAS2", "OAS3", "OASL", "HERC5", "EPSTI1", "XAF1", "STAT1", "IRF7",
             "USP18", "LY6E", "BST2", "IFITM3"]
NULL_EXHAUSTION_GENES = ["PDCD1", "HAVCR2", "LAG3", "TIGIT", "BTLA", "CD160", "CD244", "CD96",
                         "ENTPD1", "TOX", "TOX2", "NR4A2", "NR4A3", "EOMES", "BATF", "IRF4",
                         "CXCL13", "LAYN"]
HAEMOGLOBIN = {"HBB": 0.7, "HBA2": 0.2, "HBA1": 0.1}  # share of the haemoglobin soup
FEMALE_GENES = ["XIST"]
MALE_GENES = ["RPS4Y1", "DDX3Y", "UTY", "KDM5D", "EIF1AY"]
HOUSEKEEPING = {"MALAT1": 5, "B2M": 5.5, "TMSB4X": 5.5, "ACTB": 4.5, "GAPDH": 3.5, "FTL": 4,
                "FTH1": 4, "EEF1A1": 5, "TPT1": 4.5, "MYL6": 3.5, "PTMA": 3.5, "HLA-A": 3.5,
                "HLA-B": 3.5, "HLA-C": 3.5, "HLA-E": 3, "TMSB10": 4.5, "UBC": 3, "NEAT1": 3}


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
    timepoints: tuple[str, str] = ("pre", "post")
    extra: dict = field(default_factory=dict)


@dataclass
class SimulatedData:
    """All simulated cells (one AnnData per sample) and the ground truth."""

    samples: dict[str, ad.AnnData]
    truth: dict


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
    for subset, genes_down in {"CD4 naive": ["S100A4", "GZMK"], "CD8 naive": ["GZMH", "GZMB", "NKG7", "GNLY", "CCL5", "CST7", "PRF1"],
                               "NK CD56bright": ["FCGR3A", "FGFBP2"], "B naive": ["CD27"],
                               "CD14 mono": ["FCGR3A"], "CD16 mono": ["CD14", "S100A12"]}.items():
        for g in genes_down:
            if g in index:
                log_expr[subsets.index(subset), index[g]] = base[index[g]]
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


def _composition(params: SimulationParams, treated: bool, rng: np.random.Generator,
                 donor_noise: np.ndarray) -> np.ndarray:
    weights = np.array([PRE_FRACTION[s] for s in LINEAGE])
    if treated and params.treatment_effect:
        weights = weights * np.array([POST_EXPANSION.get(s, 1.0) for s in LINEAGE])
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
    effect = _effects(genes, params) * np.log(2.0)
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
    sample_rows = []
    for d in range(params.n_donors):
        donor = f"D{d + 1}"
        drng = np.random.default_rng([params.seed, 1, d])
        donor_gene = drng.normal(0, params.donor_sd, n_genes)
        donor_comp = np.exp(drng.normal(0, 0.25, n_subsets))
        response = np.exp(drng.normal(0, params.donor_response_sd))
        sex = "female" if d % 2 == 0 else "male"
        for t, timepoint in enumerate(params.timepoints):
            sample = f"{donor}_{timepoint}"
            srng = np.random.default_rng([params.seed, 2, d, t])
            treated = t == 1
            n_cells = int(round(params.cells_per_sample * np.exp(srng.normal(0, 0.2))))
            comp = _composition(params, treated, srng, donor_comp)
            types = srng.choice(n_subsets, size=n_cells, p=comp)
            cycling_rate = params.cycling_post if (treated and params.treatment_effect) else params.cycling_pre
            cycling = (t_mask[types] & (srng.random(n_cells) < cycling_rate)) | (
                nk_mask[types] & (srng.random(n_cells) < params.cycling_pre))
            # Sample-level nuisance: dissociation stress and interferon tone, unrelated to timepoint.
            stress = srng.normal(0, 0.35)
            ifn = srng.normal(0, 0.25)
            depth = np.exp(srng.normal(0, 0.15))

            log_mu = log_expr[types] + donor_gene
            if treated:
                log_mu += effect[types] * response
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
            mito_share = np.clip(params.mito_fraction * np.exp(srng.normal(0, 0.12, n_cells)), 0.005, 0.2)
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
            second = np.array([srng.choice(np.flatnonzero((lineage_of[types] != lineage_of[types[i]]) & ~dying))
                               for i in first], dtype=int)
            dbl_profile = (profile[first] * library[first, None] + profile[second] * library[second, None])
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
            ambient = srng.beta(2.0, 2.0 / params.ambient_fraction - 2.0, n_total) if params.ambient_fraction > 0 else np.zeros(n_total)
            profile = profile * (1 - ambient)[:, None] + ambient[:, None] * soup
            mean = profile * library[:, None]
            shape = 1.0 / dispersion
            mean *= srng.gamma(shape, 1.0 / shape, size=mean.shape)
            counts = srng.poisson(mean).astype(np.float32)
            # Keep droplets that caught something (Cell Ranger's filtered matrix would).
            keep = counts.sum(1) >= 50
            order = srng.permutation(n_total)
            order = order[keep[order]]

            obs = pd.DataFrame({
                "cell_type": np.concatenate([np.array(subsets)[types], np.full(n_doublets, "doublet")]),
                "lineage": np.concatenate([np.array([LINEAGE[s] for s in subsets])[types], np.full(n_doublets, "doublet")]),
                "cycling": np.concatenate([cycling, np.zeros(n_doublets, bool)]),
                "is_doublet": np.concatenate([np.zeros(n_cells, bool), np.ones(n_doublets, bool)]),
                "doublet_types": np.concatenate([np.full(n_cells, ""), [f"{subsets[types[i]]}+{subsets[types[j]]}" for i, j in zip(first, second)]]),
                "is_dying": np.concatenate([dying, np.zeros(n_doublets, bool)]),
                "ambient_fraction": ambient,
            }).iloc[order].reset_index(drop=True)
            obs.index = _random_barcodes(len(obs), srng)
            obs.index.name = None
            var = pd.DataFrame({"gene_ids": genes["ensembl_id"].to_numpy()}, index=pd.Index(symbols))
            adata = ad.AnnData(X=sp.csr_matrix(counts[order]), obs=obs, var=var)
            samples[sample] = adata
            sample_rows.append({"sample": sample, "donor": donor, "timepoint": timepoint, "sex": sex,
                                "n_barcodes": adata.n_obs, "stress_log_shift": round(stress, 4),
                                "ifn_log_shift": round(ifn, 4), "response_strength": round(response, 4)})

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
        "cycling_fraction_of_T": {"pre": params.cycling_pre,
                                  "post": params.cycling_post if params.treatment_effect else params.cycling_pre},
        "null_genes": {"exhaustion_in_T": NULL_EXHAUSTION_GENES, "dissociation_stress": STRESS_GENES,
                       "interferon": IFN_GENES},
        "samples": sample_rows,
    }
    return SimulatedData(samples=samples, truth=truth)


# Input layouts the writer cycles through for a "mixed" dataset, so every reader is exercised; the
# last sample is written as a processed h5ad (Ensembl ids, normalized X, raw counts in a layer).
MIXED_LAYOUTS = ["10x_h5", "cellranger_folder", "h5ad", "geo_triplet"]
PROCESSED_LAYOUT = "h5ad_ensembl_layer"


def write_sample(adata: ad.AnnData, outdir: Path, sample: str, layout: str) -> tuple[Path, str, str]:
    """Write one sample's counts (no truth columns) in the given input layout.

    Returns
    -------
    tuple
        (path for the sample sheet, format name, counts layer or "").
    """
    from pbmc_prepost import io as count_io

    counts = ad.AnnData(X=adata.X.copy(), obs=pd.DataFrame(index=adata.obs_names.copy()), var=adata.var.copy())
    if layout == "cellranger_folder":
        folder = outdir / sample / "filtered_feature_bc_matrix"
        count_io.write_10x_mtx(counts, folder)
        return folder, "10x_mtx", ""
    if layout == "geo_triplet":
        folder = outdir / sample
        count_io.write_10x_mtx(counts, folder, prefix=f"{sample}_")
        return folder / f"{sample}_matrix.mtx.gz", "10x_mtx", ""
    if layout == "10x_h5":
        path = outdir / f"{sample}_filtered_feature_bc_matrix.h5"
        count_io.write_10x_h5(counts, path)
        return path, "10x_h5", ""
    if layout == "h5ad":
        path = outdir / f"{sample}.h5ad"
        counts.write_h5ad(path, compression="gzip", compression_opts=9)
        return path, "h5ad", ""
    if layout == "h5ad_ensembl_layer":
        # Ensembl ids as var_names with a symbol column, raw counts in a layer, normalized X:
        # what a collaborator's processed object often looks like.
        path = outdir / f"{sample}.h5ad"
        obj = counts.copy()
        obj.var["gene_symbols"] = obj.var_names.astype(str)
        obj.var_names = obj.var["gene_ids"].astype(str).to_numpy()
        obj.layers["counts"] = obj.X.copy()
        lib = np.asarray(obj.X.sum(1)).ravel()
        obj.X = sp.csr_matrix(obj.X.multiply(1e4 / np.maximum(lib, 1)[:, None]).log1p().astype(np.float32))
        obj.write_h5ad(path, compression="gzip", compression_opts=9)
        return path, "h5ad", "counts"
    raise ValueError(f"unknown layout {layout!r}; choose from {[*MIXED_LAYOUTS, PROCESSED_LAYOUT]}")


def write_dataset(data: SimulatedData, outdir: str | Path, sheet: str | Path,
                  layout: str = "mixed", relative_to: str | Path | None = None) -> pd.DataFrame:
    """Write a simulated dataset: per-sample count files, a sample sheet and the truth.

    Parameters
    ----------
    data
        Output of :func:`simulate`.
    outdir
        Folder for the count files and ``truth/`` (cells.tsv.gz, truth.json).
    sheet
        Where to write the sample sheet (TSV).
    layout
        ``"mixed"`` cycles through :data:`MIXED_LAYOUTS`; any single layout name uses it for all.
    relative_to
        Write sheet paths relative to this folder (the folder snakemake runs in); absolute if None.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rows = []
    truth_frames = []
    for i, (sample, adata) in enumerate(data.samples.items()):
        this_layout = layout
        if layout == "mixed":
            last = i == len(data.samples) - 1
            this_layout = PROCESSED_LAYOUT if last else MIXED_LAYOUTS[i % len(MIXED_LAYOUTS)]
        path, fmt, layer = write_sample(adata, outdir, sample, this_layout)
        path = Path(path).resolve()
        if relative_to is not None:
            path = Path(path).relative_to(Path(relative_to).resolve())
        donor, timepoint = sample.rsplit("_", 1)
        rows.append({"sample": sample, "donor": donor, "timepoint": timepoint, "batch": "",
                     "path": str(path), "format": fmt, "counts_layer": layer})
        frame = adata.obs.copy()
        frame.insert(0, "barcode", adata.obs_names)
        frame.insert(0, "sample", sample)
        truth_frames.append(frame)
    table = pd.DataFrame(rows)
    Path(sheet).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(sheet, sep="\t", index=False)
    truth_dir = outdir / "truth"
    truth_dir.mkdir(exist_ok=True)
    cells = pd.concat(truth_frames, ignore_index=True)
    # mtime=0 keeps the gzip bytes identical across runs.
    with gzip.GzipFile(truth_dir / "cells.tsv.gz", "wb", mtime=0) as fh:
        fh.write(cells.to_csv(sep="\t", index=False, float_format="%.4f").encode())
    (truth_dir / "truth.json").write_text(json.dumps(data.truth, indent=1, default=str) + "\n")
    return table


PRESETS = {
    "example": SimulationParams(),
    "null": SimulationParams(treatment_effect=False),
    "small": SimulationParams(n_donors=4, cells_per_sample=700, n_genes=2000),
    "tiny": SimulationParams(n_donors=2, cells_per_sample=250, n_genes=1200),
}


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m pbmc_prepost.simulate --preset example --outdir resources/example``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="example")
    parser.add_argument("--outdir", required=True, help="folder for count files and truth/")
    parser.add_argument("--sheet", help="sample sheet to write (default: OUTDIR/samples.tsv)")
    parser.add_argument("--layout", default="mixed", choices=["mixed", *MIXED_LAYOUTS, PROCESSED_LAYOUT])
    parser.add_argument("--relative-to", help="write sheet paths relative to this folder")
    parser.add_argument("--n-donors", type=int)
    parser.add_argument("--cells-per-sample", type=int)
    parser.add_argument("--n-genes", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--library-median", type=float, help="median UMIs per healthy cell")
    parser.add_argument("--null", action="store_true", help="no treatment effect")
    args = parser.parse_args(argv)
    params = PRESETS[args.preset]
    overrides = {k: v for k, v in {"n_donors": args.n_donors, "cells_per_sample": args.cells_per_sample,
                                   "n_genes": args.n_genes, "seed": args.seed,
                                   "library_median": args.library_median}.items() if v is not None}
    if args.null:
        overrides["treatment_effect"] = False
    params = SimulationParams(**{**asdict(params), **overrides})
    data = simulate(params)
    sheet = args.sheet or str(Path(args.outdir) / "samples.tsv")
    table = write_dataset(data, args.outdir, sheet, layout=args.layout, relative_to=args.relative_to)
    n_cells = sum(a.n_obs for a in data.samples.values())
    print(f"wrote {len(table)} samples, {n_cells} barcodes to {args.outdir}; sheet {sheet}")


if __name__ == "__main__":
    main()
