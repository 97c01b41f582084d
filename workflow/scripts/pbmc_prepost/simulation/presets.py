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

PRESETS = {
    # resources/example (make example): 5 donors x pre/post, about 7,000 barcodes.
    "example": SimulationParams(),
    "null": SimulationParams(treatment_effect=False),
    # Whole-workflow tests: a null cohort of its own seed, and a 3-donor cohort for SLURM.
    "small": _SMALL,
    "small_null": replace(_SMALL, seed=99, treatment_effect=False),
    "tiny": SimulationParams(n_donors=3, cells_per_sample=400, n_genes=1500),
    # Shallow, real-looking data (tests/test_workflow_shallow.py, tests/test_annotate.py).
    "realistic": _REALISTIC,
}
