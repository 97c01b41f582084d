"""Merged stage, before clustering: concatenate samples, normalize, select genes, embed.

Methods and defaults follow the single-cell best-practices book (Heumos et al. 2023): shifted
logarithm (Ahlmann-Eltze & Huber 2023), ``seurat_v3`` highly variable genes on raw counts per
sample, PCA, optional Harmony on a technical batch key (Korsunsky et al. 2019; never on the
treatment contrast), kNN graph, and UMAP for display only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from pbmc_prepost.h5ad import read_h5ad_parts, read_matrix
from pbmc_prepost.normalization import read_shifted_log, shifted_log
from pbmc_prepost.runtime import import_scanpy
from pbmc_prepost.settings import EmbedSettings, MergeSettings

log = logging.getLogger(__name__)
sc = import_scanpy()


def merge_samples(objects: Mapping[str, ad.AnnData], settings: MergeSettings) -> ad.AnnData:
    """Concatenate per-sample QC-passed objects in memory and attach sample metadata.

    The workflow writes the same object to disk sample by sample (:func:`write_merged`); this
    in-memory form is for small data and tests.

    Parameters
    ----------
    objects
        sample id -> AnnData with raw counts in ``X`` and obs names ``sample:barcode``; read twice,
        so a mapping that loads each sample on access keeps one sample in memory at a time.
    settings
        ``min_cells_per_sample``: samples with fewer cells are left out (logged);
        ``min_cells_per_gene``: genes detected in fewer cells are dropped (scanpy
        ``filter_genes``); ``study``: the sheet columns copied into ``obs`` (donor, timepoint,
        batch ...).

    Returns
    -------
    AnnData
        Raw counts (float32 CSR) in ``layers["counts"]`` and, until :func:`normalize` runs, in ``X``
        too (the same matrix object, not a copy). Only genes present in every sample are kept.
    """
    names, keep = _merge_plan(objects, settings)
    parts = [_sample_part(objects[s], keep) for s in names]
    merged = ad.concat(parts, join="inner", merge="first")
    sizes = [part.n_obs for part in parts]
    del parts
    _add_sample_columns(merged.obs, names, sizes, settings)
    merged.layers["counts"] = merged.X
    return merged


def write_merged(objects: Mapping[str, ad.AnnData], settings: MergeSettings, path: str | Path) -> ad.AnnData:
    """:func:`merge_samples` written to ``path`` one sample at a time, with the size factors.

    The file holds the raw counts in ``layers["counts"]`` and no ``X``: the shifted-log values are
    computed from the counts where a step needs them (:func:`shifted_log`), from ``obs["size_factor"]``
    (:func:`size_factors`), so no step stores or reads a second cells x genes matrix. Memory is one
    sample's matrix, whatever the number of samples.

    Returns
    -------
    AnnData
        The merged object without matrices (obs, var, uns), as written.
    """
    from pbmc_prepost.h5ad import CsrWriter, dict_group

    names, keep = _merge_plan(objects, settings)
    frames, totals = [], []
    with h5py.File(path, "w") as handle:
        writer = CsrWriter(dict_group(handle, "layers"), "counts")
        for s in names:
            part = _sample_part(objects[s], keep)
            writer.append(part.X)
            totals.append(np.asarray(part.X.sum(axis=1, dtype=np.float64)).ravel())
            frames.append(ad.AnnData(obs=part.obs, var=part.var))
            del part
    merged = ad.concat(frames, join="inner", merge="first")
    _add_sample_columns(merged.obs, names, [f.n_obs for f in frames], settings)
    merged.obs["size_factor"], target = size_factors(np.concatenate(totals), settings.target_sum)
    merged.uns["normalization"] = {"method": "shifted_log", "target_sum": target}
    _write_skeleton(merged, path)
    return merged


def _merge_plan(objects: Mapping[str, ad.AnnData], settings: MergeSettings) -> tuple[list[str], pd.Index]:
    """The samples merged and the genes kept (first pass over the samples, one in memory at a time)."""
    min_cells_per_gene = settings.min_cells_per_gene
    # Count the cells detecting each gene, then keep the genes that pass scanpy filter_genes' rule
    # (detected in at least min_cells_per_gene cells) before concatenating, so the cells x genes
    # matrix is built once.
    detected, names = {}, []
    for s in objects:
        sample = objects[s]
        if sample.n_obs < settings.min_cells_per_sample:
            log.warning(
                "sample %s left out of the merged stage: %d cells passed QC, fewer than merge.min_cells_per_sample %d",
                s,
                sample.n_obs,
                settings.min_cells_per_sample,
            )
            continue
        names.append(s)
        detected[s] = pd.Series(np.asarray((sample.X > 0).sum(axis=0)).ravel(), index=sample.var_names)
    if not names:
        raise ValueError(
            f"no sample has merge.min_cells_per_sample = {settings.min_cells_per_sample} cells after QC: "
            "check the QC summary (results/qc/summary.tsv) and the QC thresholds"
        )
    gene_sets = [set(detected[s].index) for s in names]
    common = set.intersection(*gene_sets)
    dropped = set.union(*gene_sets) - common
    if dropped:
        log.warning(
            "%d genes are not measured in every sample and are dropped (e.g. %s)",
            len(dropped),
            ", ".join(sorted(dropped)[:5]),
        )
    genes = pd.Index([g for g in detected[names[0]].index if g in common])
    n_detected = sum(detected[s].reindex(genes).to_numpy() for s in names)
    keep = genes[n_detected >= min_cells_per_gene]
    log.info(
        "merging %d samples: %d genes (%d detected in < %d cells dropped)",
        len(names),
        len(keep),
        len(genes) - len(keep),
        min_cells_per_gene,
    )
    return names, keep


def _sample_part(sample: ad.AnnData, keep: pd.Index) -> ad.AnnData:
    part = sample[:, keep].copy()
    part.X = sp.csr_matrix(part.X, dtype=np.float32)
    return part


def _add_sample_columns(obs: pd.DataFrame, names: list[str], sizes: list[int], settings: MergeSettings) -> None:
    sample_meta, meta_columns = settings.study.sample_meta(), settings.study.meta_columns
    obs["sample"] = np.repeat(names, sizes)
    for column in meta_columns:
        obs[column] = obs["sample"].map(sample_meta[column]).astype(str).to_numpy()
    for column in ["sample", *meta_columns]:
        obs[column] = pd.Categorical(obs[column])
    log.info("merged %d samples: %d cells", len(names), len(obs))


def _write_skeleton(adata: ad.AnnData, path: str | Path) -> None:
    """obs, var and uns of ``adata`` into the ``.h5ad`` at ``path`` (whose matrices are written)."""
    from anndata.io import write_elem

    from pbmc_prepost.h5ad import mark_anndata

    with h5py.File(path, "a") as handle:
        for key, value in (("obs", adata.obs), ("var", adata.var), ("uns", dict(adata.uns))):
            if key in handle:
                del handle[key]
            write_elem(handle, key, value)
        mark_anndata(handle)


def size_factors(totals: np.ndarray, target_sum: float | None) -> tuple[np.ndarray, float]:
    """Each cell's total counts over the target, as ``scanpy.pp.normalize_total`` divides by.

    ``target_sum`` None: the median of the non-zero totals (scanpy's default). float32, as scanpy
    computes them for float32 counts, so :func:`shifted_log` gives scanpy's values bit for bit.
    """
    totals = np.asarray(totals).astype(np.float32)
    target = np.median(totals[totals > 0]) if target_sum is None else target_sum
    return totals / target, float(target)


def normalize(adata: ad.AnnData, target_sum: float | None) -> None:
    """Shifted-log normalization into ``X``; raw counts stay in ``layers["counts"]``."""
    adata.X = adata.layers["counts"].copy()
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)


#: Columns of the per-batch report of the HVG selection (``results/merged/hvg_batches.tsv``).
HVG_REPORT_COLUMNS = ["batch", "n_cells", "status", "detail"]


def select_hvgs(adata: ad.AnnData, settings: EmbedSettings, counts_path: str | Path | None = None) -> pd.DataFrame:
    """Highly variable genes on raw counts, ignoring genes that only create artefactual structure.

    Genes matching ``exclude_patterns`` (mitochondrial, haemoglobin, TCR/BCR V genes ...) are never
    selected. Cell-cycle genes are kept on purpose: proliferation is an expected IL-7 effect.

    With ``seurat_v3`` and a batch key, genes are ranked within each batch and the ranks combined
    as scanpy does (:func:`combine_batch_ranks`), but every batch is fitted on its own, on the
    genes it detects in at least :data:`MIN_CELLS_PER_GENE` cells: in a small, shallow sample of
    real data (a few hundred cells of about 1,300 UMIs, some 20,000 genes measured) most genes are
    seen once, in one cell, so thousands of genes share one mean and variance, and the local
    regression of variance on mean that seurat_v3 fits is singular (scanpy raises "reciprocal
    condition number ..."; simulated samples, whose genes are all expressed, never did). A batch
    whose fit still fails is pooled with the other failed batches; if that fails too, or it is
    the only one, it is left out of the ranking; if no batch can be fitted, all cells are ranked
    together. Every fallback is logged and returned.

    With ``counts_path`` (the merged file), ``adata`` holds only obs and var and each batch's counts
    are read from the file when it is fitted: memory is one batch, not all cells (a ranking of all
    cells together still reads them all).

    Returns
    -------
    pandas.DataFrame
        One row per batch (columns :data:`HVG_REPORT_COLUMNS`): ``status`` ``own``, ``pooled``,
        ``left out`` or ``all cells`` (no batch ranking), and why.
    """
    n_top_genes, flavor = settings.n_top_genes, settings.hvg_flavor
    batch_key, exclude_patterns = settings.hvg_batch_key, settings.hvg_exclude_patterns
    pattern = re.compile("|".join(f"(?:{p})" for p in exclude_patterns)) if exclude_patterns else None
    excluded = np.array([bool(pattern.search(g)) for g in adata.var_names]) if pattern else np.zeros(adata.n_vars, bool)
    candidates = adata[:, ~excluded]

    def cells(rows: np.ndarray | None = None) -> ad.AnnData:
        """The candidate genes' counts of the cells in the boolean mask ``rows`` (None: all)."""
        if counts_path is None:
            return candidates if rows is None else candidates[rows]
        positions = None if rows is None else np.flatnonzero(rows)
        part = candidates if rows is None else candidates[rows]
        counts = read_matrix(counts_path, "layers/counts", positions, genes=candidates.var_names)
        return ad.AnnData(obs=part.obs, var=part.var, layers={"counts": counts})

    n_top = min(n_top_genes, candidates.n_vars)
    if batch_key and candidates.obs[batch_key].nunique() < 2:
        batch_key = None
    if flavor == "seurat_v3" and batch_key:
        highly_variable, report = _hvgs_per_batch(candidates, cells, n_top, batch_key)
    else:
        kwargs = {"layer": "counts"} if flavor == "seurat_v3" else {}
        table = sc.pp.highly_variable_genes(
            cells(), n_top_genes=n_top, flavor=flavor, batch_key=batch_key, inplace=False, **kwargs
        )
        highly_variable = pd.Series(table["highly_variable"].to_numpy(), index=candidates.var_names)
        report = pd.DataFrame(
            [
                {
                    "batch": "all",
                    "n_cells": candidates.n_obs,
                    "status": "all cells",
                    "detail": f"batch_key {batch_key}" if batch_key else "no batch key",
                }
            ]
        )
    adata.var["highly_variable"] = highly_variable.reindex(adata.var_names, fill_value=False).astype(bool)
    adata.var["hvg_excluded"] = excluded
    log.info(
        "%d highly variable genes (%s, batch_key=%s); %d genes excluded by pattern",
        int(adata.var["highly_variable"].sum()),
        flavor,
        batch_key,
        int(excluded.sum()),
    )
    return report[HVG_REPORT_COLUMNS]


#: Cells of a batch that must detect a gene for it to enter the batch's seurat_v3 fit (as
#: ``sc.pp.filter_genes(min_cells=3)`` does for a whole dataset).
MIN_CELLS_PER_GENE = 3


def _seurat_v3_variances(adata: ad.AnnData, batch_key: str) -> np.ndarray:
    """seurat_v3's normalized variance of every gene in ``adata`` (one batch or a pool).

    Only genes detected in at least :data:`MIN_CELLS_PER_GENE` of the cells are fitted; the others
    get 0 (they cannot be variable within this batch). A gene seen once in one cell has mean 1/n
    and the same variance as every other such gene; in a small, shallow sample of real data (some
    20,000 genes measured, most seen once or twice) these ties fill the loess window and its fit
    is singular.
    """
    detected = np.asarray((adata.layers["counts"] > 0).sum(axis=0)).ravel() >= MIN_CELLS_PER_GENE
    variances = np.zeros(adata.n_vars, dtype=np.float64)
    if detected.sum() < 2:
        raise ValueError(f"fewer than 2 genes detected in {MIN_CELLS_PER_GENE} or more cells")
    one = ad.AnnData(
        obs=pd.DataFrame({batch_key: pd.Categorical(["pool"] * adata.n_obs)}, index=adata.obs_names),
        var=pd.DataFrame(index=adata.var_names[detected]),
        layers={"counts": adata.layers["counts"][:, detected]},
    )
    table = sc.pp.highly_variable_genes(
        one, flavor="seurat_v3", layer="counts", batch_key=batch_key, n_top_genes=min(2, one.n_vars), inplace=False
    )
    variances[detected] = table["variances_norm"].to_numpy(dtype=np.float64)
    return variances


def _hvgs_per_batch(
    candidates: ad.AnnData, cells: Callable[..., ad.AnnData], n_top: int, batch_key: str
) -> tuple[pd.Series, pd.DataFrame]:
    """seurat_v3 per batch with pooling and fallbacks (see :func:`select_hvgs`)."""
    batches = candidates.obs[batch_key].astype(str)
    variances, rows, failed = [], [], {}
    for batch in sorted(batches.unique()):
        members = (batches == batch).to_numpy()
        try:
            variances.append(_seurat_v3_variances(cells(members), batch_key))
            rows.append({"batch": batch, "n_cells": int(members.sum()), "status": "own", "detail": ""})
        except ValueError as error:  # skmisc's loess: singular fit on tied means
            failed[batch] = f"{str(error).splitlines()[0][:80]}"
    if len(failed) == 1:
        status, detail = (
            "left out",
            "the only batch that failed: left out of the ranking (its cells are still embedded)",
        )
    elif failed:
        pool = batches.isin(list(failed)).to_numpy()
        try:
            variances.append(_seurat_v3_variances(cells(pool), batch_key))
            status, detail = "pooled", f"fitted together with {', '.join(b for b in failed)} ({int(pool.sum())} cells)"
        except ValueError as error:
            status, detail = "left out", f"pooled fit failed too ({str(error).splitlines()[0][:60]})"
    for batch, reason in failed.items():
        log.warning("HVG selection: the seurat_v3 fit of batch %s failed (%s): %s", batch, reason, detail)
        rows.append(
            {
                "batch": batch,
                "n_cells": int((batches == batch).sum()),
                "status": status,
                "detail": f"own fit failed ({reason}); {detail}",
            }
        )
    if not variances:
        log.warning("HVG selection: no batch could be fitted on its own or pooled: all cells ranked together")
        table = sc.pp.highly_variable_genes(
            cells(), n_top_genes=n_top, flavor="seurat_v3", layer="counts", inplace=False
        )
        report = pd.DataFrame(
            [{"batch": "all", "n_cells": candidates.n_obs, "status": "all cells", "detail": "no batch could be fitted"}]
        )
        return pd.Series(table["highly_variable"].to_numpy(), index=candidates.var_names), report
    return combine_batch_ranks(np.vstack(variances), candidates.var_names, n_top), pd.DataFrame(rows)


def combine_batch_ranks(variances: np.ndarray, genes: pd.Index, n_top: int) -> pd.Series:
    """The genes seurat_v3 selects from per-batch normalized variances (batches x genes).

    As scanpy does with ``batch_key`` (after Seurat's SelectIntegrationFeatures): genes ranked within
    each batch, ranks beyond ``n_top`` discarded, genes ordered by their median rank, then by the
    number of batches in which they rank within ``n_top``.
    """
    ranked = np.argsort(np.argsort(-variances, axis=1), axis=1).astype(np.float32)
    n_batches = np.sum((ranked < n_top).astype(int), axis=0)
    ranked[ranked >= n_top] = np.nan
    median = np.ma.median(np.ma.masked_invalid(ranked), axis=0).filled(np.nan)
    frame = pd.DataFrame({"highly_variable_rank": median, "highly_variable_nbatches": n_batches}, index=genes)
    order = frame.sort_values(
        ["highly_variable_rank", "highly_variable_nbatches"], ascending=[True, False], na_position="last"
    ).index
    return pd.Series(genes.isin(order[:n_top]), index=genes)


def embed(adata: ad.AnnData, settings: EmbedSettings) -> str:
    """PCA, optional Harmony and the kNN graph. Returns the representation used for the graph.

    The UMAP is drawn from the graph by :func:`layout` in a job of its own, beside clustering.
    """
    seed, integration, batch_key = settings.seed, settings.integration, settings.integration_key
    n_comps = int(min(settings.n_comps, adata.n_obs - 1, int(adata.var["highly_variable"].sum()) - 1))
    sc.pp.pca(adata, n_comps=n_comps, mask_var="highly_variable", random_state=seed)
    log.info("PCA: %d components of %d cells x %d genes", n_comps, adata.n_obs, int(adata.var["highly_variable"].sum()))
    use_rep = "X_pca"
    if integration == "harmony":
        if adata.obs[batch_key].nunique() < 2:
            log.warning("integration: harmony requested but '%s' has one level: skipped", batch_key)
        else:
            import harmonypy

            result = harmonypy.run_harmony(
                adata.obsm["X_pca"],
                adata.obs,
                [batch_key],
                theta=settings.harmony_theta,
                max_iter_harmony=settings.harmony_max_iter,
                random_state=seed,
                verbose=False,
            )
            corrected = np.asarray(result.Z_corr)
            if corrected.shape[0] != adata.n_obs:
                corrected = corrected.T
            adata.obsm["X_pca_harmony"] = corrected.astype(np.float32)
            use_rep = "X_pca_harmony"
            log.info("harmony on '%s' (%d levels)", batch_key, adata.obs[batch_key].nunique())
    exact = knn_graph(adata, use_rep, settings)
    log.info("kNN graph: %d neighbours on %s (%s)", settings.n_neighbors, use_rep, "exact" if exact else "pynndescent")
    return use_rep


def knn_graph(adata: ad.AnnData, use_rep: str, settings: EmbedSettings) -> bool:
    """scanpy's kNN graph on ``use_rep``: exact (sklearn) up to ``exact_neighbors_max_cells``
    cells, pynndescent above. Returns whether it was exact."""
    exact = adata.n_obs <= settings.exact_neighbors_max_cells
    sc.pp.neighbors(
        adata,
        n_neighbors=settings.n_neighbors,
        n_pcs=min(settings.n_pcs, adata.obsm[use_rep].shape[1]),
        use_rep=use_rep,
        random_state=settings.seed,
        transformer="sklearn" if exact else None,
    )
    return exact


def layout(adata: ad.AnnData, use_rep: str, settings: EmbedSettings) -> None:
    """UMAP of ``adata`` into ``obsm["X_umap"]`` (display only; clusters come from the graph).

    Up to ``settings.umap_fit_max_cells`` cells, UMAP of every cell on the kNN graph. Above, the
    layout is fitted on that many cells drawn in proportion to each sample (their own kNN graph on
    the same representation) and every other cell is placed on it from the full graph
    (:func:`place_on_layout`): one layout epoch visits every edge, so a million cells took minutes
    per 20 epochs. ``uns["umap"]`` records the start and the cells fitted.
    """
    n_obs, fit_max = adata.n_obs, settings.umap_fit_max_cells
    fitted = np.ones(n_obs, dtype=bool)
    target = adata
    if 0 < fit_max < n_obs:
        fitted = np.zeros(n_obs, dtype=bool)
        fitted[proportional_subsample(adata.obs["sample"], fit_max, settings.seed)] = True
        target = ad.AnnData(obs=adata.obs.iloc[np.flatnonzero(fitted)][[]].copy())
        target.obsm[use_rep] = np.asarray(adata.obsm[use_rep])[fitted]
        knn_graph(target, use_rep, settings)
    init = "spectral"
    if target.n_obs > settings.umap_spectral_max_cells:  # ARPACK on the kNN graph: minutes at 10^6 cells
        init = np.ascontiguousarray(target.obsm[use_rep][:, :2], dtype=np.float32)
    sc.tl.umap(target, min_dist=settings.umap_min_dist, random_state=settings.seed, init_pos=init)
    uns = dict(target.uns["umap"])
    uns["init"] = "spectral" if isinstance(init, str) else f"{use_rep}[:, :2]"
    uns["fitted_cells"] = int(fitted.sum())
    if target is not adata:
        adata.obsm["X_umap"] = place_on_layout(adata.obsp["connectivities"], fitted, target.obsm["X_umap"])
    adata.uns["umap"] = uns
    log.info(
        "UMAP fitted on %d of %d cells (layout started from %s)%s",
        uns["fitted_cells"],
        n_obs,
        uns["init"],
        "; the others placed from the kNN graph" if target is not adata else "",
    )


def proportional_subsample(labels: pd.Series, total: int, seed: int) -> np.ndarray:
    """Sorted positions of about ``total`` cells drawn at random, each label in proportion to its size
    (at least one cell of every label)."""
    rng = np.random.default_rng(seed)
    codes = pd.Categorical(labels).codes
    share = total / len(codes)
    chosen = []
    for code in np.unique(codes):
        members = np.flatnonzero(codes == code)
        take = min(len(members), max(1, round(len(members) * share)))
        chosen.append(rng.choice(members, take, replace=False))
    return np.sort(np.concatenate(chosen))


def place_on_layout(graph: sp.spmatrix, fitted: np.ndarray, fitted_layout: np.ndarray) -> np.ndarray:
    """Layout of every cell: fitted cells keep ``fitted_layout``, every other cell goes to the mean
    of its placed neighbours' positions weighted by the graph's edge weights.

    Cells none of whose neighbours is fitted are placed in later rounds, from neighbours placed
    before them; cells with no path to a fitted cell (a component of the graph without one) go to
    the centre of the fitted layout, and are counted in the log.
    """
    graph = sp.csr_matrix(graph)
    positions = np.zeros((graph.shape[0], 2), dtype=np.float64)
    positions[fitted] = fitted_layout
    placed = fitted.copy()
    while not placed.all():
        todo = np.flatnonzero(~placed)
        weights = graph[todo][:, placed]
        total = np.asarray(weights.sum(axis=1)).ravel()
        reached = total > 0
        if not reached.any():
            log.warning("UMAP: %d cells have no path to a fitted cell: placed at the layout's centre", len(todo))
            positions[todo] = fitted_layout.mean(axis=0)
            break
        positions[todo[reached]] = (weights[reached] @ positions[placed]) / total[reached, None]
        placed[todo[reached]] = True
    return positions.astype(np.float32)


def embed_merged(path: str | Path, settings: EmbedSettings) -> tuple[ad.AnnData, pd.DataFrame]:
    """HVGs, PCA, optional Harmony and kNN graph of the merged object at ``path``.

    ``seurat_v3`` ranks genes on the raw counts of one batch at a time (other flavours on the
    shifted-log values of all cells); PCA then holds only the highly variable genes' shifted-log
    values, computed from their counts and the size factors (:func:`shifted_log`).

    Returns
    -------
    embedding, hvg_report
        Only what this step adds (the next steps join it back to the counts by cell name):
        obs ``sample``/``barcode``, var ``highly_variable``/``hvg_excluded``, the embeddings,
        the kNN graph and the ``uns`` entries of PCA and neighbours; and the per-batch
        report of the HVG selection (:func:`select_hvgs`).
    """
    if settings.hvg_flavor == "seurat_v3":  # ranked batch by batch, each batch's counts read in turn
        adata = read_h5ad_parts(path, x=False)
        hvg_report = select_hvgs(adata, settings, counts_path=path)
    else:  # these flavours rank genes on the shifted-log values of all cells
        adata = read_h5ad_parts(path, x=False, layers=["counts"])
        adata.X = shifted_log(adata.layers.pop("counts"), adata.obs["size_factor"].to_numpy())
        hvg_report = select_hvgs(adata, settings)
    chosen = adata.var[["highly_variable", "hvg_excluded"]]
    del adata
    adata = read_shifted_log(path, genes=chosen.index[chosen["highly_variable"]])
    adata.var[chosen.columns] = chosen
    use_rep = embed(adata, settings)
    embedding = ad.AnnData(
        obs=adata.obs[["sample", "barcode"]].copy(),
        var=chosen.copy(),
        obsm={k: v for k, v in adata.obsm.items()},
        obsp={k: v for k, v in adata.obsp.items()},
        uns={
            "neighbors": adata.uns["neighbors"],
            "pca": adata.uns["pca"],
            "graph_representation": use_rep,
        },
    )
    return embedding, hvg_report


def layout_embedding(path: str | Path, settings: EmbedSettings) -> ad.AnnData:
    """The UMAP (:func:`layout`) of the embedding step's output at ``path``.

    Returns only what the layout adds: obs ``sample``/``barcode``, ``obsm["X_umap"]`` and
    ``uns["umap"]``. The graph and the representation it was built on are read from the file.
    """
    embedding = ad.read_h5ad(path)
    use_rep = str(embedding.uns["graph_representation"])
    layout(embedding, use_rep, settings)
    return ad.AnnData(
        obs=embedding.obs[["sample", "barcode"]].copy(),
        obsm={"X_umap": embedding.obsm["X_umap"]},
        uns={"umap": embedding.uns["umap"]},
    )


def layout_table(layout_data: ad.AnnData) -> pd.DataFrame:
    """``sample``, ``barcode``, ``umap_1``, ``umap_2`` (rounded to 5 decimals) of every cell."""
    table = layout_data.obs[["sample", "barcode"]].copy()
    table["umap_1"] = layout_data.obsm["X_umap"][:, 0].round(5)
    table["umap_2"] = layout_data.obsm["X_umap"][:, 1].round(5)
    return table
