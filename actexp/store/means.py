"""The artifact store of corpus means: where its files live, their ids and checksums (the locks,
ids and manifests both stores share are in layout.py and locks.py).

    <root>/stats/<stats-id>/shards/00000.safetensors   per shard: float64 sum [p, H], count [p], doc ids
    <root>/stats/<stats-id>/manifest.json              written once every shard is on disk
    <root>/stats/<stats-id>/aggregate.ckpt.safetensors merge progress (removed at the end)
    <root>/stats/<stats-id>/.locks/                    one lock per shard and one for the merge
    <root>/means/<mean-id>/corpus_mean.safetensors     the mean; <mean-id> = <stats-id>-m<min_count>-t<tail_start>

The stats id names everything that changes the sums (the model identity, dtype included, the
corpus's content and its shard size); the mean id adds the settings of the finalisation, so
re-finalising reuses the shards and never overwrites a mean that earlier outputs used.

Several processes may share a store: a shard is written only by the holder of its lock, the
checkpoint and the mean only by the holder of the merge lock, and a writer removes only the temp
files of a file whose lock it holds. Readers take no lock, so a finished store on read-only media
is used as it is. On a Modal volume (no locks) `locking=False`: there every shard has one writer at
a time and equal inputs write equal bytes.
"""

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from ..errors import UserError
from ..maths.centering import CorpusMean, MeanAccumulator
from ..progress import progress
from . import locks
from . import shards
from .layout import MANIFEST, digest, model_label, stream_width
from .locks import folder_lock, made_once, remove_temp_files
from .tensors import read_checked, read_header, write_checked


MEAN_FILE = "corpus_mean.safetensors"


CHECKPOINT_FILE = "aggregate.ckpt.safetensors"


def stats_id(model_identity: dict, corpus_id: str, shard_size: int) -> str:
    """Readable (model_label, corpus), and unique by a hash of the whole identity, the corpus id and
    the shard size (the sums are merged shard by shard, so their grouping fixes the last bits)."""
    return f"{model_label(model_identity)}__{corpus_id}__{digest([model_identity, corpus_id, shard_size])}"


@dataclass(frozen=True)
class Stats:
    """The shard sums of one model identity over one corpus, in the store at `root`."""

    root: Path
    identity: dict
    corpus_id: str
    shard_size: int  # documents per shard (corpus.shard_size)
    locking: bool = True

    @property
    def id(self) -> str:
        return stats_id(self.identity, self.corpus_id, self.shard_size)

    @property
    def folder(self) -> Path:
        return self.root / "stats" / self.id

    def shard(self, index: int) -> Path:
        return self.folder / "shards" / f"{index:05d}.safetensors"

    def mean_id(self, min_count: int, tail_start: int) -> str:
        return f"{self.id}-m{min_count}-t{tail_start}"

    def mean_path(self, min_count: int, tail_start: int) -> Path:
        return self.root / "means" / self.mean_id(min_count, tail_start) / MEAN_FILE

    def lock(self, name: str):
        return folder_lock(self.folder, name, self.locking)

    def spec(self) -> dict:
        """What a remote worker needs to find the same files under its own root."""
        return {"identity": self.identity, "corpus_id": self.corpus_id, "shard_size": self.shard_size}

    def read_shard(self, index: int) -> Optional[Tuple[dict, List[str], Tuple[torch.Tensor, torch.Tensor]]]:
        """(header, document ids, (sum, count)) of a shard whose checksum is right, else None (shards.check)."""
        read = read_stats(self.shard(index))
        return None if read is None else (read[2], read[2].get("doc_ids"), read[:2])

    def foreign(self, header: dict) -> Optional[str]:
        """Why a shard's header belongs to other sums (None if it belongs to these)."""
        for key, expected in (("stats_id", self.id), ("dtype", self.identity["dtype"])):
            if header.get(key) != expected:
                return f"was computed for {key}={header.get(key)} (these sums are for {key}={expected})"
        return None


def write_stats(path: Path, sum_: torch.Tensor, count: torch.Tensor, meta: dict) -> Path:
    """A shard or checkpoint: float64 sum and int64 count, with a checksum over both."""
    write_checked(path, {"sum": sum_, "count": count}, meta)
    return path


def read_stats(path: Path) -> Optional[Tuple[torch.Tensor, torch.Tensor, dict]]:
    """(sum, count, header) of a shard or checkpoint, or None if it is missing, truncated or corrupt."""
    read = read_checked(path, ("sum", "count"))
    return None if read is None else (read[0]["sum"], read[0]["count"], read[1])


def save_mean(mean: CorpusMean, path: Path) -> CorpusMean:
    """Write a mean atomically; its metadata gains the checksum of its tensors."""
    tensors = {"mean": mean.mean, "sum": mean.sum, "count": mean.count} | ({} if mean.tail is None else {"tail": mean.tail})
    meta = {k: v for k, v in mean.metadata.items() if k != "sha256"}
    mean.metadata = meta | {"sha256": write_checked(path, tensors, meta)}
    mean.path = Path(path)
    return mean


def load_mean(path: Path) -> CorpusMean:
    """A mean written by save_mean, its checksum verified."""
    read = read_checked(Path(path), ("mean", "sum", "count"), optional=("tail",))
    if read is None:
        raise UserError(f"{path} is not a readable corpus mean (missing, truncated or corrupt): "
                        "recompute it with job=mean")
    t, meta = read
    if t["mean"].shape[0] < meta.get("max_tokens", 0) and "tail" not in t:
        raise UserError(f"{path} covers {t['mean'].shape[0]} of {meta['max_tokens']} positions and has no tail value: "
                        "recompute it with job=mean")
    return CorpusMean(t["mean"], t["sum"], t["count"], t.get("tail"), meta, Path(path))


def shard_headers(stats: Stats) -> List[dict]:
    """The headers of the shard files on disk (unreadable ones count as empty)."""
    return [read_header(p) or {} for p in sorted((stats.folder / "shards").glob("*.safetensors"))]


def write_manifest(stats: Stats, n_shards: int, docs: int, tokens: int) -> None:
    locks.write_manifest(stats.folder, {"n_shards": n_shards, "docs": docs, "tokens": tokens, "stats_id": stats.id},
                           lambda: stats.lock("merge"))


def read_manifest(stats: Stats) -> Optional[dict]:
    path = stats.folder / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def _merge_one(stats: Stats, acc: MeanAccumulator, k: int) -> None:
    """Add shard k to acc; refuse a missing, corrupt or foreign shard (removed: extract redoes it)."""
    checked = shards.check(stats, k)
    if checked.problem:
        with stats.lock(f"shard-{k:05d}"):  # a writer of this shard may be finishing it: wait, then look again
            checked = shards.check(stats, k)
            if checked.problem:
                stats.shard(k).unlink(missing_ok=True)
                (stats.folder / MANIFEST).unlink(missing_ok=True)  # not all extracted any more (we hold the merge lock)
                raise UserError(f"shard {k} of {stats.id} {checked.problem} and was removed: "
                                "run the same job=mean command again to recompute it")
    acc.merge(*checked.content, checked.header["docs"], checked.header["tokens"])


def merge_shards(stats: Stats, n_shards: int, min_count: int, tail_start: int, checkpoint_every: int) -> CorpusMean:
    """Merge shards 0..n-1 in order into the mean of these settings, resuming from the checkpoint.

    In-order float64 merging makes the result bit-identical however the work was interrupted or
    shared. Under the merge lock, so a second writer finds the finished mean and reuses it.
    """
    final = stats.mean_path(min_count, tail_start)
    return made_once(lambda: _finished(final), lambda: stats.lock("merge"),
                     lambda: _merge(stats, n_shards, min_count, tail_start, checkpoint_every))


def _finished(path: Path) -> Optional[CorpusMean]:
    """The mean at path if it is there and whole (a mean id fixes its content), else None."""
    with contextlib.suppress(UserError):
        return load_mean(path)
    return None


def _merge(stats: Stats, n_shards: int, min_count: int, tail_start: int, checkpoint_every: int) -> CorpusMean:
    """merge_shards' work, holding the merge lock."""
    final = stats.mean_path(min_count, tail_start)
    ckpt_path = stats.folder / CHECKPOINT_FILE
    remove_temp_files(ckpt_path)
    remove_temp_files(final)
    acc, first = MeanAccumulator(stream_width(stats.identity)), 0
    ckpt = read_stats(ckpt_path)
    if ckpt is not None and ckpt[2].get("n_shards") == n_shards and ckpt[2].get("stats_id") == stats.id:
        acc.merge(ckpt[0], ckpt[1], ckpt[2]["docs"], ckpt[2]["tokens"])
        first = ckpt[2]["next"]
    for k in progress(range(first, n_shards), desc="merging shards", unit="shard"):
        _merge_one(stats, acc, k)
        if (k + 1) % checkpoint_every == 0 and k + 1 < n_shards:
            write_stats(ckpt_path, acc.sum, acc.count, {"next": k + 1, "n_shards": n_shards, "docs": acc.docs,
                                                        "tokens": acc.tokens, "stats_id": stats.id})
    meta = stats.identity | {"corpus": stats.corpus_id, "stats_id": stats.id,
                             "mean_id": stats.mean_id(min_count, tail_start), "docs": acc.docs,
                             "tokens": acc.tokens, "shards": n_shards}
    try:
        mean = CorpusMean.from_stats(acc.sum, acc.count, stats.identity["max_tokens"], min_count, tail_start, meta)
    except ValueError as e:
        raise UserError(f"{e}: lower centering.min_count or centering.tail_start (job=mean mean.stage=aggregate "
                        "reuses the shards) or use a larger corpus") from None
    save_mean(mean, final)
    ckpt_path.unlink(missing_ok=True)
    return mean
