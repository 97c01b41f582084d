"""The study design: which samples are compared, how they are paired, and names derived from them.

Every stage reads the design from here: the contrast (condition column, its two levels, the
pairing column), the sample metadata carried into the outputs, the ``sample:barcode`` key of a
cell, and the file-name-safe names of populations.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import pandas as pd

#: Separator of the cell key ``<sample>:<barcode>`` (obs names of every merged object).
CELL_KEY_SEPARATOR = ":"


@dataclass(frozen=True)
class Contrast:
    """Which samples are compared, and how they are paired.

    Attributes
    ----------
    column
        Sheet column holding the condition (config ``design.column``).
    reference
        Baseline value of ``column`` (e.g. before treatment).
    treated
        Value of ``column`` compared against the reference.
    pair_by
        Sheet column naming the patient; samples of one donor are paired.
    name
        File-name-safe name (config ``contrasts[].name``); default ``<treated>_vs_<reference>``.
    arm_column
        Sheet column naming each donor's arm (config ``design.arm``), or None.
    arm
        Only the donors of this arm (None: every donor).
    versus_arm
        With ``arm``: the difference of changes, the change in ``arm`` minus that in ``versus_arm``.
    covariates
        Sheet columns added to every model where they are estimable (config ``design.covariates``).
    """

    column: str
    reference: str
    treated: str
    pair_by: str
    name: str = ""
    arm_column: str | None = None
    arm: str | None = None
    versus_arm: str | None = None
    covariates: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", safe_name(f"{self.treated}_vs_{self.reference}"))
        object.__setattr__(self, "covariates", tuple(self.covariates))

    @classmethod
    def from_config(cls, config: dict) -> Contrast:
        """The first contrast of a validated config (:meth:`Design.from_config`)."""
        return Design.from_config(config).contrasts[0]

    @property
    def levels(self) -> tuple[str, str]:
        """(reference, treated)."""
        return self.reference, self.treated

    @property
    def is_interaction(self) -> bool:
        """True for a difference of changes between two arms."""
        return self.versus_arm is not None

    @property
    def arms(self) -> tuple[str, ...]:
        """The arms whose donors the contrast uses (empty: every donor)."""
        return tuple(a for a in (self.arm, self.versus_arm) if a is not None)

    def sample_mask(self, meta: pd.DataFrame) -> np.ndarray:
        """Rows of ``meta`` (samples or pseudobulks) in this contrast: one of its two levels, and
        one of its arms when it names any."""
        mask = np.array(meta[self.column].astype(str).isin(self.levels), dtype=bool)
        if self.arms:
            if self.arm_column not in meta.columns:
                raise ValueError(f"contrast {self.name}: arm column '{self.arm_column}' missing from the metadata")
            mask &= np.array(meta[self.arm_column].astype(str).isin(self.arms), dtype=bool)
        return mask

    def pairs_per_arm(self, meta: pd.DataFrame) -> dict[str, int]:
        """Donors of ``meta`` (samples or pseudobulks) with both levels of this contrast, per arm
        (``{"all": n}`` when the contrast names no arm). Rows without a donor do not count."""
        rows = meta[self.sample_mask(meta)]
        donor = rows[self.pair_by].astype(str)
        rows, donor = rows[donor != ""], donor[donor != ""]
        levels = rows.groupby(donor)[self.column].nunique()
        complete = levels.index[levels == 2]
        if not self.arms:
            return {"all": len(complete)}
        arm_of = rows.groupby(donor)[self.arm_column].first().astype(str)
        return {arm: int((arm_of.loc[complete] == arm).sum()) for arm in self.arms}

    def describe(self) -> str:
        """The contrast in words, e.g. ``post vs pre in IL7 minus post vs pre in placebo``."""
        change = f"{self.treated} vs {self.reference}"
        if self.is_interaction:
            return f"{change} in {self.arm} minus {change} in {self.versus_arm} (difference of changes)"
        if self.arm is not None:
            return f"{change} in {self.arm} only"
        return change


@dataclass(frozen=True)
class Design:
    """The study design of a run: the sheet columns every contrast uses, and the contrasts.

    Attributes
    ----------
    column, pair_by, arm, covariates
        Config ``design``: timepoint column, patient column, optional arm column, covariates.
    contrasts
        Config ``contrasts``, each a :class:`Contrast` carrying the design's columns.
    """

    column: str
    pair_by: str
    arm: str | None
    covariates: tuple[str, ...]
    contrasts: tuple[Contrast, ...]

    @classmethod
    def from_config(cls, config: dict) -> Design:
        """The ``design`` and ``contrasts`` sections of a validated config (schema defaults filled in,
        the old ``contrast`` block already converted by :func:`pbmc_prepost.configuration.validate_config`)."""
        section = config["design"]
        covariates = tuple(section["covariates"] or ())
        contrasts = tuple(
            Contrast(
                section["column"],
                str(item["reference"]),
                str(item["treated"]),
                section["pair_by"],
                name=item["name"],
                arm_column=section["arm"],
                arm=None if item.get("arm") is None else str(item["arm"]),
                versus_arm=None if item.get("versus_arm") is None else str(item["versus_arm"]),
                covariates=covariates,
            )
            for item in config["contrasts"]
        )
        return cls(section["column"], section["pair_by"], section["arm"], covariates, contrasts)

    @classmethod
    def single(cls, contrast: Contrast) -> Design:
        """The design of one contrast."""
        return cls(contrast.column, contrast.pair_by, contrast.arm_column, contrast.covariates, (contrast,))

    @property
    def levels(self) -> tuple[str, ...]:
        """Every level any contrast compares, in the order the contrasts name them."""
        return tuple(dict.fromkeys(level for c in self.contrasts for level in c.levels))

    @property
    def names(self) -> list[str]:
        """Contrast names in config order."""
        return [c.name for c in self.contrasts]

    @property
    def reference(self) -> str:
        """The first contrast's reference (baseline of the overview figures)."""
        return self.contrasts[0].reference

    @property
    def treated(self) -> str:
        return self.contrasts[0].treated

    def select(self, names: Iterable[str]) -> Design:
        """The design with only the named contrasts (e.g. those that rest on enough donors)."""
        keep = set(names)
        return replace(self, contrasts=tuple(c for c in self.contrasts if c.name in keep))


class Study(NamedTuple):
    """The design and the per-sample metadata that rules carry into ``obs`` and tables.

    A NamedTuple of builtins, so that Snakemake records it as a rule parameter and reruns what
    depends on it when the sheet's metadata change.

    Attributes
    ----------
    design
        The design: columns and contrasts.
    meta_columns
        Sheet columns carried into the outputs, in this order (pairing, condition, batch, arm,
        covariates, extras).
    rows
        One tuple per sample: the sample id, then the values of ``meta_columns``.
    """

    design: Design
    meta_columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    @classmethod
    def from_sheet(cls, samples: pd.DataFrame, design: Design | Contrast, extra_columns: Sequence[str] = ()) -> Study:
        """Build from a validated sheet (``SheetReport.samples``: indexed by sample id)."""
        if isinstance(design, Contrast):
            design = Design.single(design)
        wanted = [design.pair_by, design.column, "batch", design.arm, *design.covariates]
        wanted = [c for c in wanted if c and c in samples.columns]
        columns = tuple(dict.fromkeys([*wanted, *extra_columns]))
        table = samples.reset_index()[["sample", *columns]].astype(str)
        return cls(design, columns, tuple(tuple(row) for row in table.itertuples(index=False)))

    @property
    def contrast(self) -> Contrast:
        """The first contrast (the one the QC-bias check and the overview figures use)."""
        return self.design.contrasts[0]

    @property
    def contrasts(self) -> tuple[Contrast, ...]:
        return self.design.contrasts

    @property
    def samples(self) -> list[str]:
        """Sample ids in sheet order."""
        return [row[0] for row in self.rows]

    def sample_meta(self) -> pd.DataFrame:
        """The metadata as a frame indexed by sample id (columns :attr:`meta_columns`)."""
        return pd.DataFrame(list(self.rows), columns=["sample", *self.meta_columns]).set_index("sample")

    def contrast_samples(self, contrast: Contrast) -> list[str]:
        """The samples a contrast uses (its two levels; its arms when it names any), sheet order."""
        meta = self.sample_meta()
        return list(meta.index[contrast.sample_mask(meta)])


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
