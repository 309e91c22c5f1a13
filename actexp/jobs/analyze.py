"""job=analyze: does centring help, and which chunk? Retrieval, geometry and a 2-D projection of
the vectors, raw vs centred (analysis.py) -> analysis.json, analysis_projection.png, W&B summary.

analyze.source: samples (the 20 bundled texts: 10 long/short partners in 5 topics), jsonl (texts
with groups, analyze.path), csv (vectors CSVs of a csv or pipeline run) or store (a random sample of
analyze.max_rows rows of a vector store: geometry only, its documents have no groups).
"""

import logging
from pathlib import Path

import numpy as np

from ..data import labelled
from ..errors import UserError
from ..maths.analysis import analyze
from ..report import plots
from ..report.console import plural, with_interval, wrote
from ..store.io import write_json
from ..store.reader import VectorStore
from . import common

log = logging.getLogger(__name__)
SOURCES = ("samples", "jsonl", "csv", "store")


def _from_texts(cfg, backend, texts: labelled.LabelledTexts) -> dict:
    chunk_list = common.chunks(cfg.pooling)
    mean = common.corpus_mean(cfg)
    vectors = backend.vectors(texts.texts, chunk_list, mean).by_variant()
    return {"source": {"kind": cfg.analyze.source, "path": texts.source}, "names": texts.names, "groups": texts.groups,
            "partners": texts.partners, "vectors": vectors, "chunks": [c.label for c in chunk_list],
            "metadata": common.metadata(cfg, backend.metadata, mean)}


def _from_csvs(cfg, out_dir) -> dict:
    paths, loaded = zip(*common.vector_csvs(cfg.analyze.csvs, out_dir, cfg.pooling.name, "analyze.csvs"))
    names = loaded[0][1]
    samples = labelled.samples()  # CSVs of the samples get their labels; other texts get geometry only
    at = {n: i for i, n in enumerate(samples.names)}
    known = all(n in at for n in names)
    index = {n: i for i, n in enumerate(names)}
    sidecar = loaded[0][2]
    return {"source": {"kind": "csv", "path": [str(p) for p in paths]}, "names": names,
            "groups": [samples.groups[at[n]] for n in names] if known else None,
            "partners": [index.get(samples.names[samples.partners[at[n]]]) for n in names] if known else None, "vectors": {x[2].get("variant", p.stem): x[0] for x, p in zip(loaded, paths)},
            "chunks": sidecar.get("pooling", {}).get("labels") or [c.label for c in common.chunks(cfg.pooling)],
            # The centred CSV's sidecar names the mean (the raw one's says "none").
            "metadata": {k: sidecar.get(k) for k in ("model", "pooling")} | {"centering": loaded[-1][2].get("centering")}}


def _from_store(cfg) -> dict:
    if not cfg.analyze.path:
        raise UserError("analyze.source=store needs analyze.path=<store folder> (job=store prints it)")
    store = VectorStore.open(cfg.analyze.path)
    rng = np.random.default_rng(cfg.analyze.seed)
    rows = np.sort(rng.choice(len(store), size=min(cfg.analyze.max_rows, len(store)), replace=False))
    return {"source": {"kind": "store", "path": str(store.folder), "rows_sampled": len(rows), "rows": len(store),
                       "seed": cfg.analyze.seed},
            "names": [store.names[r] for r in rows], "groups": None, "partners": None,
            "vectors": {v: store.vectors(rows, variant=v) for v in store.variants},
            "chunks": store.manifest["pooling"]["labels"],
            "metadata": {k: store.manifest.get(k) for k in ("model", "pooling", "centering")}}


def load(cfg, out_dir, backend) -> dict:
    source = cfg.analyze.source
    if source == "samples":
        return _from_texts(cfg, backend, labelled.samples())
    if source == "jsonl":
        if not cfg.analyze.path:
            raise UserError("analyze.source=jsonl needs analyze.path=<file.jsonl> with \"text\" and \"group\" fields")
        return _from_texts(cfg, backend, labelled.from_jsonl(cfg.analyze.path))
    if source == "csv":
        return _from_csvs(cfg, out_dir)
    if source == "store":
        return _from_store(cfg)
    raise UserError(f"unknown analyze.source {source!r}: use one of {', '.join(SOURCES)}")


def run(cfg, out_dir, tracker, backend) -> dict:
    data = load(cfg, Path(out_dir), backend)
    tracker.centering(data["metadata"]["centering"] or {})  # from the CSVs' sidecars or the store's manifest too
    names, groups = data["names"], data["groups"]
    if len(names) < 2:
        raise UserError(f"analyze.source={cfg.analyze.source} gave {plural(len(names), 'text')}: the analysis needs two")
    boot = common.bootstrap_of(cfg)
    result = analyze(data["vectors"], data["chunks"], groups, data["partners"], boot)
    for record in result.records:
        record["source"] = data["source"]["path"]
    task = None if groups is None else ("partner" if data["partners"] is not None else "group")
    report = write_json(Path(out_dir) / "analysis.json", data["metadata"] | {
        "source": data["source"] | {"texts": len(names), "groups": None if groups is None else len(set(groups)),
                                    "retrieval": task},
        "texts": [{"name": n, "group": None if groups is None else groups[i]} for i, n in enumerate(names)],
        "results": result.records, "differences": result.differences,
        "bootstrap": boot.record("queries") if task else None})
    variants = list(data["vectors"])
    figure = plots.projection([result.coords[v] for v in variants], variants, names, groups,
                              Path(out_dir) / "analysis_projection.png",
                              f"First two principal components of {plural(len(names), 'text')} (all chunks)",
                              [result.explained[v] for v in variants])
    tracker.images([figure])
    tracker.table("analysis", ["metric", "variant", "chunk", "value", "low", "high", "texts"],
                  [[r["metric"], r["variant"], r["chunk"], float(r["value"]), *(r.get("interval") or [None, None]),
                    r["texts"]] for r in result.records])
    if cfg.analyze.log_vectors:  # W&B's embedding projector reads a table with a vector column
        tracker.table("vectors", ["name", "group", "variant", "vector"],
                      [[n, None if groups is None else groups[i], v, data["vectors"][v][i].tolist()]
                       for v in variants for i, n in enumerate(names)])
    log.info(summary(result, variants, task))
    wrote(log, [report, figure])
    return result.metrics()


def summary(result, variants, task) -> str:
    """Two to four lines: retrieval (with intervals, chance and the paired difference) and anisotropy,
    variant beside variant (all chunks)."""
    def row(metric, fmt="{:.3f}"):
        values = [result.value(metric, v) for v in variants]
        return " -> ".join(f"{v} {fmt.format(x)}" for v, x in zip(variants, values) if x is not None)

    lines = []
    if task:
        what = "each text's partner" if task == "partner" else "a text of the same group"
        lines.append(f"retrieval of {what}: recall@1 {retrieval_row(result.records, result.differences, 'recall@1')}")
        lines.append(f"  MRR {retrieval_row(result.records, result.differences, 'mrr')}; "
                     f"same-minus-different-group cosine {row('margin')}")
    lines.append(f"anisotropy (mean cosine{' across groups' if task else ''}): {row('anisotropy')}; "
                 f"top-3 dims' share of it {row('rogue_share')}; PC1 variance share {row('pc1_share')}")
    return "\n".join(lines)


def retrieval_row(records, differences, metric: str, chunk: str = "all") -> str:
    """"raw 0.203 [0.12, 0.30] -> centered 0.164 [...] (chance 0.187); centered - raw -0.039 [...]": the
    variants of one metric with their intervals, chance, and each paired difference from the first."""
    own = [r for r in records if (r["metric"], r["chunk"]) == (metric, chunk)]
    line = " -> ".join(f"{r['variant']} {with_interval(r['value'], r.get('interval'))}" for r in own)
    line += f" (chance {own[0]['chance']:.3f})" if own else ""
    for d in differences:
        if (d["metric"], d["chunk"]) == (metric, chunk):
            line += f"; {d['variant']} - {d['minus']} {with_interval(d['value'], d.get('interval'))}"
    return line
