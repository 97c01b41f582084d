"""Named simulation settings: the embedded example, its null twin and the test cohorts.

The tests build every dataset from these (``tests/conftest.py``), so a cohort is simulated once
per test session and shared.
"""

from dataclasses import replace

from pbmc_prepost.simulation.model import SimulationParams

_SMALL = SimulationParams(n_donors=4, cells_per_sample=700, n_genes=2000)

PRESETS = {
    # resources/example (make example): 5 donors x pre/post, about 7,000 barcodes.
    "example": SimulationParams(),
    "null": SimulationParams(treatment_effect=False),
    # Whole-workflow tests: a null cohort of its own seed, and a 3-donor cohort for SLURM.
    "small": _SMALL,
    "small_null": replace(_SMALL, seed=99, treatment_effect=False),
    "tiny": SimulationParams(n_donors=3, cells_per_sample=400, n_genes=1500),
}
