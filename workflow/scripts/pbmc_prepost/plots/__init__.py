"""Figures of the workflow, one module per stage; here what they share.

Every function takes plain data (tables, arrays) and writes PNG and PDF files; statistics are
computed elsewhere. Figures are deterministic: fixed sizes, sorted categories, and no creation
timestamps in the PDF.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PNG_DPI = 120
TIMEPOINT_COLOURS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3"]


def save(fig: plt.Figure, paths: Sequence[str | Path]) -> None:
    """Write ``fig`` to every path (format from the suffix) and close it."""
    for path in paths:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".pdf":
            fig.savefig(path, metadata={"CreationDate": None, "ModDate": None})
        else:
            fig.savefig(path, dpi=PNG_DPI, metadata={"Software": None})
    plt.close(fig)


def palette(n: int) -> list:
    """``n`` distinguishable colours (tab20, then hsv for more)."""
    if n <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(n)]
    return [plt.get_cmap("hsv")(i / n) for i in range(n)]


def message_figure(title: str, message: str, paths: Sequence[str | Path]) -> None:
    """A figure that only says why there is nothing to show (e.g. a population not tested)."""
    fig, ax = plt.subplots(figsize=(6.5, 2.5))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=10, wrap=True)
    ax.set_title(title, fontsize=10)
    save(fig, paths)
