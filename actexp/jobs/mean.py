"""job=mean: the per-position corpus mean, sharded, resumable, idempotent and safe to run twice at once.

extract: each shard of the corpus not yet on disk -> <artifacts>/stats/<stats-id>/shards/<k>.safetensors
(float64 sum [p, H], count [p], the shard's document ids), written atomically; a valid shard is skipped.
aggregate: merge the shards in order (checkpointed) -> <artifacts>/means/<mean-id>/corpus_mean.safetensors.
progress: report what is done, without loading the model.
"""

import contextlib
import logging
from pathlib import Path

from .. import progress as progress_lines
from ..data.corpus import Corpus
from ..errors import Interrupted, UserError
from ..report.console import wrote
from ..store import means
from ..store.io import write_json
from .common import corpus_of, stats_of

log = logging.getLogger(__name__)
STAGES = ("all", "extract", "aggregate", "progress")


def extract(backend, cfg, corpus: Corpus, stats: means.Stats) -> dict:
    total = corpus.count()
    total_shards = None if total is None else -(-total // cfg.corpus.shard_size)
    n, docs, tokens, computed, shards_computed, seconds = 0, 0, 0, 0, 0, 0.0
    with progress_lines.progress(total=total_shards, unit="shard", desc="mean", delay=0) as bar:
        try:
            for meta in backend.extract_shards(enumerate(corpus.shards()), stats):
                n, docs, tokens = n + 1, docs + meta["docs"], tokens + meta["tokens"]
                if meta.get("computed"):
                    computed, seconds = computed + meta["tokens"], seconds + meta["seconds"]
                    shards_computed += 1
                bar.set_postfix(docs=docs, tokens=tokens)
                bar.update(1)
        except KeyboardInterrupt:
            saved = backend.saved_shards(stats)
            raise Interrupted(f"{n if saved is None else saved} of {total_shards or '?'} shards of the corpus mean "
                              "saved") from None
    if n == 0:
        raise UserError(f"corpus {corpus.id} has no documents: check the corpus group (corpus.path, max_docs, min_chars)")
    means.write_manifest(stats, n, docs, tokens)
    return {"shards": n, "shards_computed": shards_computed, "docs": docs, "tokens": tokens,
            "tokens_computed": computed, "extract_seconds": seconds,
            "tokens_per_s": computed / seconds if computed else None}


def aggregate(backend, cfg, stats: means.Stats) -> dict:
    manifest = means.read_manifest(stats)
    if manifest is None:
        raise UserError(f"the shards of {stats.id} are not all extracted: run job=mean mean.stage=extract first")
    mean = backend.aggregate(stats, manifest["n_shards"], cfg.centering.min_count, cfg.centering.tail_start,
                             cfg.mean.checkpoint_every)
    return {"docs": mean.metadata["docs"], "tokens": mean.metadata["tokens"], "mean": str(mean.path),
            "sha256": mean.sha256}


def progress(backend, corpus: Corpus, stats: means.Stats, final: Path) -> dict:
    total = corpus.count()
    headers = backend.shard_headers(stats)
    docs, tokens = sum(h.get("docs", 0) for h in headers), sum(h.get("tokens", 0) for h in headers)
    total_shards = "?" if total is None else -(-total // corpus.cfg.shard_size)
    log.info(f"{stats.id}\n  shards {len(headers)} / {total_shards}, documents {docs}"
             f"{'' if total is None else f' / {total}'}, tokens {tokens}\n"
             f"  mean: {final if final.exists() else 'not yet aggregated'}")
    return {"shards": len(headers), "docs": docs, "tokens": tokens, "mean": str(final) if final.exists() else None}


def run(cfg, out_dir, tracker, backend) -> dict:
    if cfg.mean.stage not in STAGES:
        raise UserError(f"unknown mean.stage {cfg.mean.stage!r}: use one of {', '.join(STAGES)}")
    corpus = corpus_of(cfg)
    stats = stats_of(cfg, corpus)
    final = stats.mean_path(cfg.centering.min_count, cfg.centering.tail_start)
    if cfg.mean.stage == "progress":
        return progress(backend, corpus, stats, final)
    # What the mean is made from, in every record of it (mean.json, W&B).
    metrics = {"mean_id": stats.mean_id(cfg.centering.min_count, cfg.centering.tail_start), "corpus": corpus.id,
               "min_count": cfg.centering.min_count, "tail_start": cfg.centering.tail_start}
    done = None
    if cfg.mean.stage == "all" and final.is_file():
        with contextlib.suppress(UserError):  # a corrupt mean is merged again below
            done = means.load_mean(final)
    if done is not None and done.metadata.get("mean_id") != metrics["mean_id"]:
        raise UserError(f"{final} holds the mean {done.metadata.get('mean_id')}, not this config's: remove it and "
                        "run the same command again")
    if done is not None:
        metrics |= {"docs": done.metadata["docs"], "tokens": done.metadata["tokens"], "mean": str(final),
                    "sha256": done.sha256}
        log.info(f"corpus mean up to date ({metrics['docs']} documents, {metrics['tokens']} tokens): {final}")
        written = []  # reused, not written
    else:
        if cfg.mean.stage in ("all", "extract"):
            metrics |= extract(backend, cfg, corpus, stats)
        if cfg.mean.stage in ("all", "aggregate"):
            metrics |= aggregate(backend, cfg, stats)
            tracker.artifact(Path(metrics["mean"]), "corpus_mean", metrics["mean_id"][-60:])
            log.info(f"corpus mean of {metrics['docs']} documents, {metrics['tokens']} tokens")
            written = [Path(metrics["mean"])]
        else:
            log.info(f"{metrics['shards']} shards extracted; merge them with mean.stage=aggregate")
            written = [stats.folder / "shards"]
    # The file also names the model the mean is for (its prompt and layers included), as the mean's header does.
    written.append(write_json(Path(out_dir) / "mean.json", metrics | {"model": stats.identity}))
    wrote(log, written)
    return metrics
