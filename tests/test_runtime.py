"""Job set-up: the project-local numba cache (a kNN graph compiled in one job is loaded, not compiled, by
the next) and start_job's threads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A fresh process (as every Snakemake job is) builds a pynndescent kNN graph on 5,000 cells (above
# scanpy's 4,096-cell threshold for the approximate search) and counts numba compilations.
JOB = """
import json, sys
import numpy as np, anndata as ad, scanpy as sc
from numba.core import event
from pbmc_prepost.runtime import cache_numba_compilation
if sys.argv[1] == "on":
    cache_numba_compilation()
data = np.random.default_rng(0).normal(size=(5000, 20)).astype(np.float32)
with event.install_recorder("numba:compile") as recorder:
    sc.pp.neighbors(ad.AnnData(data), use_rep="X", n_neighbors=15, random_state=0)
print(json.dumps({"compiled": sum(1 for _, e in recorder.buffer if e.is_start)}))
"""


def compilations(cache_dir: Path, mode: str) -> int:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(ROOT / "workflow" / "scripts")}
    out = subprocess.run([sys.executable, "-c", JOB, mode], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["compiled"]


@pytest.mark.slow
def test_second_job_loads_knn_code_from_the_cache(tmp_path):
    assert compilations(tmp_path / "numba", "on") > 0  # the first job compiles and writes the cache
    assert compilations(tmp_path / "numba", "on") == 0  # the next one loads everything


@pytest.mark.slow
def test_without_it_pynndescent_compiles_in_every_job(tmp_path):
    """The control: NUMBA_CACHE_DIR alone leaves most of pynndescent's functions uncached."""
    compilations(tmp_path / "numba", "off")
    assert compilations(tmp_path / "numba", "off") > 0


START = """
import json, sys
from pbmc_prepost.runtime import start_job
start_job(None, threads=int(sys.argv[1]))
loaded = "scanpy" in sys.modules
n_jobs = sys.modules["scanpy"].settings.n_jobs if loaded else None
print(json.dumps({"scanpy": loaded, "n_jobs": n_jobs}))
"""


@pytest.mark.parametrize(("threads", "scanpy", "n_jobs"), [(1, False, None), (2, True, 2)])
def test_start_job_sets_scanpy_threads_only_where_needed(threads, scanpy, n_jobs):
    """A 1-thread job that never uses scanpy does not pay its 2-s import; a threaded one gets n_jobs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "workflow" / "scripts")}
    out = subprocess.run(
        [sys.executable, "-c", START, str(threads)], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"scanpy": scanpy, "n_jobs": n_jobs}
