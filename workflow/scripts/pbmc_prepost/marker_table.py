"""The versioned PBMC marker table (``resources/markers/pbmc_markers.tsv``) and the user's
cluster -> cell type overrides."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pbmc_prepost import InputError


@dataclass
class MarkerTable:
    """Gates, identity populations and state signatures of the marker table.

    ``gates`` is indexed by gate name (columns lineage, positive, negative); ``lineages`` by the
    lineages told apart within a gate, and ``identity`` by cell type (columns lineage, gate,
    positive, negative); ``states`` maps a state to its genes.
    """

    gates: pd.DataFrame
    lineages: pd.DataFrame
    identity: pd.DataFrame
    states: dict[str, list[str]]

    @property
    def lineage_of(self) -> dict[str, str]:
        """Label -> lineage; a lineage that labels a cluster itself (its subsets' markers were not
        measured) is its own lineage."""
        lineages = {name: name for name in [*self.gates["lineage"], *self.lineages["lineage"]]}
        return lineages | self.identity["lineage"].to_dict()

    def lineage_genes(self, lineage: str) -> set[str]:
        """Genes that every lineage row of ``lineage`` names (CD4, CD40LG, TRAT1, CD8A and CD8B for
        CD4 T): they decided the lineage, so they do not decide its subsets (they would favour the
        subsets whose panels list them)."""
        rows = self.lineages[self.lineages["lineage"] == lineage]
        named = [set(row.positive + row.negative) for row in rows.itertuples()]
        return set.intersection(*named) if named else set()

    def genes(self, states: bool = True) -> list[str]:
        """Every gene the table names (identity and gate panels; state genes too by default)."""
        rows = [*self.gates.itertuples(), *self.lineages.itertuples(), *self.identity.itertuples()]
        named = {g for row in rows for g in row.positive + row.negative}
        if states:
            named |= {g for genes in self.states.values() for g in genes}
        return sorted(named)


def read_marker_table(path: str | Path) -> MarkerTable:
    """Read ``resources/markers/pbmc_markers.tsv`` (comment lines start with ``#``)."""
    table = pd.read_csv(path, sep="\t", comment="#", dtype=str, keep_default_na=False)
    required = {"cell_type", "lineage", "gate", "kind", "positive", "negative"}
    if not required <= set(table.columns):
        raise InputError(
            f"{path}: marker table needs columns {sorted(required)}, found {list(table.columns)}. "
            "Fix: start from resources/markers/pbmc_markers.tsv."
        )
    split = lambda text: [g.strip() for g in text.split(",") if g.strip()]  # noqa: E731
    table["positive"] = table["positive"].map(split)
    table["negative"] = table["negative"].map(split)
    columns = ["lineage", "gate", "positive", "negative"]
    gates = table[table["kind"] == "gate"].set_index("cell_type")[["lineage", "positive", "negative"]]
    identity = table[table["kind"] == "identity"].set_index("cell_type")[columns]
    lineages = table[table["kind"] == "lineage"].set_index("cell_type")[columns]
    states = {row.cell_type: row.positive for row in table[table["kind"] == "state"].itertuples()}
    for what, frame in (("cell type", identity), ("gate", gates), ("lineage", lineages)):
        if frame.index.duplicated().any():
            raise InputError(
                f"{path}: {what}(s) listed twice: {sorted(frame.index[frame.index.duplicated()])}. "
                "Fix: keep one row each."
            )
    unknown = sorted((set(identity["gate"]) | set(lineages["gate"])) - set(gates.index))
    if unknown:
        raise InputError(f"{path}: identity rows name gate(s) {unknown} that no gate row defines. Fix: add the gate.")
    return MarkerTable(gates=gates, lineages=lineages, identity=identity, states=states)


def read_overrides(path: str | Path | None, known: set[str]) -> dict[str, str]:
    """cluster -> cell type from the user's override table (columns ``cluster``, ``cell_type``)."""
    if not path or not Path(path).exists():
        return {}
    table = pd.read_csv(path, sep="\t", comment="#", dtype=str, keep_default_na=False)
    if not {"cluster", "cell_type"} <= set(table.columns):
        raise InputError(
            f"{path}: needs columns 'cluster' and 'cell_type', found {list(table.columns)}. "
            "Fix: one row per cluster to relabel."
        )
    unknown = sorted(set(table["cell_type"]) - known)
    if unknown:
        raise InputError(
            f"{path}: unknown cell type(s) {unknown}. Fix: use labels of the marker table: {sorted(known)}."
        )
    return dict(zip(table["cluster"].str.strip(), table["cell_type"].str.strip()))
