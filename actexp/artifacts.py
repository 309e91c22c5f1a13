"""The artifact store of corpus means: ids, folder layout, shard files, and finding a mean again.

    <paths.artifacts>/means/<mean-id>/shards/00000.safetensors   one per shard: sum, count
    <paths.artifacts>/means/<mean-id>/aggregate.ckpt.safetensors  merge progress (removed at the end)
    <paths.artifacts>/means/<mean-id>/corpus_mean.safetensors     the mean (centering.CorpusMean)
"""

import hashlib
import json
import re
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from safetensors import SafetensorError, safe_open

from .centering import CorpusMean, MeanAccumulator
from .errors import UserError
from .io import write_safetensors

MEAN_FILE = "corpus_mean.safetensors"
CHECKPOINT_FILE = "aggregate.ckpt.safetensors"
# Identity fields a mean must share with the model it centres.
MATCH_FIELDS = ("model", "name_or_path", "revision", "seed", "layers", "prepend_bos", "max_tokens", "hidden_size")


def mean_id(model_identity: dict, corpus_id: str) -> str:
    """Readable, and unique to the model identity and the corpus (by a hash of both)."""
    m = model_identity
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(m["model"])).strip("_")[-40:]
    revision = m["revision"] or (f"seed{m['seed']}" if m["random_init"] else "main")
    layers = "all" if m["layers"] == "all" else "L" + "_".join(map(str, m["layers"]))
    digest = hashlib.sha256(json.dumps([m, corpus_id], sort_keys=True).encode()).hexdigest()[:8]
    bos = "bos" if m["prepend_bos"] else "nobos"
    return f"{name}-{revision}-{layers}-{bos}-T{m['max_tokens']}__{corpus_id}__{digest}"


def mean_dir(artifacts: str, mid: str) -> Path:
    return Path(artifacts) / "means" / mid


def shard_path(folder: Path, index: int) -> Path:
    return folder / "shards" / f"{index:05d}.safetensors"


def _checksum(tensors: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_stats(path: Path, sum_: torch.Tensor, count: torch.Tensor, meta: dict) -> Path:
    """Write a sum/count file atomically, with a checksum over its tensors in the header."""
    tensors = {"sum": sum_.cpu(), "count": count.cpu()}
    header = {k: json.dumps(v) for k, v in meta.items()} | {"sha256": _checksum(tensors)}
    return write_safetensors(path, tensors, header)


def read_stats(path: Path) -> Optional[Tuple[torch.Tensor, torch.Tensor, dict]]:
    """(sum, count, meta) of a sum/count file, or None if it is missing, truncated or corrupt."""
    try:
        with safe_open(str(path), "pt") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in ("sum", "count")}
        if header.pop("sha256", None) != _checksum(tensors):
            return None
        return tensors["sum"], tensors["count"], {k: json.loads(v) for k, v in header.items()}
    except (SafetensorError, OSError, KeyError, ValueError):
        return None


def read_header(path: Path) -> Optional[dict]:
    """The metadata of a safetensors file without reading its tensors, or None if unreadable."""
    try:
        with safe_open(str(path), "pt") as f:
            return {k: json.loads(v) for k, v in (f.metadata() or {}).items() if k != "sha256"}
    except (SafetensorError, OSError, ValueError):
        return None


def mismatch(meta: dict, model_identity: dict) -> Optional[str]:
    """The first identity field where a mean's metadata differs from the model, described; None if it fits."""
    for key in MATCH_FIELDS:
        if meta.get(key) != model_identity.get(key):
            return f"{key}={json.dumps(meta.get(key))} (this model has {key}={json.dumps(model_identity.get(key))})"
    return None


def find_means(artifacts: str, model_identity: dict) -> List[Path]:
    """Corpus means in the store that fit the model, newest first."""
    found = []
    for path in Path(artifacts).glob(f"means/*/{MEAN_FILE}"):
        meta = read_header(path)
        if meta is not None and mismatch(meta, model_identity) is None:
            found.append(path)
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def clean_temp_files(folder: Path) -> None:
    """Remove temp files left by a write that was killed before its rename."""
    for tmp in folder.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def shard_headers(folder: Path) -> List[dict]:
    """The headers of the shard files in a mean folder (unreadable ones count as empty)."""
    return [read_header(p) or {} for p in sorted((folder / "shards").glob("*.safetensors"))]


def merge_shards(folder: Path, n_shards: int, model_identity: dict, meta: dict, min_count: int, tail_start: int,
                 checkpoint_every: int) -> CorpusMean:
    """Merge shards 0..n-1 in order into corpus_mean.safetensors, resuming from the checkpoint.

    In-order float64 merging makes the result bit-identical however the work was interrupted.
    A missing or corrupt shard is removed and reported: the next extract recomputes it.
    """
    acc, first = MeanAccumulator(model_identity["hidden_size"]), 0
    ckpt = read_stats(folder / CHECKPOINT_FILE)
    if ckpt is not None and ckpt[2].get("n_shards") == n_shards:
        acc.merge(ckpt[0], ckpt[1], ckpt[2]["docs"], ckpt[2]["tokens"])
        first = ckpt[2]["next"]
    dtype = None
    for k in range(first, n_shards):
        path = shard_path(folder, k)
        stats = read_stats(path)
        if stats is None:
            path.unlink(missing_ok=True)
            raise UserError(f"shard {k} of {folder.name} is missing or corrupt and was removed: "
                            "run the same job=mean command again to recompute it")
        acc.merge(stats[0], stats[1], stats[2]["docs"], stats[2]["tokens"])
        dtype = dtype or stats[2].get("dtype")
        if (k + 1) % checkpoint_every == 0 and k + 1 < n_shards:
            write_stats(folder / CHECKPOINT_FILE, acc.sum, acc.count,
                        {"next": k + 1, "n_shards": n_shards, "docs": acc.docs, "tokens": acc.tokens})
    meta = model_identity | meta | {"docs": acc.docs, "tokens": acc.tokens, "shards": n_shards, "dtype": dtype}
    mean = CorpusMean.from_stats(acc.sum, acc.count, model_identity["max_tokens"], min_count, tail_start, meta)
    mean.save(folder / MEAN_FILE)
    (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
    return mean
