"""Named simulation settings: the embedded example, its null twin and the test cohorts.

The tests build every dataset from these (``tests/conftest.py``), so a cohort is simulated once
per test session and shared.
"""

from dataclasses import replace

from pbmc_prepost.simulation.biology import SHALLOW_10X_DETECTION
from pbmc_prepost.simulation.model import SimulationParams

_SMALL = SimulationParams(n_donors=4, cells_per_sample=700, n_genes=2000)
# Shallow 10x PBMC as real cohorts of sick patients give them: about 1,300 UMIs per cell, marker
# dropout (CD4 in 1 % of CD4 T cells), cytotoxic genes shared by CD8 T and NK cells, 16 samples of
# 80-300 cells and one that kept only 40.
_REALISTIC = SimulationParams(
    n_donors=8,
    cells_per_sample=180,
    n_genes=4000,
    library_median=1300.0,
    library_sdlog=0.45,
    cells_sdlog=0.35,
    sample_sizes={"D3_post": 40},
    marker_detection=SHALLOW_10X_DETECTION,
    seed=20261201,
)

# A placebo-controlled trial (IRIS-7-like): 16 patients, 8 on IL-7 and 8 on placebo, pre and post,
# a disease course in both arms (monocyte MHC-II recovers, interferon fades, T cells rise a little)
# and the IL-7 effects in the IL-7 arm only. With 5 per arm an interaction test has little power.
_TRIAL = SimulationParams(
    n_donors=16, n_placebo=8, disease_course=True, cells_per_sample=600, n_genes=2500, seed=20261202
)

PRESETS = {
    # resources/example (make example): 5 donors x pre/post, about 7,000 barcodes.
    # Donors D1 and D2 with raw droplets (only the empty ones, to stay small), D3-D5 without.
    "example": SimulationParams(empty_droplets=1500, raw_donors=("D1", "D2"), raw_empty_only=True),
    "null": SimulationParams(treatment_effect=False),
    # Whole-workflow tests: a null cohort of its own seed, and a 3-donor cohort for SLURM.
    "small": _SMALL,
    "small_null": replace(_SMALL, seed=99, treatment_effect=False),
    "tiny": SimulationParams(n_donors=3, cells_per_sample=400, n_genes=1500),
    # The SLURM test's cohort: tiny, with each sample's raw droplet matrix (tests/data/tiny_tables.sha256).
    "tiny_raw": SimulationParams(n_donors=3, cells_per_sample=400, n_genes=1500, empty_droplets=3000),
    # Shallow, real-looking data (tests/test_workflow_shallow.py, tests/test_annotate.py).
    "realistic": _REALISTIC,
    # QC (tests/test_qc_cohorts.py): two processing batches whose healthy cells sit at a median of
    # 5.5 % and 6.9 % mitochondrial reads, and a cohort whose CD14 monocytes carry 3x the
    # mitochondrial share in post samples only (a handling artefact the QC bias check must name).
    "mito_batches": replace(_SMALL, mito_by_batch=(0.055, 0.069), seed=20261204),
    "qc_artefact": replace(
        _SMALL, mito_artefact={"lineage": "CD14 mono", "timepoint": "post", "factor": 3.0}, seed=20261205
    ),
    # Ambient RNA that rises after treatment (tests/test_ambient_de.py): 4 % of a cell's UMIs before,
    # 12 % after (sicker or slower-processed samples), with empty droplets: without the correction,
    # genes that move only through the soup reach padj < 0.05 in several populations.
    "soup_rise": replace(
        _SMALL,
        n_donors=6,
        ambient_fraction=0.04,
        ambient_by_sample={f"D{d}_post": 0.12 for d in range(1, 7)},
        empty_droplets=1000,
        seed=20261210,
    ),
    # Trial designs (tests/test_workflow_trial.py; config/examples/placebo_controlled.yaml).
    "trial": _TRIAL,
    # The null twin, smaller and with three timepoints: no drug, no course, 4 donors per arm
    # (tests/test_workflow_null.py: no contrast of any kind may call anything).
    "trial_null": replace(
        _TRIAL,
        n_donors=8,
        n_placebo=4,
        timepoints=("day0", "day7", "day28"),
        cells_per_sample=250,
        seed=20261203,
        treatment_effect=False,
        disease_course=False,
    ),
    # Three timepoints: the drug at full strength on day 7 and half by day 28, the course growing.
    "trial_3tp": replace(
        _TRIAL,
        timepoints=("day0", "day7", "day28"),
        drug_by_timepoint=(0.0, 1.0, 0.5),
        course_by_timepoint=(0.0, 0.6, 1.0),
        cells_per_sample=200,
    ),
}
