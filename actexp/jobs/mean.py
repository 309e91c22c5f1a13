"""job=mean: the per-position corpus mean, sharded, resumable and idempotent.

extract: each shard of the corpus not yet on disk -> shards/<k>.safetensors (float64 sum [p, H],
count [p], the shard's document ids), written atomically; a valid shard is skipped.
aggregate: merge the shards in order (checkpointed) -> corpus_mean.safetensors.
progress: report what is done, without loading the model.
"""

import json
from pathlib import Path

from tqdm import tqdm

from .. import artifacts as store
from ..backends import make_backend
from ..corpus import Corpus
from ..errors import UserError
from ..io import write_json
from ..model import identity
from ..tracking import NULL

STAGES = ("all", "extract", "aggregate", "progress")
MANIFEST = "manifest.json"  # written when every shard is on disk


def extract(backend, cfg, corpus: Corpus, folder: Path, mid: str) -> dict:
    total = corpus.count()
    bar = tqdm(total=None if total is None else -(-total // cfg.corpus.shard_size), unit="shard",
               desc="mean", disable=None)
    n, docs, tokens, computed, seconds = 0, 0, 0, 0, 0.0
    for meta in backend.extract_shards(enumerate(corpus.shards()), folder, mid):
        n, docs, tokens = n + 1, docs + meta["docs"], tokens + meta["tokens"]
        if meta.get("computed"):
            computed, seconds = computed + meta["tokens"], seconds + meta["seconds"]
        bar.update(1)
        bar.set_postfix(docs=docs, tokens=tokens)
    bar.close()
    if n == 0:
        raise UserError(f"corpus {corpus.id} has no documents: check the corpus group (corpus.path, max_docs, min_chars)")
    write_json(folder / MANIFEST, {"n_shards": n, "docs": docs, "tokens": tokens, "corpus": corpus.id})
    return {"shards": n, "docs": docs, "tokens": tokens, "tokens_computed": computed,
            "extract_seconds": seconds, "tokens_per_s": computed / seconds if computed else None}


def aggregate(backend, cfg, corpus: Corpus, folder: Path, mid: str) -> dict:
    manifest = folder / MANIFEST
    if not manifest.exists():
        raise UserError(f"the shards of {mid} are not all extracted: run job=mean mean.stage=extract first")
    n = json.loads(manifest.read_text())["n_shards"]
    try:
        mean = backend.aggregate(folder, n, {"corpus": corpus.id, "mean_id": mid}, cfg.centering.min_count,
                                 cfg.centering.tail_start, cfg.mean.checkpoint_every)
    except UserError:
        manifest.unlink(missing_ok=True)  # a shard was missing or corrupt: extract must run again
        raise
    return {"docs": mean.metadata["docs"], "tokens": mean.metadata["tokens"], "mean": str(mean.path)}


def progress(backend, corpus: Corpus, folder: Path) -> dict:
    total = corpus.count()
    headers = backend.shard_headers(folder)
    docs, tokens = sum(h.get("docs", 0) for h in headers), sum(h.get("tokens", 0) for h in headers)
    total_shards = "?" if total is None else -(-total // corpus.cfg.shard_size)
    final = folder / store.MEAN_FILE
    print(f"{folder.name}\n  shards {len(headers)} / {total_shards}, documents {docs}"
          f"{'' if total is None else f' / {total}'}, tokens {tokens}\n"
          f"  mean: {final if final.exists() else 'not yet aggregated'}")
    return {"shards": len(headers), "docs": docs, "tokens": tokens, "mean": str(final) if final.exists() else None}


def run(cfg, out_dir, tracker=NULL) -> dict:
    if cfg.mean.stage not in STAGES:
        raise UserError(f"unknown mean.stage {cfg.mean.stage!r}: use one of {', '.join(STAGES)}")
    corpus = Corpus(cfg.corpus)
    model_id = identity(cfg.model)
    mid = store.mean_id(model_id, corpus.id)
    folder = store.mean_dir(cfg.paths.artifacts, mid)
    backend = make_backend(cfg)  # loads no model until a shard needs computing
    if cfg.mean.stage == "progress":
        return progress(backend, corpus, folder)
    final = store.read_header(folder / store.MEAN_FILE)
    settings = {"min_count": cfg.centering.min_count, "tail_start": cfg.centering.tail_start}
    if cfg.mean.stage == "all" and final and all(final.get(k) == v for k, v in settings.items()):
        print(f"corpus mean up to date: {folder / store.MEAN_FILE}")
        return {"docs": final["docs"], "tokens": final["tokens"], "mean": str(folder / store.MEAN_FILE)}
    metrics = {"mean_id": mid}
    if cfg.mean.stage in ("all", "extract"):
        metrics |= extract(backend, cfg, corpus, folder, mid)
    if cfg.mean.stage in ("all", "aggregate"):
        metrics |= aggregate(backend, cfg, corpus, folder, mid)
        tracker.artifact(Path(metrics["mean"]), "corpus_mean", mid[-60:])
        print(f"corpus mean of {metrics['docs']} documents, {metrics['tokens']} tokens -> {metrics['mean']}")
    else:
        print(f"{metrics['shards']} shards of {mid} extracted; merge them with mean.stage=aggregate")
    write_json(Path(out_dir) / "mean.json", metrics)
    return metrics
