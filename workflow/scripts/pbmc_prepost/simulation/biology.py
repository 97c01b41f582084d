"""The biology the simulator plants: PBMC subsets, their markers, and the effects of IL-7.

Sources of the expected effects: the IL-7 trials and the PBMC marker literature summarised in the
README's Methods (Sportes et al. 2008; Perales et al. 2012; Lee et al. 2022; Ghazawi et al. 2016;
Hao et al. 2021; Zheng et al. 2017).
"""

from __future__ import annotations

from pathlib import Path

RESOURCES = Path(__file__).resolve().parents[4] / "resources"
GENE_TABLE = RESOURCES / "simulation" / "human_genes.tsv.gz"
# Hand-aligned data tables: the formatter leaves them as written.
# fmt: off
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
# Absolute expansion after IL-7 (Francois et al. 2018; Sportes et al. 2008; Perales et al. 2012):
# naive T most, Treg not (its share falls).
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
# Treg (CD127lo), lower on effector-memory CD8 (Hao et al. 2021). Not an annotation marker: IL-7 lowers it.
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
# IL-7 pharmacodynamics in T cells (IL7R down: Park et al. 2004; BCL2 up: Sportes et al. 2008; CISH and
# SOCS up: Ghazawi et al. 2016; p27/CDKN1B down): log2 fold post vs pre.
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
# The disease course, without any drug: both arms of a placebo-controlled trial (sepsis: monocyte
# HLA-DR recovers as the patient does, Monneret et al. 2006, Venet et al. 2020; interferon tone
# fades; lymphocytes rise a little, Francois et al. 2018). MHC-II recovery is as strong as IL-7's
# MHC-II loss, so within the IL-7 arm the two cancel and only a control arm shows the loss.
COURSE_MONO_EFFECTS = {g: -fc for g, fc in MONO_EFFECTS.items() if g.startswith(("HLA-D", "CD74", "CIITA"))}
COURSE_IFN_LOG2FC = -0.8            # every interferon gene, every population
COURSE_T_EXPANSION = 1.3            # absolute, every T subset
COURSE_N_OTHER_GENES = 30           # other genes moving in every population ...
COURSE_OTHER_LOG2FC = 0.7           # ... by this much, up or down
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
# Transcripts one lineage makes and the others essentially do not: in sorted-cell RNA-seq (Monaco
# et al. 2019; Schmiedel et al. 2018, DICE) T cells hold about a thousandth of monocytes' LYZ and
# S100A8/9, monocytes and B cells about a thousandth of T cells' CD3 and TCR chains, non-B cells of
# immunoglobulin, lymphocytes of PPBP/PF4. Outside the lineages whose programs raise them, these
# genes sit this many log2 units below their highest subset (other markers keep their background).
LINEAGE_EXCLUSIVE_GENES = ["LYZ", "S100A8", "S100A9", "CD3E", "CD3D", "CD3G", "TRAC", "TRBC2",
                           "IGKC", "IGHM", "JCHAIN", "CD79A", "MS4A1", "PPBP", "PF4"]
EXCLUSIVE_BACKGROUND_LOG2 = 10.0
FEMALE_GENES = ["XIST"]
MALE_GENES = ["RPS4Y1", "DDX3Y", "UTY", "KDM5D", "EIF1AY"]
HOUSEKEEPING = {"MALAT1": 5, "B2M": 5.5, "TMSB4X": 5.5, "ACTB": 4.5, "GAPDH": 3.5, "FTL": 4,
                "FTH1": 4, "EEF1A1": 5, "TPT1": 4.5, "MYL6": 3.5, "PTMA": 3.5, "HLA-A": 3.5,
                "HLA-B": 3.5, "HLA-C": 3.5, "HLA-E": 3, "TMSB10": 4.5, "UBC": 3, "NEAT1": 3}
# fmt: on
def _for(subsets: list[str], detection: dict[str, float]) -> dict[str, dict[str, float]]:
    return {subset: dict(detection) for subset in subsets}


def _merge(*tables: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    merged: dict[str, dict[str, float]] = {}
    for table in tables:
        for subset, detection in table.items():
            merged.setdefault(subset, {}).update(detection)
    return merged


# Marker dropout of shallow 10x PBMC (about 1,300 UMIs per cell): the share of a subset's cells with
# at least one UMI of the gene. The values for CD4, CD3E, CD8A, CD8B, GNLY, NKG7, KLRF1, FCGR3A, MS4A1,
# CD14 and PPBP were measured on a public 10x PBMC cohort of 16 samples against its authors' labels
# (CD4 in 1 % of CD4 T cells; CD8A in 42 % of CD8 T and 7 % of CD4 T cells; GNLY in 57 % of CD8 T and
# 94 % of NK cells ...); the others are set to what such data typically show, and are not measured.
_CD4 = ["CD4 naive", "CD4 memory", "Treg"]
_CD8 = ["CD8 naive", "CD8 effector"]
_NK = ["NK CD56bright", "NK CD56dim"]
SHALLOW_10X_DETECTION = _merge(
    _for(
        T_SUBSETS,
        {
            "CD3E": 0.33,
            "CD3D": 0.45,
            "CD3G": 0.2,
            "TRAC": 0.35,
            "TRBC2": 0.45,
            "TRBC1": 0.25,
            "CD2": 0.3,
            "CD247": 0.2,
            "LCK": 0.3,
            "BCL11B": 0.15,
            "CD5": 0.12,
            "CD6": 0.12,
            "CD28": 0.1,
        },
    ),
    _for(_CD4, {"CD4": 0.01, "CD8A": 0.07, "CD8B": 0.09, "CD40LG": 0.1, "TRAT1": 0.1, "LDHB": 0.6}),
    {"CD4 naive": {"LTB": 0.8, "MAL": 0.4, "TCF7": 0.35}, "CD4 memory": {"LTB": 0.7, "MAL": 0.2}},
    _for(_CD8, {"CD8A": 0.42, "CD8B": 0.30, "CD4": 0.002}),
    {"CD8 naive": {"GNLY": 0.25, "NKG7": 0.6}, "CD8 effector": {"GNLY": 0.85, "NKG7": 0.93}},
    _for(
        _NK,
        {
            "GNLY": 0.94,
            "NKG7": 0.94,
            "KLRF1": 0.11,
            "KLRD1": 0.6,
            "PRF1": 0.5,
            "SPON2": 0.3,
            "FCER1G": 0.6,
            "TYROBP": 0.8,
            "CST7": 0.5,
            "GZMA": 0.5,
            "CTSW": 0.5,
            "NCAM1": 0.1,
            "SH2D1B": 0.1,
            "CD3E": 0.02,
            "CD3D": 0.03,
            "TRAC": 0.02,
        },
    ),
    {"NK CD56dim": {"FCGR3A": 0.25}, "NK CD56bright": {"FCGR3A": 0.05}},
    {"CD16 mono": {"FCGR3A": 0.81, "MS4A7": 0.6, "CDKN1C": 0.4, "LST1": 0.85, "AIF1": 0.85, "CX3CR1": 0.2}},
    _for(
        ["B naive", "B memory"],
        {"MS4A1": 0.44, "CD79A": 0.6, "CD79B": 0.5, "CD19": 0.08, "BANK1": 0.2, "CD22": 0.1, "PAX5": 0.1, "IGHM": 0.7},
    ),
    {"B naive": {"TCL1A": 0.4, "IGHD": 0.3}},
    {
        "CD14 mono": {
            "CD14": 0.51,
            "LYZ": 0.99,
            "S100A8": 0.95,
            "S100A9": 0.97,
            "VCAN": 0.6,
            "FCN1": 0.7,
            "CST3": 0.9,
            "S100A12": 0.5,
            "MNDA": 0.4,
        }
    },
    {
        "platelets": {
            "PPBP": 0.69,
            "PF4": 0.55,
            "GP9": 0.08,
            "ITGA2B": 0.08,
            "TUBB1": 0.15,
            "GNG11": 0.35,
            "NRGN": 0.3,
            "SPARC": 0.2,
        }
    },
    {
        "cDC": {"FCER1A": 0.5, "CD1C": 0.25, "CLEC10A": 0.3},
        "pDC": {"LILRA4": 0.4, "IL3RA": 0.15, "PLD4": 0.4, "CLEC4C": 0.08, "SERPINF1": 0.3, "TCF4": 0.3, "IRF7": 0.4},
    },
)
