"""Job set-up: the project-local numba cache (a kNN graph compiled in one job is loaded, not compiled, by
the next) and start_job's threads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A fresh process (as every Snakemake job is) builds a kNN graph the way the workflow's embedding
# step does, on 9,000 cells: above 8,192 cells scanpy leaves its exact search (sklearn, brute force)
# for pynndescent's approximate one (euclidean metric; other metrics above 4,096). It reports how
# many numba functions were compiled, in all and in pynndescent.
JOB = """
import json, sys
import numpy as np, anndata as ad, scanpy as sc
from numba.core import event
from pbmc_prepost.runtime import cache_numba_compilation
if sys.argv[1] == "on":
    cache_numba_compilation()
data = np.random.default_rng(0).normal(size=(9000, 20)).astype(np.float32)
with event.install_recorder("numba:compile") as recorder:
    sc.pp.neighbors(ad.AnnData(data), use_rep="X", n_neighbors=15, random_state=0)
started = [e for _, e in recorder.buffer if e.is_start]
modules = [getattr(e.data.get("dispatcher"), "py_func", None) for e in started]
in_pynndescent = sum(1 for f in modules if f is not None and f.__module__.startswith("pynndescent"))
print(json.dumps({"compiled": len(started), "pynndescent": in_pynndescent}))
"""


def compilations(cache_dir: Path, mode: str) -> dict[str, int]:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(ROOT / "workflow" / "scripts")}
    out = subprocess.run([sys.executable, "-c", JOB, mode], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.heavy
def test_later_jobs_load_most_knn_code_from_the_cache(tmp_path):
    """The first job compiles and writes the cache; a later job loads most of the kNN code from it.

    Measured here: about 270 functions compiled in a later job without the cache turned on, under
    80 with it (numba refuses to cache pynndescent's nn_descent and the code only it calls, since
    they use dynamic globals). The graph above 8,192 cells is pynndescent's: with pynndescent 0.7
    this same call fails in scanpy (``'csr_array' object has no attribute 'getnnz'``), the reason
    requirements.in pins 0.6.
    """
    cache = tmp_path / "numba"
    first = compilations(cache, "on")  # a cold cache: compiles what a job without the cache does
    cached = compilations(cache, "on")
    assert first["pynndescent"] > 0
    assert cached["compiled"] < first["compiled"] / 2, (cached, first)


# A fresh process runs the sparse preprocessing of Scrublet (scanpy's normalization, fast_array_utils'
# mean and variance) on a small CSR matrix, the way every qc_sample job does.
SPARSE_JOB = """
import json, sys
import numpy as np, scipy.sparse as sp, anndata as ad
from numba.core import event
if sys.argv[1] == "fixed":
    from pbmc_prepost.runtime import import_scanpy
    sc = import_scanpy()
else:
    import scanpy as sc
counts = sp.random(300, 500, density=0.1, format="csr", dtype=np.float32, random_state=0)
counts.data = np.ceil(counts.data * 10)
with event.install_recorder("numba:compile") as recorder:
    adata = ad.AnnData(counts)
    sc.pp.normalize_total(adata)
    sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=100)
    from fast_array_utils import stats
    stats.mean_var(adata.X, axis=0)
print(json.dumps({"compiled": sum(1 for _, e in recorder.buffer if e.is_start)}))
"""


def sparse_compilations(cache_dir: Path, mode: str) -> int:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(ROOT / "workflow" / "scripts")}
    out = subprocess.run([sys.executable, "-c", SPARSE_JOB, mode], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["compiled"]


@pytest.mark.slow
def test_later_jobs_load_scanpys_sparse_code_from_the_cache(tmp_path):
    """fast_array_utils' numba types of sparse matrices are not picklable by reference, so numba's
    cache never matched them and every job compiled the same sparse code again (6-9 s per qc_sample
    job); with the types named in their module (runtime.import_scanpy) a later job compiles none."""
    unfixed, fixed = tmp_path / "unfixed", tmp_path / "fixed"
    assert sparse_compilations(unfixed, "unfixed") > 0
    assert sparse_compilations(unfixed, "unfixed") > 0  # the cache is written but never matches
    assert sparse_compilations(fixed, "fixed") > 0
    assert sparse_compilations(fixed, "fixed") == 0


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


AVX512 = "flags\t\t: fpu sse2 avx fma avx2 avx512f avx512dq\n"


@pytest.mark.parametrize(
    ("machine", "cpuinfo", "expected"),
    [
        ("x86_64", AVX512, "Haswell"),  # an AVX-512 machine runs the AVX2 kernels like the others
        ("x86_64", "flags\t\t: fpu sse2 avx fma avx2\n", "Haswell"),
        ("x86_64", "flags\t\t: fpu sse2 avx\n", None),  # no AVX2: Haswell kernels would not run
        ("aarch64", "Features\t: fp asimd\n", None),
    ],
)
def test_blas_kernels_are_pinned_only_where_they_run(machine, cpuinfo, expected):
    from pbmc_prepost.runtime import portable_blas_core

    assert portable_blas_core(machine, cpuinfo) == expected


def test_jobs_run_the_pinned_blas_kernels_and_provenance_says_which():
    """A process started the way Snakemake starts a job, after the Snakefile pinned the kernels,
    runs OpenBLAS's Haswell kernels whatever this CPU would pick, and software_versions records it."""
    from pbmc_prepost.runtime import portable_blas_core

    if portable_blas_core(os.uname().machine, Path("/proc/cpuinfo").read_text()) is None:
        pytest.skip("no pinned kernels on this CPU")
    code = (
        "from pbmc_prepost.runtime import pin_blas_kernels; pin_blas_kernels();"
        "import subprocess, sys;"
        "subprocess.run([sys.executable, '-c', 'import json; from pbmc_prepost.provenance import blas_kernels;"
        "print(json.dumps(blas_kernels()))'], check=True)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    env["PYTHONPATH"] = str(ROOT / "workflow" / "scripts")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    assert rows and all(row["version"].endswith(" Haswell") for row in rows), rows


def test_functions_compiled_at_import_are_cached_and_njit_is_restored():
    """pynndescent compiles its typed kernels while it is imported; they are cached from then on."""
    import numba

    from pbmc_prepost.runtime import _numba_cache_by_default

    original = numba.njit
    with _numba_cache_by_default():
        assert numba.njit is not original

        @numba.njit("float64(float64)")  # typed: compiled here, as pynndescent's kernels are
        def double(x):
            return 2 * x

        @numba.njit(cache=False)  # a module that says otherwise keeps its choice
        def triple(x):
            return 3 * x

    assert numba.njit is original
    assert double._cache.__class__.__name__ != "NullCache" and double(2.0) == 4.0
    assert triple._cache.__class__.__name__ == "NullCache"
