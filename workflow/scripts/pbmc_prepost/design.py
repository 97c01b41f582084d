"""The study design: which samples are compared, how they are paired, and names derived from them.

Every stage reads the design from here: the contrast (condition column, its two levels, the
pairing column), the sample metadata carried into the outputs, the ``sample:barcode`` key of a
cell, and the file-name-safe names of populations.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import pandas as pd

#: Separator of the cell key ``<sample>:<barcode>`` (obs names of every merged object).
CELL_KEY_SEPARATOR = ":"


@dataclass(frozen=True)
class Contrast:
    """Which samples are compared, and how they are paired.

    Attributes
    ----------
    column
        Sheet column holding the condition.
    reference
        Baseline value of ``column`` (e.g. before treatment).
    treated
        Value of ``column`` compared against the reference.
    pair_by
        Sheet column naming the patient; samples of one donor are paired.
    """

    column: str
    reference: str
    treated: str
    pair_by: str

    @classmethod
    def from_config(cls, config: dict) -> Contrast:
        """The ``contrast`` section of a validated config (defaults filled in by the schema)."""
        section = config["contrast"]
        return cls(section["column"], section["reference"], section["treated"], section["pair_by"])

    @property
    def levels(self) -> tuple[str, str]:
        """(reference, treated)."""
        return self.reference, self.treated


class Study(NamedTuple):
    """The contrast and the per-sample metadata that rules carry into ``obs`` and tables.

    A NamedTuple of builtins, so that Snakemake records it as a rule parameter and reruns what
    depends on it when the sheet's metadata change.

    Attributes
    ----------
    contrast
        The comparison.
    meta_columns
        Sheet columns carried into the outputs, in this order (pairing, condition, batch, extras).
    rows
        One tuple per sample: the sample id, then the values of ``meta_columns``.
    """

    contrast: Contrast
    meta_columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    @classmethod
    def from_sheet(cls, samples: pd.DataFrame, contrast: Contrast, extra_columns: Sequence[str] = ()) -> Study:
        """Build from a validated sheet (``SheetReport.samples``: indexed by sample id)."""
        wanted = [c for c in (contrast.pair_by, contrast.column, "batch") if c in samples.columns]
        columns = tuple(dict.fromkeys([*wanted, *extra_columns]))
        table = samples.reset_index()[["sample", *columns]].astype(str)
        return cls(contrast, columns, tuple(tuple(row) for row in table.itertuples(index=False)))

    @property
    def samples(self) -> list[str]:
        """Sample ids in sheet order."""
        return [row[0] for row in self.rows]

    def sample_meta(self) -> pd.DataFrame:
        """The metadata as a frame indexed by sample id (columns :attr:`meta_columns`)."""
        return pd.DataFrame(list(self.rows), columns=["sample", *self.meta_columns]).set_index("sample")


def cell_key(samples: Iterable[str] | pd.Series, barcodes: Iterable[str] | pd.Series) -> pd.Index:
    """The ``<sample>:<barcode>`` key of each cell: obs names of every merged object."""
    samples = pd.Series(list(samples), dtype=str)
    barcodes = pd.Series(list(barcodes), dtype=str)
    return pd.Index(samples + CELL_KEY_SEPARATOR + barcodes)


def safe_name(label: str) -> str:
    """File-name-safe version of a population label.

    Runs of characters outside ``[A-Za-z0-9._-]`` become one ``_``; leading/trailing ``_`` are
    stripped: ``'CD4 T' -> 'CD4_T'``, ``'NK CD56bright' -> 'NK_CD56bright'``. A label with nothing
    usable becomes ``group_<hash>``. The mapping depends on the label only; use
    :func:`safe_names` to make a whole set unique.
    """
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(label)).strip("_")
    if not name or set(name) <= {"."}:
        name = f"group_{_short_hash(str(label))}"
    return name


def safe_names(labels: Iterable[str]) -> dict[str, str]:
    """Unique file-name-safe names for a set of labels.

    Labels whose :func:`safe_name` collides (``'CD4 T'`` and ``'CD4+ T'``) get a stable
    ``-<hash>`` suffix from their own text; a label that is already safe keeps its name.

    Returns
    -------
    dict
        label -> unique safe name.
    """
    labels = list(dict.fromkeys(str(x) for x in labels))
    base = {lab: safe_name(lab) for lab in labels}
    counts = pd.Series(list(base.values())).value_counts()
    out = {}
    for lab in labels:
        name = base[lab]
        if counts[name] > 1 and lab != name:
            name = f"{name}-{_short_hash(lab)}"
        out[lab] = name
    return out


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:6]


def str_values(values: pd.Series) -> pd.Series:
    """Labels as plain str with missing values as '' (sheets and obs mix str, NaN, categoricals)."""
    return values.astype(object).where(values.notna(), "").astype(str)
