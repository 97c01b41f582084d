"""Set-up shared by the Snakemake script adapters: logging to the rule's log file, threads, seeds."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import sys
import warnings
from pathlib import Path

import numpy as np


def start_job(log_path: str | None, threads: int = 1, seed: int = 0) -> logging.Logger:
    """Send logging, warnings and uncaught errors to ``log_path`` and fix threads and seeds.

    Returns the root logger of the job.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(
        level=logging.INFO, handlers=handlers, force=True, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logger = logging.getLogger("job")

    def excepthook(kind, value, trace):
        logger.error("job failed", exc_info=(kind, value, trace))
        if disk_full(value):
            logger.error(DISK_FULL_HELP, Path.cwd())

    sys.excepthook = excepthook
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (libraries that draw from numpy's global generator)
    # scanpy's defaults (n_jobs 1, verbosity 1) already fit a 1-thread job; importing scanpy only
    # to set them cost 2 s in every job that never uses it (DE, tables, figures).
    if threads > 1 or "scanpy" in sys.modules:
        sc = import_scanpy()
        sc.settings.n_jobs = threads
        sc.settings.verbosity = 1
    return logger


#: OpenBLAS kernel family every x86-64 job uses (see :func:`portable_blas_core`).
BLAS_CORE = "Haswell"


def portable_blas_core(machine: str, cpuinfo: str) -> str | None:
    """The ``OPENBLAS_CORETYPE`` that makes results the same on every x86-64 machine, or None.

    OpenBLAS picks its kernels by CPU: on a machine with AVX-512 the PCA's last digits differ from
    those of an AVX2 machine, the kNN graph and the clusters follow, and the same input gives
    other tables (measured: the example's clusters and everything after them changed between two
    machines of this project's CI). Every x86-64 CPU with AVX2 runs the Haswell kernels, so they
    are chosen there; elsewhere (older x86, ARM) OpenBLAS keeps its own choice.
    """
    if machine.lower() not in {"x86_64", "amd64"}:
        return None
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    return BLAS_CORE if {"avx2", "fma"} <= set(flags.split()) else None


#: With the BLAS kernels, the two other places where a job's floating-point code depends on the
#: CPU it runs on: numba compiles for the host (an AVX-512 machine vectorizes fastmath sums of
#: scanpy's and pynndescent's kernels 16 wide, an AVX2 machine 8 wide; measured: a Zen 3 and a
#: Zen 4 machine gave different QC and cluster tables with the BLAS pinned), and numpy dispatches
#: its loops to the widest SIMD found. Both are pinned to the same Haswell (AVX2 + FMA) level.
PORTABLE_CPU_ENV = {
    "NUMBA_CPU_NAME": "haswell",
    "NUMBA_CPU_FEATURES": "+avx2,+fma",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512_SKX AVX512_CLX AVX512_CNL",
}


def pin_blas_kernels() -> None:
    """Set ``OPENBLAS_CORETYPE``, and numba's and numpy's CPU level (:data:`PORTABLE_CPU_ENV`), for
    the jobs this process starts (values already set are kept)."""
    import platform

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return
    core = portable_blas_core(platform.machine(), cpuinfo)
    if core:
        os.environ.setdefault("OPENBLAS_CORETYPE", core)
        for name, value in PORTABLE_CPU_ENV.items():
            os.environ.setdefault(name, value)


DISK_FULL_HELP = (
    "no space left on the device that holds the run folder %s (or its temporary files): free space, "
    "or run with --directory on a larger disk, and rerun the same command. Snakemake deletes the "
    "outputs of this failed job, so nothing half-written counts as finished, and the rerun starts "
    "again from this job."
)


def disk_full(error: BaseException | None) -> bool:
    """Whether ``error``, or one it was raised from, is the file system's 'no space left' (ENOSPC),
    including HDF5's wrapped form of it."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def import_scanpy():
    """scanpy, with the numba types of its sparse-matrix code made cacheable
    (:func:`make_sparse_numba_types_cacheable`): import it this way in the workflow's code."""
    import scanpy as sc

    make_sparse_numba_types_cacheable()
    return sc


def make_sparse_numba_types_cacheable() -> bool:
    """Let numba's disk cache match the sparse-matrix types of fast_array_utils (scanpy >= 1.12).

    fast_array_utils builds its numba types of scipy's sparse matrices with ``type()`` under the
    ``abc`` module, where pickle cannot find them: numba's cache stores them by value, and a new
    process's types never equal the stored ones. So every job compiled scanpy's sparse mean,
    variance and normalization code again (the 34 functions of Scrublet's preprocessing took 6-9 s
    of every ``qc_sample`` job, whatever its size). Naming them in their own module makes them
    picklable by reference; a later job loads the code (tests/test_runtime.py).

    Returns
    -------
    bool
        Whether the types were found (False with a fast_array_utils that builds them otherwise).
    """
    try:
        from fast_array_utils._plugins import numba_sparse
    except ImportError:
        return False
    classes = [*getattr(numba_sparse, "TYPES", ()), *getattr(numba_sparse, "MODELS", {}).values()]
    for cls in classes:
        cls.__module__ = numba_sparse.__name__
        setattr(numba_sparse, cls.__name__, cls)
    return bool(classes)


# Modules whose numba functions a kNN graph and UMAP compile (scanpy -> pynndescent, umap-learn).
NUMBA_MODULES = (
    "pynndescent.distances",
    "pynndescent.utils",
    "pynndescent.rp_trees",
    "pynndescent.sparse",
    "pynndescent.sparse_nndescent",
    "pynndescent.graph_utils",
    "pynndescent.threaded_rp_trees",
    "pynndescent.pynndescent_",
    "umap.utils",
    "umap.distances",
    "umap.sparse",
    "umap.layouts",
    "umap.spectral",
    "umap.umap_",
)


@contextlib.contextmanager
def _numba_cache_by_default():
    """While importing: every ``numba.njit`` function cached unless it says otherwise.

    pynndescent compiles its distance and sparse kernels when it is imported (they declare their
    types), before :func:`cache_numba_compilation` could turn their cache on: importing it took 8 s
    in every job that builds a kNN graph, 1.7 s with these kernels loaded from the cache.
    """
    import numba
    from numba.core.errors import NumbaWarning

    original = numba.njit

    def njit(*args, **kwargs):
        kwargs.setdefault("cache", True)
        return original(*args, **kwargs)

    numba.njit = njit
    try:
        with warnings.catch_warnings():  # "cannot cache ... dynamic globals": compiled as before
            warnings.simplefilter("ignore", NumbaWarning)
            yield
    finally:
        numba.njit = original


def cache_numba_compilation(modules: tuple[str, ...] = NUMBA_MODULES) -> int:
    """Let numba keep the compiled code of pynndescent and umap on disk (``NUMBA_CACHE_DIR``).

    Most of pynndescent's functions are compiled without ``cache=True``, so a setting of
    ``NUMBA_CACHE_DIR`` alone does not help them: every new process, hence every Snakemake job,
    compiled the kNN-graph code again (10-50 s). Turning the cache on for each compiled function
    after import makes the first job compile and later jobs load most of the machine code: on a
    9,000-cell graph a later job compiles under 80 functions instead of about 270
    (tests/test_runtime.py). numba refuses to cache the rest (``nn_descent`` and what only it
    calls use dynamic globals).

    Returns
    -------
    int
        How many functions had their cache turned on.
    """
    import importlib

    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    enabled = 0
    with _numba_cache_by_default():
        imported = [importlib.import_module(name) for name in modules]
    for module in imported:
        for value in vars(module).values():
            if isinstance(value, CPUDispatcher) and isinstance(value._cache, NullCache):
                value.enable_caching()
                enabled += 1
    return enabled
