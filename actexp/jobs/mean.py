"""job=mean: the per-position corpus mean, sharded, resumable and idempotent.

extract: each shard of the corpus not yet on disk -> shards/<k>.safetensors (float64 sum [p, H],
count [p], the shard's document ids), written atomically; a valid shard is skipped.
aggregate: merge the shards in order (checkpointed) -> corpus_mean.safetensors.
progress: report what is done, without loading the model.
"""

import json
import logging
import time
from pathlib import Path

from tqdm import tqdm

from .. import artifacts as store
from ..backends import make_backend
from ..centering import CorpusMean, MeanAccumulator
from ..corpus import Corpus
from ..errors import UserError
from ..io import write_json
from ..model import identity
from ..tracking import NULL

log = logging.getLogger(__name__)
STAGES = ("all", "extract", "aggregate", "progress")
MANIFEST = "manifest.json"  # written when every shard is on disk


def _shards_done(folder: Path):
    return sorted((folder / "shards").glob("*.safetensors"))


def extract(cfg, corpus: Corpus, folder: Path, mid: str) -> dict:
    store.clean_temp_files(folder)
    backend, docs, tokens, computed, seconds = None, 0, 0, 0, 0.0
    total = corpus.count()
    bar = tqdm(total=None if total is None else -(-total // cfg.corpus.shard_size), unit="shard",
               desc="mean", disable=None)
    k = -1
    for k, shard in enumerate(corpus.shards()):
        doc_ids, path = [d.id for d in shard], store.shard_path(folder, k)
        stats = store.read_stats(path) if path.exists() else None
        if stats is None or stats[2].get("doc_ids") != doc_ids:
            if path.exists():
                log.warning("shard %d (%s) is corrupt, truncated or stale: recomputing it", k, path)
            backend = backend or make_backend(cfg)
            start = time.perf_counter()
            acc = backend.mean_stats([d.text for d in shard])
            meta = {"shard": k, "doc_ids": doc_ids, "docs": acc.docs, "tokens": acc.tokens,
                    "mean_id": mid, "dtype": backend.metadata["dtype"]}
            store.write_stats(path, acc.sum, acc.count, meta)
            seconds += time.perf_counter() - start  # forward, accumulation and the shard write
            computed += acc.tokens
            stats = (None, None, meta)
        docs, tokens = docs + stats[2]["docs"], tokens + stats[2]["tokens"]
        bar.update(1)
        bar.set_postfix(docs=docs, tokens=tokens)
    bar.close()
    if k < 0:
        raise UserError(f"corpus {corpus.id} has no documents: check the corpus group (corpus.path, max_docs, min_chars)")
    write_json(folder / MANIFEST, {"n_shards": k + 1, "docs": docs, "tokens": tokens, "corpus": corpus.id})
    return {"shards": k + 1, "docs": docs, "tokens": tokens, "tokens_computed": computed,
            "extract_seconds": seconds, "tokens_per_s": computed / seconds if computed else None}


def aggregate(cfg, model_id: dict, corpus: Corpus, folder: Path, mid: str) -> dict:
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise UserError(f"the shards of {mid} are not all extracted: run job=mean mean.stage=extract first")
    n = json.loads(manifest_path.read_text())["n_shards"]
    acc, first = MeanAccumulator(model_id["hidden_size"]), 0
    ckpt = store.read_stats(folder / store.CHECKPOINT_FILE)
    if ckpt is not None and ckpt[2].get("n_shards") == n:  # resume a merge that was interrupted
        acc.merge(ckpt[0], ckpt[1], ckpt[2]["docs"], ckpt[2]["tokens"])
        first = ckpt[2]["next"]
    dtype = None
    for k in range(first, n):
        path = store.shard_path(folder, k)
        stats = store.read_stats(path)
        if stats is None:
            path.unlink(missing_ok=True)
            manifest_path.unlink()
            raise UserError(f"shard {k} of {mid} is missing or corrupt and was removed: "
                            "run the same job=mean command again to recompute it")
        acc.merge(stats[0], stats[1], stats[2]["docs"], stats[2]["tokens"])
        dtype = dtype or stats[2].get("dtype")
        if (k + 1) % cfg.mean.checkpoint_every == 0 and k + 1 < n:
            store.write_stats(folder / store.CHECKPOINT_FILE, acc.sum, acc.count,
                              {"next": k + 1, "n_shards": n, "docs": acc.docs, "tokens": acc.tokens})
    meta = model_id | {"corpus": corpus.id, "mean_id": mid, "docs": acc.docs, "tokens": acc.tokens,
                       "shards": n, "dtype": dtype}
    mean = CorpusMean.from_stats(acc.sum, acc.count, model_id["max_tokens"], cfg.centering.min_count,
                                 cfg.centering.tail_start, meta)
    mean.save(folder / store.MEAN_FILE)
    (folder / store.CHECKPOINT_FILE).unlink(missing_ok=True)
    return {"docs": acc.docs, "tokens": acc.tokens, "mean": str(mean.path)}


def progress(corpus: Corpus, folder: Path) -> dict:
    total = corpus.count()
    done = _shards_done(folder)
    headers = [store.read_header(p) or {} for p in done]
    docs, tokens = sum(h.get("docs", 0) for h in headers), sum(h.get("tokens", 0) for h in headers)
    total_shards = "?" if total is None else -(-total // corpus.cfg.shard_size)
    final = folder / store.MEAN_FILE
    print(f"{folder.name}\n  shards {len(done)} / {total_shards}, documents {docs}"
          f"{'' if total is None else f' / {total}'}, tokens {tokens}\n"
          f"  mean: {final if final.exists() else 'not yet aggregated'}")
    return {"shards": len(done), "docs": docs, "tokens": tokens, "mean": str(final) if final.exists() else None}


def run(cfg, out_dir, tracker=NULL) -> dict:
    if cfg.mean.stage not in STAGES:
        raise UserError(f"unknown mean.stage {cfg.mean.stage!r}: use one of {', '.join(STAGES)}")
    corpus = Corpus(cfg.corpus)
    model_id = identity(cfg.model)
    mid = store.mean_id(model_id, corpus.id)
    folder = store.mean_dir(cfg.paths.artifacts, mid)
    if cfg.mean.stage == "progress":
        return progress(corpus, folder)
    final = store.read_header(folder / store.MEAN_FILE)
    settings = {"min_count": cfg.centering.min_count, "tail_start": cfg.centering.tail_start}
    if cfg.mean.stage == "all" and final and all(final.get(k) == v for k, v in settings.items()):
        print(f"corpus mean up to date: {folder / store.MEAN_FILE}")
        return {"docs": final["docs"], "tokens": final["tokens"], "mean": str(folder / store.MEAN_FILE)}
    metrics = {"mean_id": mid}
    if cfg.mean.stage in ("all", "extract"):
        metrics |= extract(cfg, corpus, folder, mid)
    if cfg.mean.stage in ("all", "aggregate"):
        metrics |= aggregate(cfg, model_id, corpus, folder, mid)
        tracker.artifact(Path(metrics["mean"]), "corpus_mean", mid[-60:])
        print(f"corpus mean of {metrics['docs']} documents, {metrics['tokens']} tokens -> {metrics['mean']}")
    else:
        print(f"{metrics['shards']} shards of {mid} extracted; merge them with mean.stage=aggregate")
    write_json(Path(out_dir) / "mean.json", metrics)
    return metrics
