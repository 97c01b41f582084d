"""Which genes move only through the soup: the truth ambient-RNA flags are checked against.

When T cells expand, T-cell transcripts rise in the soup and so in every droplet; a population's
counts of a gene it barely makes then rise with no change in the cells. Per lineage and later
timepoint, a gene moves only through the soup when the soup alone would change the lineage's
expected counts of it by at least :data:`MIN_SOUP_LOG2FC` (the lineage's own profile held at the
reference timepoint) while its own profile changes by less than :data:`MAX_OWN_LOG2FC` (planted
effects, subset shifts within the lineage and cycling all count as own changes).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

#: Soup-driven change (log2) of a lineage's expected counts that makes a gene a soup-only mover.
MIN_SOUP_LOG2FC = 0.3
#: A gene whose own expression in the lineage changes by more than this (log2) is not soup-only.
MAX_OWN_LOG2FC = 0.1


class SampleSoup(NamedTuple):
    """What one simulated sample's droplets are mixed from."""

    donor: str
    timepoint: str
    ambient_mean: float
    soup: np.ndarray
    own: dict[str, np.ndarray]  # lineage -> library-weighted mean profile of its healthy singlets


def lineage_profiles(profile: np.ndarray, library: np.ndarray, lineage: np.ndarray) -> dict[str, np.ndarray]:
    """Library-weighted mean expression profile of each lineage's cells (rows of ``profile``)."""
    out = {}
    for name in np.unique(lineage):
        mine = lineage == name
        weighted = (profile[mine] * library[mine, None]).sum(0)
        out[str(name)] = weighted / weighted.sum()
    return out


def soup_only_genes(records: list[SampleSoup], symbols: np.ndarray, reference: str) -> dict[str, dict[str, list[str]]]:
    """Later timepoint -> lineage -> genes that move only through the soup (donors with both)."""
    by_key = {(r.donor, r.timepoint): r for r in records}
    timepoints = list(dict.fromkeys(r.timepoint for r in records if r.timepoint != reference))
    out: dict[str, dict[str, list[str]]] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for later in timepoints:
            soup_change: dict[str, list[np.ndarray]] = {}
            own_change: dict[str, list[np.ndarray]] = {}
            for (donor, timepoint), pre in by_key.items():
                post = by_key.get((donor, later))
                if timepoint != reference or post is None:
                    continue
                for lineage in set(pre.own) & set(post.own):
                    own = pre.own[lineage]
                    before = (1 - pre.ambient_mean) * own + pre.ambient_mean * pre.soup
                    after = (1 - post.ambient_mean) * own + post.ambient_mean * post.soup
                    soup_change.setdefault(lineage, []).append(np.log2(after / before))
                    own_change.setdefault(lineage, []).append(np.log2(post.own[lineage] / own))
            out[later] = {}
            for lineage, changes in sorted(soup_change.items()):
                soup_fc = np.nan_to_num(np.mean(changes, axis=0))
                own_fc = np.nan_to_num(np.mean(own_change[lineage], axis=0), nan=np.inf)
                moving = (np.abs(soup_fc) >= MIN_SOUP_LOG2FC) & (np.abs(own_fc) < MAX_OWN_LOG2FC)
                out[later][lineage] = sorted(str(g) for g in symbols[moving])
    return out
