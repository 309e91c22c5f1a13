"""job=neighbors: the k documents most cosine-similar to each query, raw and centred side by side
-> neighbors.csv (one row per query, variant and rank) + neighbors.json, and a table on stdout.

Among the bundled samples (neighbors.store=null) or the rows of a vector store (a folder written by
job=store), searched exactly, block by block (neighbors.py). Queries are texts (their vectors come
from this config's model, which must be the store's) or ids of rows already there.
"""

import logging
from pathlib import Path

import numpy as np

from ..data.corpus import bundled_samples
from ..errors import UserError
from ..maths.neighbors import top_k
from ..progress import progress
from ..report.console import wrote
from ..store.io import write_json, write_text
from ..store.layout import mismatch
from ..store.reader import Rows, VectorStore
from . import common

log = logging.getLogger(__name__)
COLUMNS = ["query", "variant", "rank", "row", "id", "name", "cosine"]


class Samples(Rows):
    """The bundled samples as rows in memory (reader.Rows), their vectors from the model."""

    def __init__(self, cfg, backend, mean):
        docs = bundled_samples()
        self._vectors = backend.vectors([d.text for d in docs], common.chunks(cfg.pooling), mean).by_variant()
        self.ids = [d.name for d in docs]  # a sample's name is its id here
        self.names, self.variants, self.folder = self.ids, list(self._vectors), Path("samples")
        self.manifest = common.metadata(cfg, backend.metadata, mean)

    def __len__(self):
        return len(self.ids)

    def rows_of(self, ids):
        missing = [i for i in ids if i not in self.ids]
        if missing:
            raise UserError(f"{missing[0]!r} is not a bundled sample: neighbors.ids takes names such as {self.ids[0]}")
        return np.array([self.ids.index(i) for i in ids])

    def vectors(self, rows, variant="raw"):
        return self._vectors[variant][rows]  # [n, D] float32


def _open_store(cfg, mean):
    """The store, checked to hold this config's model, pooling and mean when queries are texts."""
    store = VectorStore.open(cfg.neighbors.store)
    made = store.manifest
    if cfg.neighbors.queries:
        differs = mismatch(made["model"], common.model_identity(cfg))
        if differs is None and made["pooling"]["chunks"] != common.pooling_record(cfg.pooling)["chunks"]:
            differs = f"pooling={made['pooling']['name']} (this config has pooling={cfg.pooling.name})"
        if differs:
            raise UserError(f"the store {store.folder.name} was written for another model or pooling ({differs}): "
                            "query it with the overrides it was written with, or give neighbors.ids instead of texts")
        used = (made["centering"].get("mean") or {}).get("sha256")
        if mean is not None and used is None:
            raise UserError(f"the store {store.folder.name} holds raw vectors only: query it with centering=none")
        if mean is not None and used != mean.sha256:
            raise UserError(f"the store {store.folder.name} was centred with another mean ({str(used)[:12]}): "
                            f"set centering.mean_path={made['centering']['mean']['path']} or centering=none")
    return store


def run(cfg, out_dir, tracker, backend) -> dict:
    nb = cfg.neighbors
    if not nb.queries and not nb.ids:
        raise UserError('job=neighbors needs queries: neighbors.queries=["some text"] or neighbors.ids=[...]')
    mean = common.corpus_mean(cfg, tracker=tracker)
    store = Samples(cfg, backend, mean) if nb.store is None else _open_store(cfg, mean)
    # Text queries have a centred vector only with a mean; queries by id take every variant stored.
    variants = [v for v in store.variants if v == "raw" or mean is not None or not nb.queries]
    labels = list(nb.queries) + list(nb.ids)
    rows_of_ids = store.rows_of(list(nb.ids)) if nb.ids else np.zeros(0, dtype=np.int64)
    from_texts = backend.vectors(list(nb.queries), common.chunks(cfg.pooling), mean) if nb.queries else None
    records = []
    for variant in variants:
        parts = [store.vectors(rows_of_ids, variant=variant)]  # [len(ids), D]
        if from_texts is not None:
            parts.insert(0, (from_texts.raw if variant == "raw" else from_texts.centered).numpy())
        queries = np.concatenate(parts)  # [Q, D]
        with progress(total=len(store), unit="row", desc=f"neighbors ({variant})") as bar:
            rows, cosines = top_k(queries, lambda a, b: store.vectors(slice(a, b), variant=variant), len(store),
                                  nb.k + 1, nb.block_rows, bar.update)  # one more: a query by id finds itself first
        own = [-1] * len(nb.queries) + list(rows_of_ids)
        for q, label in enumerate(labels):
            found = [(row, cos) for row, cos in zip(rows[q], cosines[q]) if row != own[q]][:nb.k]
            for rank, (row, cos) in enumerate(found, 1):
                records.append({"query": label, "variant": variant, "rank": rank, "row": int(row),
                                "id": store.ids[row], "name": store.names[row], "cosine": float(cos)})
    out = Path(out_dir)
    csv_lines = [",".join(COLUMNS)] + [",".join(_cell(r[c]) for c in COLUMNS) for r in records]
    written = [write_text(out / "neighbors.csv", "\n".join(csv_lines) + "\n"),
               write_json(out / "neighbors.json", {k: store.manifest.get(k) for k in ("actexp_version", "model", "pooling", "centering")} | {
                   "among": str(store.folder), "rows": len(store), "k": nb.k, "neighbors": records})]
    tracker.table("neighbors", COLUMNS, [[r[c] for c in COLUMNS] for r in records])
    shown = list(nb.queries) + [f"{store.names[r]} (id {i})" if store.names[r] != i else i
                                for r, i in zip(rows_of_ids, nb.ids)]  # a query by id shows its document's name
    log.info(_side_by_side(records, labels, shown, variants))
    wrote(log, written)
    return {"queries": len(labels), "rows": len(store)}


def _cell(value) -> str:
    text = f"{value:.6f}" if isinstance(value, float) else str(value)
    return '"' + text.replace('"', '""') + '"' if any(ch in text for ch in ',"\n') else text


def _side_by_side(records, labels, shown, variants) -> str:
    """Per query: rank, then name and cosine of each variant in columns as wide as the names."""
    width = min(60, max([len(r["name"]) for r in records] + [4])) + 2
    lines = []
    for label, title in zip(labels, shown):
        mine = {v: [r for r in records if r["query"] == label and r["variant"] == v] for v in variants}
        lines.append(f"query {title[:70]!r}:")
        lines.append("  rank  " + "".join(f"{v:<{width + 9}}" for v in variants))
        for k in range(len(mine[variants[0]])):
            cells = "".join(f"{mine[v][k]['name'][:width - 2]:<{width}}{mine[v][k]['cosine']:>7.4f}  " for v in variants)
            lines.append(f"  {k + 1:>4}  {cells}")
    return "\n".join(lines)
