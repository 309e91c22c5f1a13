"""job=store: the vectors of every document of the corpus group, raw and (with a mean) centred from
one forward pass, in a sharded, resumable, memory-mapped store (store/vectors.py; read it with
actexp.store.reader.VectorStore).

all: each shard not yet on disk (or on the Modal volume) is computed and written atomically;
valid ones are skipped; manifest.json is written when every shard is there.
progress: report shards, documents and tokens without loading the model.
"""

import json
import logging
import os
import shlex
from typing import Optional

from ..data.corpus import Corpus
from ..errors import Interrupted, UserError
from ..progress import progress
from ..report.console import plural, wrote
from ..store import vectors as vs
from ..store.layout import MANIFEST
from ..store.layout import root as store_root
from . import common

log = logging.getLogger(__name__)
STAGES = ("all", "progress")


def layout_of(cfg, corpus: Corpus, mean) -> vs.StoreLayout:
    return vs.StoreLayout(store_root(cfg.paths.artifacts), common.model_identity(cfg), common.pooling_record(cfg.pooling),
                          None if mean is None else mean.sha256, corpus.id, vs.check_storage_dtype(cfg.store.storage_dtype),
                          cfg.store.shard_size, batch_kb=cfg.store.batch_kb)


def command() -> Optional[str]:
    """This run's job=store command, less what does not choose the store (Hydra's folders, the
    logger, the stage, verify) and paths.artifacts (a reader puts in where the store lies then):
    the manifest keeps it, so that a reader that finds a damaged shard names the command that
    writes it again. None outside the CLI (the API composes its config itself)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    skip = ("hydra.", "hydra/", "logger", "job=", "store.stage=", "store.verify=", "paths.artifacts=")
    keep = [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(skip)]
    return " ".join(["python -m actexp.run job=store", *map(shlex.quote, keep)])


def _finished(layout: vs.StoreLayout, cfg):
    """The metrics of a store already finished where it was asked for (its manifest names this store
    and every shard file is there): a re-run costs a manifest read, not a re-read of every shard.
    None when it must be checked or written (store.verify=true re-checks every shard's checksum)."""
    path = layout.folder / MANIFEST
    if cfg.store.verify or not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    local = manifest.get("location") == "local"
    if manifest.get("store_id") != layout.id or (cfg.store.download and not local):
        return None
    if local and not all((layout.folder / s["file"]).is_file() for s in manifest["shards"]):
        return None
    log.info(f"vector store up to date: {manifest['rows']} documents in {len(manifest['shards'])} shards "
             f"{'at ' + str(layout.folder) if local else 'on ' + manifest['location']} "
             "(store.verify=true checks every shard again)")
    return {"store_id": layout.id, "shards": len(manifest["shards"]), "docs": manifest["rows"],
            "tokens": manifest["tokens"], "tokens_computed": 0, "tokens_per_s": None,
            "location": manifest["location"]}


def run(cfg, out_dir, tracker, backend) -> dict:
    if cfg.store.stage not in STAGES:
        raise UserError(f"unknown store.stage {cfg.store.stage!r}: use one of {', '.join(STAGES)}")
    corpus = common.corpus_of(cfg)
    chunk_list = common.chunks(cfg.pooling)
    mean = common.corpus_mean(cfg, tracker=tracker)
    layout = layout_of(cfg, corpus, mean)
    total = corpus.count()
    total_shards = None if total is None else -(-total // layout.shard_size)
    if cfg.store.stage == "progress":
        headers = [h for h in backend.store_headers(layout) if h]
        log.info(f"{layout.id}\n  shards {len(headers)} / {total_shards or '?'}, documents "
                 f"{sum(h['rows'] for h in headers)}{'' if total is None else f' / {total}'}, "
                 f"tokens {sum(h['tokens'] for h in headers)}")
        return {"shards": len(headers), "docs": sum(h["rows"] for h in headers)}
    if total == 0:
        raise UserError(f"corpus {corpus.id} has no documents: check the corpus group (corpus.path, max_docs, min_chars)")
    finished = _finished(layout, cfg)
    if finished is not None:
        return finished
    headers, computed, seconds = [], 0, 0.0
    with progress(total=total_shards, unit="shard", desc="store", delay=0) as bar:
        try:
            for header in backend.store_shards(enumerate(corpus.shards(layout.shard_size)), layout, chunk_list, mean):
                headers.append(header)
                if header.get("computed"):
                    computed, seconds = computed + header["tokens"], seconds + header["seconds"]
                bar.update(1)
        except KeyboardInterrupt:
            saved = backend.saved_shards(layout)
            raise Interrupted(f"{len(headers) if saved is None else saved} of {total_shards or '?'} shards of the "
                              "vector store saved") from None
    headers.sort(key=lambda h: h["shard"])
    model = layout.identity
    dims = len(chunk_list) * model["hidden_size"]
    metadata = common.metadata(cfg, model, mean) | {"dims": dims, "corpus": corpus.id, "command": command(),
                                                     "cwd": os.getcwd()}
    location = backend.finish_store(layout, headers, cfg.store.download)
    manifest = vs.write_manifest(layout, headers, metadata, location)
    metrics = {"store_id": layout.id, "shards": len(headers), "docs": sum(h["rows"] for h in headers),
               "tokens": sum(h["tokens"] for h in headers), "tokens_computed": computed,
               "tokens_per_s": computed / seconds if seconds else None, "location": location}
    computed_shards = sum(1 for h in headers if h.get("computed"))
    written = [layout.folder / "shards"] if computed_shards and location == "local" else []  # one line, not one per shard
    log.info(f"vector store of {plural(metrics['docs'], 'document')} ({dims} dims, "
             f"{', '.join(vs.VARIANTS[:1 + (mean is not None)])}, {layout.storage_dtype}) in "
             f"{plural(len(headers), 'shard')} at {layout.folder}" + ("" if location == "local" else f", kept on {location}")
             + (f"; {computed_shards} computed" if computed_shards else "")
             + ("" if written or manifest else ": every shard checked, nothing to write"))
    wrote(log, written + ([manifest] if manifest else []))
    return metrics
