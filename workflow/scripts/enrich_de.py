"""Snakemake adapter: GSEA prerank and ORA of every population's paired DE, a donor-level set test
that confirms or rejects each GSEA call, and the interpretation guards written into every row."""

from pathlib import Path

import anndata as ad
import pandas as pd

from pbmc_prepost import enrichment, plots
from pbmc_prepost.pseudobulk_de import safe_names
from pbmc_prepost.runtime import start_job
from pbmc_prepost.samplesheet import Contrast

smk = snakemake  # noqa: F821
p = smk.params
log = start_job(smk.log[0], smk.threads, p.seed)
contrast = Contrast(**p.contrast)
library = enrichment.read_gene_sets(smk.input.gmt, smk.input.set_metadata or None)
summary = pd.read_csv(smk.input.summary, sep="\t", keep_default_na=False)
tested = summary[summary["status"] == "tested"]
names = safe_names(summary["cell_type"])
path_of = {Path(path).stem: path for path in smk.input.tables}
tables = {label: pd.read_csv(path_of[names[label]], sep="\t") for label in tested["cell_type"]}
level = summary["level"].iloc[0]

gsea = enrichment.gsea_all_groups(tables, library, min_size=p.min_size, max_size=p.max_size,
                                  permutations=p.permutations, seed=p.seed, threads=smk.threads)
ora = enrichment.ora_all_groups(tables, library, alpha=p.alpha, min_size=p.min_size)

# Donor-level confirmation: the same sets, tested with donors as the unit.
pseudobulk = ad.read_h5ad(smk.input.pseudobulk)
donor_tests = []
for label, table in tables.items():
    pb_group = pseudobulk[pseudobulk.obs[level].astype(str).to_numpy() == label]
    donor_tests.append(enrichment.paired_set_test(pb_group, table["gene"], library, contrast, p.min_size)
                       .assign(cell_type=label))
donor_columns = [c for c in enrichment.DONOR_SET_COLUMNS if c not in ("n_genes", "n_pairs")] + ["cell_type"]
donor = (pd.concat(donor_tests, ignore_index=True).drop(columns=["n_genes", "n_pairs"]) if donor_tests
         else pd.DataFrame(columns=donor_columns))
gsea = gsea.merge(donor, on=["cell_type", "gene_set"], how="left")
gsea["call"] = [enrichment.confirmed_call(r.fdr, r.NES, r.donor_fdr, r.donor_shift, p.alpha) for r in gsea.itertuples()]

# Interpretation guards next to every row: donor pairs, the set's caveat, whether the population's
# share changed (composition), and the dissociation-stress control of the same population.
pairs = tested.set_index("cell_type")["n_pairs"]
composition = pd.read_csv(smk.input.composition, sep="\t")
composition = composition[composition["level"] == level].set_index("cell_type")
stress = gsea[gsea["gene_set"] == "QC_DISSOCIATION_EXVIVO_STRESS"].set_index("cell_type")


def guards(frame):
    frame.insert(1, "n_pairs", frame["cell_type"].map(pairs).astype("Int64"))
    frame["caveat"] = frame["gene_set"].map(library.meta["caveat"]).fillna("")
    changed = composition["padj"] < p.alpha
    frame["composition_note"] = [
        (f"share {'rose' if composition.loc[c, 'log2_ratio'] > 0 else 'fell'} (padj {composition.loc[c, 'padj']:.2g}); "
         "read with the composition table") if c in composition.index and changed.get(c, False) else ""
        for c in frame["cell_type"]]
    frame["stress_control"] = frame["cell_type"].map(stress["call"]).fillna("not tested") if len(stress) else "not tested"
    return frame


gsea = guards(gsea)
ora = guards(ora)
gsea.to_csv(smk.output.gsea, sep="\t", index=False, float_format="%.6g")
ora.to_csv(smk.output.ora, sep="\t", index=False, float_format="%.6g")
log.info("confirmed calls:\n%s", gsea.loc[gsea["call"] != "ns", ["cell_type", "gene_set", "NES", "fdr", "donor_fdr", "call"]].to_string(index=False))
if tables:
    # Stars mark calls that both tests confirm (the larger of the two FDRs, same direction).
    marked = gsea.assign(fdr=[max(r.fdr, r.donor_fdr) if r.call in ("up", "down") else 1.0 for r in gsea.itertuples()])
    marked.loc[gsea["NES"].isna(), "fdr"] = float("nan")
    enrichment.headline_heatmap(marked, library.meta, [smk.output.heatmap_png, smk.output.heatmap_pdf],
                                footnote=("* / ** : GSEA FDR and donor-level set test FDR both < 0.05 / 0.01 in the same "
                                          "direction. Colour: GSEA NES. Grey hatched: not tested. Framed: population the set "
                                          "is meant for."))
else:
    # Fewer than min_pairs complete donor pairs in every population: DE was not tested, so there
    # is nothing to enrich. The tables keep their header; the figure says why.
    reason = "; ".join(f"{r.cell_type}: {r.reason}" for r in summary.itertuples() if r.reason) or "no population tested"
    log.warning("no population was tested for DE, so no enrichment: %s", reason)
    plots.message_figure("Gene-set enrichment", "No population was tested for differential expression "
                         f"(see results/de/summary.tsv), so there is no enrichment.\n{reason[:300]}",
                         [smk.output.heatmap_png, smk.output.heatmap_pdf])
