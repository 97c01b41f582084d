"""Donor-level module scores: a score per cell, averaged per sample x population, paired test.

Each set is scored with scanpy's control-gene method (Satija et al. 2015; Tirosh et al. 2016),
then averaged per sample and population; the paired t-test across donors uses donors as the unit
of replication. Cells are never replicates (Squair et al. 2021).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from pbmc_prepost.design import Contrast
from pbmc_prepost.genesets import GeneSetLibrary
from pbmc_prepost.settings import ScoreSettings
from pbmc_prepost.tables import tests_table

log = logging.getLogger(__name__)


def _looks_like_counts(X) -> bool:
    """True when X holds only non-negative integers with large values (raw counts, not log data)."""
    values = X.data if sp.issparse(X) else np.asarray(X).ravel()
    values = values[:1_000_000]  # a sample suffices to tell counts from log values
    if values.size == 0:
        return False
    return bool(np.nanmax(values) > 30 and np.all(np.mod(values, 1) == 0))


def _refuse_counts(X) -> None:
    if _looks_like_counts(X):
        raise ValueError(
            "module_scores: the expression values look like raw counts; score log-normalized data "
            "(X after normalize_total + log1p, or pass layer=)"
        )


def _scores_per_cell(
    X, blocks: Iterable | None, columns: dict[str, tuple[np.ndarray, np.ndarray]], n_cells: int
) -> dict[str, np.ndarray]:
    """Each set's per-cell score (members' mean minus controls' mean) from ``X`` or its row ``blocks``."""
    if blocks is None:
        return {name: _mean_over(X, 1, g) - _mean_over(X, 1, c) for name, (g, c) in columns.items()}
    per_cell = {name: np.empty(n_cells, dtype=np.float64) for name in columns}
    covered = 0
    for start, stop, block in blocks:
        if start == 0:
            _refuse_counts(block)
        for name, (g, c) in columns.items():
            per_cell[name][start:stop] = _mean_over(block, 1, g) - _mean_over(block, 1, c)
        covered += stop - start
    if covered != n_cells:
        raise ValueError(f"module_scores: the blocks hold {covered} cells, the data {n_cells}")
    return per_cell


def _mean_over(X, axis: int, columns: np.ndarray | None = None) -> np.ndarray:
    """Mean over ``axis`` of X (or of its ``columns``), as scanpy's ``score_genes`` computes it."""
    part = X if columns is None else X[:, columns]
    if sp.issparse(part):
        return np.asarray(part.sum(axis=axis, dtype="float64")).ravel() / part.shape[axis]
    # scanpy: np.nanmean, in the data's dtype for the gene means and float64 for the cell means.
    return np.nanmean(part, axis=axis, dtype=None if axis == 0 else "float64")


def expression_bins(X, var_names: pd.Index, n_bins: int = 25) -> pd.Series:
    """Expression bin of every gene, as scanpy's ``score_genes`` cuts the gene pool.

    Genes are ranked by mean expression over all cells and cut into ``n_bins`` - 1 equal-sized
    bins (scanpy >= 1.10: ``rank(method="min") // round(n_genes / (n_bins - 1))``).

    Parameters
    ----------
    X
        Cells x genes, log-normalized (sparse or dense).
    var_names
        Gene names of the columns of ``X``.
    n_bins
        scanpy's ``n_bins``.

    Returns
    -------
    pandas.Series
        Bin per gene (index: gene names; genes whose mean is not finite left out).
    """
    return bins_of_means(pd.Series(_mean_over(X, axis=0), index=var_names), n_bins)


def bins_of_means(means: pd.Series, n_bins: int = 25) -> pd.Series:
    """:func:`expression_bins` from every gene's mean (index: gene names), for data on disk."""
    means = pd.Series(means.to_numpy(), index=pd.Index(means.index, dtype="string"))
    means = means[np.isfinite(means)]
    n_items = int(np.round(len(means) / (n_bins - 1)))
    return means.rank(method="min") // n_items


def score_genes(
    X, var_names: pd.Index, bins: pd.Series, genes: Sequence[str], ctrl_size: int = 50, random_state: int = 0
) -> np.ndarray:
    """Per-cell score of one gene set: scanpy's ``tl.score_genes`` with precomputed expression bins.

    The mean of the set's genes minus the mean of control genes drawn, ``ctrl_size`` per bin, from
    the expression bins the set's genes fall in (Satija et al. 2015; Tirosh et al. 2016). The
    draw repeats scanpy's exactly (``numpy`` RandomState seeded with ``random_state``, pandas
    ``sample``), so the scores equal ``sc.tl.score_genes(..., random_state=random_state)``
    (tested); unlike it, this neither copies X nor recomputes the gene means for every set.

    Parameters
    ----------
    X
        Cells x genes, log-normalized.
    var_names
        Gene names of the columns of ``X``.
    bins
        :func:`expression_bins` of ``X``.
    genes
        The set's genes (absent ones are ignored).
    ctrl_size
        Control genes per bin (scanpy's default 50).
    random_state
        Seed of the control-gene draw.

    Returns
    -------
    numpy.ndarray
        float64 score per cell.
    """
    members, control = set_columns(pd.Index(var_names), bins, genes, ctrl_size, random_state)
    return _mean_over(X, 1, members) - _mean_over(X, 1, control)


def set_columns(
    var_names: pd.Index, bins: pd.Series, genes: Sequence[str], ctrl_size: int = 50, random_state: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Column positions in ``var_names`` of a set's genes and of its control genes (:func:`score_genes`)."""
    gene_list = pd.Index(list(genes)).intersection(var_names)
    if len(gene_list) == 0:
        raise ValueError("score_genes: none of the genes are in the data")
    control = control_genes(bins, gene_list, ctrl_size, random_state)
    return var_names.get_indexer(gene_list), var_names.get_indexer(control)


def control_genes(bins: pd.Series, gene_list: pd.Index, ctrl_size: int = 50, random_state: int = 0) -> pd.Index:
    """The control genes :func:`score_genes` draws for ``gene_list`` (scanpy's draw, see there)."""
    draw = np.random.RandomState(random_state)
    control = pd.Index([], dtype="string")
    for cut in np.unique(bins.loc[gene_list]):
        candidates = bins.index[bins.to_numpy() == cut]
        if ctrl_size < len(candidates):
            candidates = candidates.to_series().sample(ctrl_size, random_state=draw).index
        control = control.union(candidates.difference(gene_list))
    if len(control) == 0:
        raise RuntimeError(f"score_genes: no control genes in the expression bins of {list(gene_list)[:5]}")
    return control


def genes_to_score(library: GeneSetLibrary, means: pd.Series, min_genes: int = 3, seed: int = 0) -> list[str]:
    """Every gene :func:`module_scores` reads for ``library``: the members present and their
    control genes, from every gene's mean (``means``); the rest of the matrix can stay on disk."""
    bins = bins_of_means(means)
    needed: set[str] = set()
    for genes in library.sets.values():
        present = [g for g in genes if g in bins.index]
        needed.update(present)  # a set skipped for too few members still reports how many are present
        if len(present) >= min_genes:
            needed.update(control_genes(bins, pd.Index(present).intersection(bins.index), random_state=seed))
    return sorted(needed)


def module_scores(
    adata: ad.AnnData,
    library: GeneSetLibrary,
    group_col: str,
    contrast: Contrast,
    sample_col: str = "sample",
    min_genes: int = 3,
    layer: str | None = None,
    seed: int = 0,
    means: pd.Series | None = None,
    blocks: Iterable[tuple[int, int, sp.csr_matrix]] | None = None,
) -> pd.DataFrame:
    """Score every set per cell (scanpy's ``score_genes`` method), then average per sample x population.

    Each set is scored on the log-normalized data with scanpy's control-gene method (Satija et
    al. 2015; Tirosh et al. 2016: mean of the set minus mean of expression-matched random genes,
    default ``ctrl_size=50``, fixed ``random_state``). Members absent from the data are dropped;
    a set with fewer than ``min_genes`` members present is skipped, logged, and listed in
    ``result.attrs["skipped_sets"]``. Per-cell scores are only a step: the output has one mean
    per sample x population x set, because cells are not independent replicates (Squair 2021).

    Parameters
    ----------
    adata
        Cells; log-normalized expression in ``X`` (or ``layer``), symbols as ``var_names``; obs
        with ``sample_col``, ``group_col``, the contrast column and (optional) pairing column.
    library
        Gene sets.
    group_col
        obs column with the population label (``lineage`` or ``cell_type``).
    contrast
        Names the contrast and pairing columns.
    sample_col
        obs column naming the sample.
    min_genes
        Fewest members present for a set to be scored.
    layer
        Layer with log-normalized data (None: ``X``).
    seed
        ``random_state`` of the control-gene draw.
    means
        Every gene's mean over all cells (:func:`bins_of_means`), for an ``adata`` that holds
        only the genes scoring reads (:func:`genes_to_score`).
    blocks
        The log-normalized values as ``(start, stop, rows)`` blocks of ``adata``'s cells and genes
        (:func:`pbmc_prepost.h5ad.iter_row_blocks`), for an ``adata`` without ``X`` read from disk:
        a cell's score depends on its own row only, so memory holds one block, not the matrix.
        Needs ``means``.

    Returns
    -------
    pandas.DataFrame
        Columns ``sample``, ``<contrast.pair_by>`` ('' without pairing column),
        ``<contrast.column>``, ``population``, ``gene_set``, ``n_cells``, ``mean_score``; one row
        per sample x population x scored set, sorted by population, set (library order), sample.
        ``attrs["skipped_sets"]``: set -> reason; ``attrs["expected_direction"]``: set -> direction.

    Raises
    ------
    ValueError
        A column is missing, sample-level columns vary within a sample, or the data look like
        raw counts.
    """
    missing = [c for c in (sample_col, group_col, contrast.column) if c not in adata.obs.columns]
    if missing:
        raise ValueError(f"module_scores: obs column(s) {missing} missing; obs has {list(adata.obs.columns)}")
    if blocks is not None and means is None:
        raise ValueError("module_scores: blocks need means (every gene's mean over all cells)")
    X = None if blocks is not None else adata.layers[layer] if layer is not None else adata.X
    if X is not None:
        _refuse_counts(X)
    obs = pd.DataFrame(
        {
            "sample": adata.obs[sample_col].astype(str).to_numpy(),
            "pair": (
                adata.obs[contrast.pair_by].astype(str).to_numpy()
                if contrast.pair_by in adata.obs.columns
                else np.full(adata.n_obs, "", dtype=object)
            ),
            "level": adata.obs[contrast.column].astype(str).to_numpy(),
            "population": adata.obs[group_col].astype(object).to_numpy(),
        }
    )
    for column in ("pair", "level"):
        varying = obs.groupby("sample")[column].nunique()
        if (varying > 1).any():
            bad = sorted(varying.index[varying > 1])[:5]
            raise ValueError(f"module_scores: {column} varies within sample(s) {bad}")
    has_group = pd.notna(obs["population"]).to_numpy()
    if not has_group.all():
        log.warning("module_scores: %d cell(s) without a '%s' label left out", int((~has_group).sum()), group_col)
    obs["population"] = obs["population"].astype(str)

    var_names = pd.Index(adata.var_names.astype(str))
    # The expression bins depend only on the data: computed once for all sets (scanpy recomputes
    # them, with two copies of X, for every set).
    bins = expression_bins(X, var_names) if means is None else bins_of_means(means)
    skipped: dict[str, str] = {}
    columns = {}
    for name, genes in library.sets.items():
        present = [g for g in genes if g in var_names]
        if len(present) < min_genes:
            skipped[name] = f"{len(present)} of {len(genes)} genes in the data < min_genes {min_genes}"
            log.warning("module_scores: %s skipped: %s", name, skipped[name])
            continue
        if len(present) < len(genes):
            log.info("module_scores: %s: %d of %d genes in the data", name, len(present), len(genes))
        columns[name] = set_columns(var_names, bins, present, random_state=seed)
    per_cell = _scores_per_cell(X, blocks, columns, adata.n_obs)

    columns = ["sample", contrast.pair_by, contrast.column, "population", "gene_set", "n_cells", "mean_score"]
    cells = obs.loc[has_group].reset_index(drop=True)
    frames = []
    keys = ["population", "sample", "pair", "level"]
    for name, values in per_cell.items():
        part = cells.assign(score=values[has_group])
        agg = part.groupby(keys, sort=True).agg(n_cells=("score", "size"), mean_score=("score", "mean")).reset_index()
        frames.append(agg.assign(gene_set=name))
    if frames:
        result = pd.concat(frames, ignore_index=True)
        rank = {name: i for i, name in enumerate(library.sets)}
        result = (
            result.assign(_rank=result["gene_set"].map(rank))
            .sort_values(["population", "_rank", "sample"], kind="mergesort")
            .reset_index(drop=True)
        )
        result = result.rename(columns={"pair": contrast.pair_by, "level": contrast.column})[columns]
        result["n_cells"] = result["n_cells"].astype(np.int64)
    else:
        result = pd.DataFrame(columns=columns)
    result.attrs["skipped_sets"] = skipped
    result.attrs["expected_direction"] = {name: library.expected_direction(name) for name in library.sets}
    return result


def paired_score_test(
    scores: pd.DataFrame, contrast: Contrast, min_pairs: int = 3, meta: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Paired t-test of donor-level mean module scores, treated vs reference, per population x set.

    A donor's score at a level is the mean of its samples' ``mean_score`` (one sample per level
    in the usual design). Donors without both levels are excluded and named in ``note``.
    Benjamini-Hochberg across all tested population x set rows.

    Parameters
    ----------
    scores
        Output of :func:`module_scores` (columns ``sample``, ``<pair_by>``, ``<column>``,
        ``population``, ``gene_set``, ``mean_score``).
    contrast
        Reference and treated levels and the pairing column.
    min_pairs
        Fewest complete donor pairs for a p-value; below it p is NaN and the note says why.
    meta
        Library metadata (``GeneSetLibrary.meta``) for ``expected_direction``; default:
        ``scores.attrs["expected_direction"]`` when present, else "unknown".

    Returns
    -------
    pandas.DataFrame
        Columns ``population``, ``gene_set``, ``n_pairs``, ``mean_<reference>``,
        ``mean_<treated>`` (means over the paired donors), ``delta`` (mean within-donor
        change, treated minus reference), ``pvalue``, ``padj``, ``expected_direction``,
        ``note``. Rows in the order of ``scores`` (population, then set).
    """
    ref, trt, pair_by = contrast.reference, contrast.treated, contrast.pair_by
    mean_ref, mean_trt = f"mean_{ref}", f"mean_{trt}"
    columns = [
        "population",
        "gene_set",
        "n_pairs",
        mean_ref,
        mean_trt,
        "delta",
        "pvalue",
        "padj",
        "expected_direction",
        "note",
    ]
    needed = ["population", "gene_set", contrast.column, "mean_score"]
    missing = [c for c in needed if c not in scores.columns]
    if missing:
        raise ValueError(f"paired_score_test: scores lack column(s) {missing}; pass the output of module_scores")
    if meta is not None:
        directions = meta["expected_direction"].astype(str).to_dict()
    else:
        directions = dict(scores.attrs.get("expected_direction", {}))
    table = scores.copy()
    table["_pair"] = table[pair_by].astype(str) if pair_by in table.columns else ""
    table["_level"] = table[contrast.column].astype(str)
    table = table[table["_level"].isin([ref, trt])]
    rows = []
    for (group, name), part in table.groupby(["population", "gene_set"], sort=False):
        donor_means = part.groupby(["_pair", "_level"])["mean_score"].mean().unstack("_level")
        donor_means = donor_means.reindex(columns=[ref, trt])
        donor_means = donor_means.drop(index="", errors="ignore")  # samples without a donor cannot pair
        complete = donor_means.dropna()
        notes = []
        incomplete = donor_means.index[donor_means.isna().any(axis=1)]
        if len(incomplete):
            named = [f"{d} (no {ref if pd.isna(donor_means.at[d, ref]) else trt})" for d in incomplete]
            notes.append(f"{pair_by}(s) without both {ref} and {trt} excluded: {', '.join(named)}")
        n_pairs = len(complete)
        diff = (complete[trt] - complete[ref]).to_numpy(dtype=float)
        pvalue = math.nan
        if n_pairs < min_pairs:
            notes.append(f"{n_pairs} complete {pair_by} pair(s) < min_pairs {min_pairs}: not tested")
        elif np.allclose(diff, diff[0], rtol=0, atol=1e-12 * max(1.0, float(np.abs(diff).max()))):
            notes.append("every donor changes by the same amount (zero variance): t-test undefined")
        else:
            pvalue = float(stats.ttest_rel(complete[trt], complete[ref]).pvalue)
        rows.append(
            {
                "population": group,
                "gene_set": name,
                "n_pairs": n_pairs,
                mean_ref: float(complete[ref].mean()) if n_pairs else math.nan,
                mean_trt: float(complete[trt].mean()) if n_pairs else math.nan,
                "delta": float(diff.mean()) if n_pairs else math.nan,
                "pvalue": pvalue,
                "padj": math.nan,
                "expected_direction": directions.get(name, "unknown"),
                "note": "; ".join(notes),
            }
        )
    return tests_table(rows, columns)


def between_arm_score_test(
    scores: pd.DataFrame,
    contrast: Contrast,
    min_pairs: int = 3,
    covariates: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Difference of changes of donor-level module scores between two arms, per population x set.

    Each donor's change of mean score (treated minus reference) is compared between
    ``contrast.arm`` and ``contrast.versus_arm`` (:func:`pbmc_prepost.arms.compare_changes`).

    Parameters
    ----------
    scores
        :func:`module_scores` with the arm column added (``contrast.arm_column``).
    contrast
        A two-arm contrast.
    min_pairs
        Fewest donors with both levels per arm.
    covariates
        Donor-level covariates (:func:`pbmc_prepost.arms.donor_covariates`).

    Returns
    -------
    pandas.DataFrame
        The columns of :func:`paired_score_test` (``delta`` = the difference of the arms' mean
        changes, ``mean_<level>`` over both arms' donors) plus ``change_arm`` and
        ``change_versus_arm``.
    """
    from pbmc_prepost import arms

    ref, trt = contrast.reference, contrast.treated
    directions = dict(scores.attrs.get("expected_direction", {}))
    rows = []
    for (group, name), part in scores.groupby(["population", "gene_set"], sort=False):
        changes = arms.donor_changes(part, contrast, "mean_score")
        result = arms.compare_changes(changes, contrast, min_pairs, covariates)
        rows.append(
            {
                "population": group,
                "gene_set": name,
                "n_pairs": len(changes),
                f"mean_{ref}": float(changes["reference"].mean()) if len(changes) else math.nan,
                f"mean_{trt}": float(changes["treated"].mean()) if len(changes) else math.nan,
                "delta": result["difference"],
                "pvalue": result["pvalue"],
                "padj": math.nan,
                "expected_direction": directions.get(name, "unknown"),
                "note": result["note"],
                "change_arm": result["change_arm"],
                "change_versus_arm": result["change_versus_arm"],
            }
        )
    return tests_table(rows)


def contrast_score_test(
    scores: pd.DataFrame, contrast: Contrast, min_pairs: int, sample_meta: pd.DataFrame
) -> pd.DataFrame:
    """The module-score test of one contrast on its own samples (paired, or between two arms)."""
    if not contrast.arms:
        return paired_score_test(scores, contrast, min_pairs=min_pairs)
    from pbmc_prepost import arms

    own = scores.copy()
    own[contrast.arm_column] = own["sample"].map(sample_meta[contrast.arm_column].astype(str))
    own = own[own[contrast.arm_column].isin(contrast.arms)]
    own.attrs = scores.attrs
    if contrast.is_interaction:
        return between_arm_score_test(own, contrast, min_pairs, arms.donor_covariates(sample_meta, contrast))
    test = paired_score_test(own, contrast, min_pairs=min_pairs)
    test["note"] = [f"donors of arm {contrast.arm} only" + (f"; {n}" if n else "") for n in test["note"]]
    return test


def score_populations(
    adata: ad.AnnData,
    library: GeneSetLibrary,
    settings: ScoreSettings,
    annotation_notes: dict[str, str] | None = None,
    means: pd.Series | None = None,
    blocks: Iterable[tuple[int, int, sp.csr_matrix]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`module_scores` at the DE level and every contrast's test (:func:`contrast_score_test`);
    the note of a population whose annotation is flagged says so.

    Returns
    -------
    donor_scores, test
        The per-sample means (``level`` first) and the tests (``contrast`` and ``level`` first).
    """
    scores = module_scores(
        adata,
        library,
        settings.level,
        settings.contrast,
        min_genes=settings.min_genes,
        seed=settings.seed,
        means=means,
        blocks=blocks,
    )
    sample_meta = adata.obs.drop_duplicates("sample").set_index("sample")
    notes = annotation_notes or {}
    tests = []
    for contrast in settings.contrasts:
        test = contrast_score_test(scores, contrast, settings.min_pairs, sample_meta)
        test["note"] = [
            "; ".join(n for n in (note, notes.get(p, "")) if n) for p, note in zip(test["population"], test["note"])
        ]
        test.insert(0, "level", settings.level)
        test.insert(0, "contrast", contrast.name)
        tests.append(test)
    arm_columns = {c.arm_column for c in settings.contrasts if c.arm_column}
    for column in sorted(arm_columns):  # the arm of each donor, for the two-arm figures
        scores[column] = scores["sample"].map(sample_meta[column].astype(str))
    scores.insert(0, "level", settings.level)
    return scores, pd.concat(tests, ignore_index=True)
