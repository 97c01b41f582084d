"""Set-up shared by the Snakemake script adapters: logging to the rule's log file, threads, seeds."""

from __future__ import annotations

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
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logger = logging.getLogger("job")

    def excepthook(kind, value, trace):
        logger.error("job failed", exc_info=(kind, value, trace))

    sys.excepthook = excepthook
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    random.seed(seed)
    np.random.seed(seed)
    import scanpy as sc

    sc.settings.n_jobs = threads
    sc.settings.verbosity = 1
    return logger
