"""The PBMC pre/post-IL-7 simulator: counts with known truth for the example, tests and benchmarks."""

from pbmc_prepost.simulation.model import SimulatedData, SimulationParams, simulate
from pbmc_prepost.simulation.presets import PRESETS
from pbmc_prepost.simulation.writers import write_dataset, write_sample

__all__ = ["PRESETS", "SimulatedData", "SimulationParams", "simulate", "write_dataset", "write_sample"]
