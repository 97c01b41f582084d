"""One settings object per rule family, built from the validated config in one place.

Defaults live in the config schema only (``workflow/schemas/config.schema.yaml``): a settings
object is built from a config whose defaults the schema has filled in, and has none of its own.
:func:`default_config` gives that config for code outside Snakemake (tests, notebooks)::

    settings = DESettings.from_config(default_config())._replace(level="cell_type")

Settings are NamedTuples of builtins on purpose: Snakemake records a rule parameter only when it
is a builtin (a tuple here), so a changed threshold reruns the jobs that use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pbmc_prepost.design import Contrast, Design, Study

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


def default_config(**sections: Any) -> dict[str, Any]:
    """The workflow config with every default of the schema, plus the given sections' keys.

    ``default_config(de={"level": "cell_type"})`` replaces only ``de.level``.
    """
    from pbmc_prepost.configuration import validate_config

    return validate_config(sections, SCHEMA, source="default_config()")


def _tuple(values: Sequence | None) -> tuple:
    return tuple(values or ())


class QCSettings(NamedTuple):
    """Per-sample QC: metric thresholds (config ``qc``) and doublet calling (``doublets``)."""

    mito_pattern: str
    ribo_pattern: str
    hb_pattern: str
    nmads_counts: float
    nmads_genes: float
    nmads_top20: float
    nmads_mt: float
    max_pct_mt: float
    min_counts: int
    min_genes: int
    warn_share_removed: float
    remove_doublets: bool
    doublet_call: str
    expected_doublet_rate: float
    sim_doublet_ratio: float
    n_prin_comps: int
    mean_center: bool
    min_cells_for_doublets: int
    seed: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any], sample: str | None = None) -> QCSettings:
        """The QC of ``sample``: the ``qc``/``doublets`` sections plus that sample's overrides."""
        qc = dict(config["qc"])
        overrides = qc.pop("sample_overrides", {}).get(sample, {}) if sample else {}
        qc.update(overrides)
        doublets = config["doublets"]
        return cls(
            **{name: qc[name] for name in cls._fields if name in qc},
            remove_doublets=doublets["remove"],
            doublet_call=doublets["call"],
            expected_doublet_rate=doublets["expected_doublet_rate"],
            sim_doublet_ratio=doublets["sim_doublet_ratio"],
            n_prin_comps=doublets["n_prin_comps"],
            mean_center=doublets["mean_center"],
            min_cells_for_doublets=doublets["min_cells"],
            seed=config["seed"],
        )


class AmbientSettings(NamedTuple):
    """The ambient RNA estimate of each sample (config ``ambient``)."""

    method: str
    marker_pattern: str
    empty_max_umis: int
    correct: bool
    gene_families: str = "resources/markers/ambient_genes.tsv"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AmbientSettings:
        section = config["ambient"]
        return cls(
            section["method"],
            section["marker_pattern"],
            section["empty_max_umis"],
            section["correct"],
            section["gene_families"],
        )


class MergeSettings(NamedTuple):
    """Concatenation and shifted-log normalization (config ``merge``, ``normalize``)."""

    min_cells_per_gene: int
    min_cells_per_sample: int
    target_sum: float | None
    study: Study

    @classmethod
    def from_config(cls, config: Mapping[str, Any], study: Study) -> MergeSettings:
        merge = config["merge"]
        return cls(merge["min_cells_per_gene"], merge["min_cells_per_sample"], config["normalize"]["target_sum"], study)


class EmbedSettings(NamedTuple):
    """Highly variable genes, PCA, optional Harmony, kNN graph and UMAP."""

    hvg_flavor: str
    n_top_genes: int
    hvg_batch_key: str | None
    hvg_exclude_patterns: tuple[str, ...]
    n_comps: int
    integration: str
    integration_key: str
    harmony_theta: float
    harmony_max_iter: int
    n_neighbors: int
    n_pcs: int
    exact_neighbors_max_cells: int
    umap_min_dist: float
    umap_spectral_max_cells: int
    umap_fit_max_cells: int
    seed: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EmbedSettings:
        hvg, integration = config["hvg"], config["integration"]
        return cls(
            hvg["flavor"],
            hvg["n_top_genes"],
            hvg["batch_key"],
            _tuple(hvg["exclude_patterns"]),
            config["pca"]["n_comps"],
            integration["method"],
            integration["key"],
            integration["theta"],
            integration["max_iter"],
            config["neighbors"]["n_neighbors"],
            config["neighbors"]["n_pcs"],
            config["neighbors"]["exact_max_cells"],
            config["umap"]["min_dist"],
            config["umap"]["spectral_max_cells"],
            config["umap"]["fit_max_cells"],
            config["seed"],
        )


class ClusterSettings(NamedTuple):
    """Leiden clustering at several resolutions (config ``clustering``)."""

    resolutions: tuple[float, ...]
    default_resolution: float
    n_iterations: int
    seed: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ClusterSettings:
        clustering = config["clustering"]
        return cls(
            _tuple(clustering["resolutions"]),
            clustering["default_resolution"],
            clustering["n_iterations"],
            config["seed"],
        )


class MarkerSettings(NamedTuple):
    """Cluster markers (Wilcoxon on a stratified subsample) and the marker dot plots."""

    resolution: float
    max_cells_per_cluster: int
    n_genes: int
    dotplot_genes: dict[str, tuple[str, ...]]
    seed: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MarkerSettings:
        markers = config["markers"]
        return cls(
            config["clustering"]["default_resolution"],
            markers["max_cells_per_cluster"],
            markers["n_genes"],
            {name: _tuple(genes) for name, genes in markers["dotplot_genes"].items()},
            config["seed"],
        )


class FigureSettings(NamedTuple):
    """What the overview figures are coloured and split by."""

    condition_column: str
    reference: str
    resolution: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FigureSettings:
        contrast = Contrast.from_config(config)
        return cls(contrast.column, contrast.reference, config["clustering"]["default_resolution"])


class AnnotationSettings(NamedTuple):
    """Marker-based annotation (config ``annotation``; the dot plot genes of ``markers``)."""

    resolution: float
    cycling_threshold: float
    dotplot_genes: dict[str, tuple[str, ...]]
    condition_column: str
    reference: str
    seed: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AnnotationSettings:
        contrast = Contrast.from_config(config)
        return cls(
            config["annotation"]["resolution"],
            config["annotation"]["cycling_threshold"],
            MarkerSettings.from_config(config).dotplot_genes,
            contrast.column,
            contrast.reference,
            config["seed"],
        )


class CompositionSettings(NamedTuple):
    """The paired composition test (config ``composition``)."""

    transform: str
    min_pairs: int
    study: Study

    @classmethod
    def from_config(cls, config: Mapping[str, Any], study: Study) -> CompositionSettings:
        return cls(config["composition"]["transform"], config["composition"]["min_pairs"], study)


class QCBiasSettings(NamedTuple):
    """The check that QC removed each population alike at both timepoints (config ``qc``; pairs as
    the composition test)."""

    min_pairs: int
    fdr: float
    min_share_change: float
    study: Study

    @classmethod
    def from_config(cls, config: Mapping[str, Any], study: Study) -> QCBiasSettings:
        qc = config["qc"]
        return cls(config["composition"]["min_pairs"], qc["bias_fdr"], qc["bias_min_share_change"], study)


class DESettings(NamedTuple):
    """Paired pseudobulk differential expression (config ``de``).

    Attributes
    ----------
    contrast
        Levels compared and the pairing column.
    level
        obs column defining the populations tested separately (``lineage`` or ``cell_type``).
    min_cells, min_counts
        Pseudobulks (sample x population) with fewer cells or fewer total counts are dropped.
    min_pairs
        Populations with fewer complete donor pairs (unpaired fallback: fewer samples in either
        level) are skipped with a reason.
    filter_min_count, filter_min_total_count, filter_large_n, filter_min_prop
        edgeR ``filterByExpr`` parameters.
    alpha
        padj cut-off for ``n_up``/``n_down`` and DESeq2's independent filtering.
    use_batch
        Add the batch column to the design where it is estimable (not collinear).
    n_cpus
        pyDESeq2 inference processes (1 avoids joblib worker start-up).
    seed
        Seeds numpy's global generator before each fit (pyDESeq2 itself is deterministic).
    n_label, headline_genes
        Genes labelled per volcano, and drawn per donor in the paired plots.
    contrasts
        Every contrast of the run; ``contrast`` is the one a fit uses (the first by default;
        per-contrast callers pass ``settings._replace(contrast=c)``).
    """

    contrast: Contrast
    level: str
    min_cells: int
    min_counts: int
    min_pairs: int
    filter_min_count: float
    filter_min_total_count: float
    filter_large_n: int
    filter_min_prop: float
    alpha: float
    use_batch: bool
    n_cpus: int
    seed: int
    n_label: int
    headline_genes: tuple[str, ...]
    contrasts: tuple[Contrast, ...]

    @classmethod
    def from_config(cls, config: Mapping[str, Any], study: Study | None = None) -> DESettings:
        de = config["de"]
        expr = de["filter_by_expr"]
        contrasts = _contrasts(config, study)
        return cls(
            contrasts[0],
            de["level"],
            de["min_cells"],
            de["min_counts"],
            de["min_pairs"],
            expr["min_count"],
            expr["min_total_count"],
            expr["large_n"],
            expr["min_prop"],
            de["alpha"],
            de["use_batch"],
            1,
            config["seed"],
            de["n_label"],
            _tuple(de["headline_genes"]),
            contrasts,
        )


def _contrasts(config: Mapping[str, Any], study: Study | None) -> tuple[Contrast, ...]:
    """The run's contrasts: the study's (those resting on enough donors), else the config's."""
    return study.contrasts if study is not None else Design.from_config(dict(config)).contrasts


def _population_tests(config: Mapping[str, Any], study: Study | None) -> dict[str, Any]:
    """What every test of the DE's populations shares: the contrasts, the DE level and the seed."""
    contrasts = _contrasts(config, study)
    return {"contrast": contrasts[0], "contrasts": contrasts, "level": config["de"]["level"], "seed": config["seed"]}


class EnrichmentSettings(NamedTuple):
    """GSEA, ORA and the donor-level set test of each population's DE (config ``enrichment``)."""

    contrast: Contrast
    level: str
    min_size: int
    max_size: int
    permutations: int
    alpha: float
    seed: int
    contrasts: tuple[Contrast, ...]

    @classmethod
    def from_config(cls, config: Mapping[str, Any], study: Study | None = None) -> EnrichmentSettings:
        enrichment = config["enrichment"]
        return cls(
            **_population_tests(config, study),
            min_size=enrichment["min_size"],
            max_size=enrichment["max_size"],
            permutations=enrichment["permutations"],
            alpha=config["de"]["alpha"],
        )


class ScoreSettings(NamedTuple):
    """Donor-level module scores (config ``enrichment``: score_min_genes, min_pairs, headline)."""

    contrast: Contrast
    level: str
    min_genes: int
    min_pairs: int
    headline: tuple[tuple[str, str], ...]
    seed: int
    contrasts: tuple[Contrast, ...]

    @classmethod
    def from_config(cls, config: Mapping[str, Any], study: Study | None = None) -> ScoreSettings:
        enrichment = config["enrichment"]
        return cls(
            **_population_tests(config, study),
            min_genes=enrichment["score_min_genes"],
            min_pairs=enrichment["min_pairs"],
            headline=tuple((population, gene_set) for population, gene_set in enrichment["headline"]),
        )


class WorkflowSettings(NamedTuple):
    """Every rule family's settings, built once in ``workflow/rules/common.smk``."""

    config: dict[str, Any]
    study: Study
    ambient: AmbientSettings
    merge: MergeSettings
    embed: EmbedSettings
    cluster: ClusterSettings
    markers: MarkerSettings
    figures: FigureSettings
    annotation: AnnotationSettings
    composition: CompositionSettings
    qc_bias: QCBiasSettings
    de: DESettings
    enrichment: EnrichmentSettings
    scores: ScoreSettings

    def qc(self, sample: str) -> QCSettings:
        """The QC settings of one sample (its ``qc.sample_overrides`` applied)."""
        return QCSettings.from_config(self.config, sample)


def build_settings(config: Mapping[str, Any], study: Study) -> WorkflowSettings:
    """All settings of a run from the validated config and the study design."""
    return WorkflowSettings(
        config=dict(config),
        study=study,
        ambient=AmbientSettings.from_config(config),
        merge=MergeSettings.from_config(config, study),
        embed=EmbedSettings.from_config(config),
        cluster=ClusterSettings.from_config(config),
        markers=MarkerSettings.from_config(config),
        figures=FigureSettings.from_config(config),
        annotation=AnnotationSettings.from_config(config),
        composition=CompositionSettings.from_config(config, study),
        qc_bias=QCBiasSettings.from_config(config, study),
        de=DESettings.from_config(config, study),
        enrichment=EnrichmentSettings.from_config(config, study),
        scores=ScoreSettings.from_config(config, study),
    )
