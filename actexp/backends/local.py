"""The in-process backend: the model runs here; shards and means are files under paths.artifacts."""

import ctypes
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from filelock import Timeout

from ..data.corpus import Document
from ..errors import UserError, check_interrupt
from ..maths.centering import CorpusMean, MeanAccumulator
from ..maths.pooling import Chunk, pool, weights
from ..memory import over_half
from ..models.activations import Batching, LayerMean, batch_ids, packing_error, segments, stream, stream_blocks
from ..models.identity import identity
from ..models.loading import LoadedModel, load_model
from ..models.spec import ModelSpec
from ..progress import progress
from ..store import means
from ..store import vectors as vector_store
from ..store.layout import hash_cache
from ..store.locks import remove_temp_files
from ..store.shards import check as check_shard
from ..store.vectors import StoreLayout

log = logging.getLogger(__name__)


def _heap_trimmer():
    """glibc's malloc_trim, or None. Batches of ever-different shapes fragment the C heap, so
    without a trim the resident set of a long CPU mean job creeps up with the corpus (measured:
    931 -> 1,305 MB from 256 to 1,024 documents; with a trim per batch 783 -> 832 MB, ~10 % slower)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


TRIM_HEAP = _heap_trimmer()


@dataclass
class Pooled:
    """What a backend returns for N texts, as torch tensors (actexp.Vectors is the API's numpy form)."""

    raw: torch.Tensor  # [N, C*H] float32, on the CPU
    centered: Optional[torch.Tensor]  # [N, C*H] float32, when a corpus mean was given
    n_tokens: List[int]
    truncated: List[bool]

    def by_variant(self) -> dict:
        """{"raw": [N, C*H] numpy[, "centered": ...]}: what the analysis and the search take."""
        return {"raw": self.raw.numpy()} | ({} if self.centered is None else {"centered": self.centered.numpy()})


# How far a packed text may move from the same text alone before packing is refused for a model
# (models/activations.py: packing_error): about 1e-7 measured where packing works, of order 1 where it does not.
PACKING_TOLERANCE = {torch.float32: 1e-4}  # half precision: 5e-2
RESULTS_ON_DEVICE = 1 << 30  # bytes of a call's vectors kept on a GPU until the call ends (Pythia-12B long: 13k texts)


class LocalBackend:
    """The model in this process; texts go through it in packs of batching.batch_tokens token slots."""

    def __init__(self, spec: ModelSpec, device: str = "cpu", batching: Batching = Batching(),
                 threads: Optional[int] = None, hash_cache: Optional[Path] = None):
        self.spec, self.device, self.threads, self.hash_cache = spec, device, threads, hash_cache
        self.batching = batching
        self._packing_works: Optional[bool] = None  # checked on the model by the first packed call
        self._lm: Optional[LoadedModel] = None
        self._metadata: Optional[dict] = None
        self._device_mean = (None, None)  # (sha256 of the mean, its tensors on the device)

    @classmethod
    def from_config(cls, cfg) -> "LocalBackend":
        hw = cfg.hardware
        return cls(ModelSpec.from_config(cfg.model, hw, cfg.get("prompt")), hw.device, Batching.from_config(hw), hw.threads,
                   hash_cache(cfg.paths.artifacts))

    @property
    def lm(self) -> LoadedModel:
        """The model, loaded by the first forward pass (aggregating, progress and metadata need none)."""
        if self._lm is None:
            self._lm = load_model(self.spec, self.device, self.threads, self.hash_cache)
        return self._lm

    @property
    def metadata(self) -> dict:
        """The model identity, from its config and files (models/identity.py): no weights are loaded."""
        if self._metadata is None:
            self._metadata = self._lm.metadata if self._lm is not None else identity(self.spec, hash_cache=self.hash_cache)
        return self._metadata

    def _encode(self, texts: Sequence[str]):
        """(ids, truncated, spans): the sequences the model reads, and the [start, end) each vector pools."""
        ids, truncated, spans = self.lm.text.encode_spans(texts)
        if any(truncated):
            log.warning("%d of %d texts were truncated to model.max_tokens=%d tokens",
                        sum(truncated), len(texts), self.lm.text.max_tokens)
        empty = [i for i, x in enumerate(ids) if not x]
        if empty:
            raise UserError(f"text {empty[0]} has no tokens: give non-empty texts")
        return ids, truncated, spans

    def checked_batching(self) -> Batching:
        """self.batching, with packing checked on the model once: a model whose texts do not stay apart
        in a packed row (its family builds no mask from position ids) runs right-padded batches
        instead, with a warning."""
        if self.batching.packing and self._packing_works is None:
            error = packing_error(self.lm)
            # Not finite: the model overflows in its dtype, packed or not; the vectors are refused for it.
            self._packing_works = not math.isfinite(error) or error <= PACKING_TOLERANCE.get(self.lm.body.dtype, 5e-2)
            if not self._packing_works:
                log.warning("%s does not keep packed texts apart (a text moves by %.1e next to another): its batches "
                            "are right-padded (hardware.packing=false)", type(self.lm.model).__name__, error)
        return self.batching if self._packing_works is not False else dataclasses.replace(self.batching, packing=False)

    def _batches(self, ids):
        return stream(self.lm, ids, self.checked_batching())

    def vectors(self, texts: Sequence[str], chunks: Sequence[Chunk], mean: Optional[CorpusMean] = None) -> Pooled:
        """Raw vectors, and centred ones (h_t - mu_t pooled) too when a corpus mean is given; each pools
        its text's span of the prompt. With model.layers=each, block k's vector is dims k*C*H.. of the
        row, pooled in the block's hook. They stay on the device until every pack has run (one copy
        to the host, not one wait per pack), unless they would take more than RESULTS_ON_DEVICE bytes."""
        ids, truncated, spans = self._encode(texts)
        blocks = len(self.lm.layer_ids) if self.lm.per_block else 1
        width = len(chunks) * self.lm.hidden_size  # C*H: one block's vector
        size = len(texts) * blocks * width * 4 * (1 if mean is None else 2)
        if blocks > 1 and (over := over_half(size)):
            raise UserError(f"model.layers=each: the vectors of {len(texts)} texts x {blocks} blocks x {width} dims "
                            f"{over}: pool fewer chunks (pooling=short), choose blocks (model.layers=[...] gives their "
                            "mean), or use fewer texts")
        device = self.lm.device if size <= RESULTS_ON_DEVICE else torch.device("cpu")
        raw = torch.empty(len(texts), blocks * width, dtype=torch.float32, device=device)  # [N, L*C*H]
        centered = None if mean is None else torch.empty_like(raw)  # [N, L*C*H]
        mu = None if mean is None else self._on_device(mean)

        def pool_into(which, x, lengths, k, mu_k):
            pooled = pool(x, lengths, chunks, (None,) if mu_k is None else (None, mu_k), [spans[i] for i in which])
            columns = slice(k * width, (k + 1) * width)
            raw[which, columns] = pooled[0].to(device)
            if mu_k is not None:
                centered[which, columns] = pooled[1].to(device)

        def on_block(pack, k, out):  # model.layers=each: block k's own slice of the mean, as it was accumulated
            H = self.lm.hidden_size
            mu_k = None if mu is None else (mu[0][:, k * H:(k + 1) * H], None if mu[1] is None else mu[1][k * H:(k + 1) * H])
            for which, x, lengths in segments(pack, out):
                pool_into(which, x, lengths, k, mu_k)

        with progress(total=sum(len(x) for x in ids), desc="vectors", unit="token") as bar:
            if self.lm.per_block:
                for pack in stream_blocks(self.lm, ids, self.checked_batching(), on_block):
                    bar.update(sum(pack.lengths))
            else:
                for pack, h in self._batches(ids):
                    for which, x, lengths in segments(pack, h):
                        pool_into(which, x, lengths, 0, mu)
                    bar.update(sum(pack.lengths))
        raw, centered = raw.cpu(), None if centered is None else centered.cpu()
        for x in (raw, centered):  # apart: a concatenated copy would double the peak of per-block vectors
            if x is not None:
                self._refuse_non_finite(texts, x)
        return Pooled(raw, centered, [len(x) for x in ids], truncated)

    def centred_by_definition(self, texts: Sequence[str], chunks: Sequence[Chunk], mean: CorpusMean,
                              which: Sequence[int]) -> Dict[int, torch.Tensor]:
        """{i: sum_t w_t (h_t - mu_t) [C*H] float64} for the texts `which` (indices into texts): a
        centred vector as docs/math.md defines it, the mean subtracted from the stream before pooling,
        for job=compare to check vectors() against (which pools raw - W mu, and so agrees with any
        other W mu by construction). mu_t is read from the stored tensors here, not through
        CorpusMean.rows or .to. The texts are batched as vectors() batches them, so each h is the one
        vectors() pooled (in half precision a text's h depends on its batch); batches holding none
        of `which` are not run."""
        ids, _, spans = self._encode(texts)
        wanted, out = set(which), {}
        layer_mean = LayerMean(self.lm.blocks, self.lm.layer_ids)
        for pack in self.checked_batching().packs([len(x) for x in ids]):
            chosen = [k for k, i in enumerate(pack.texts) if i in wanted]
            if not chosen:
                continue
            h = layer_mean(self.lm.body, *batch_ids(self.lm, ids, pack)).cpu()  # [R, W, H] float32
            for k in chosen:
                row, start, n = pack.rows[k], pack.starts[k], pack.lengths[k]
                first, end = spans[pack.texts[k]]
                centred = h[row, start + first:start + end].double() - mean.rows(n).double()[first:end]  # [end - first, H]
                out[pack.texts[k]] = (weights(tuple(chunks), end - first) @ centred).reshape(-1)  # [C*H]
        return out

    def _on_device(self, mean: CorpusMean):
        """The mean on the model's device, copied once per run (a run centres with one mean)."""
        if mean.sha256 is None:  # not saved, so nothing names it: copied each call
            return mean.to(self.lm.device)
        if self._device_mean[0] != mean.sha256:
            self._device_mean = (mean.sha256, mean.to(self.lm.device))
        return self._device_mean[1]

    def _refuse_non_finite(self, texts: Sequence[str], x: torch.Tensor) -> None:
        """An overflow (float16 is allowed, and Pythia overflows in it) stops here, not in the metrics."""
        bad = torch.nonzero(~torch.isfinite(x).all(1)).flatten().tolist()
        if bad:
            first = texts[bad[0]][:30].replace("\n", " ")
            raise UserError(f"the vectors of {len(bad)} of {len(texts)} texts (text {bad[0]}: {first!r}"
                            f"{', ...' if len(bad) > 1 else ''}) are not finite in model.dtype={self.spec.dtype}: "
                            "the model overflows in it; use model.dtype=bfloat16 or float32")

    def mean_stats(self, texts: Sequence[str]) -> MeanAccumulator:
        """Per-position float64 sum and count of h_t over the texts (one shard of a corpus mean)."""
        ids, _, _ = self._encode(texts)  # the mean covers every position of the templated sequence, not a span
        blocks = len(self.lm.layer_ids) if self.lm.per_block else 1
        acc = MeanAccumulator(blocks * self.lm.hidden_size, self.lm.device)  # blocks side by side for layers=each
        trim = TRIM_HEAP if self.lm.device.type == "cpu" else None  # CUDA has its own caching allocator

        def on_block(pack, k, out):
            for _, x, lengths in segments(pack, out):
                acc.add(x, lengths, k)

        passes = (stream_blocks(self.lm, ids, self.checked_batching(), on_block) if self.lm.per_block
                  else self._batches(ids))
        for item in passes:
            if not self.lm.per_block:
                for _, x, lengths in segments(*item):
                    acc.add(x, lengths)
            if trim is not None:
                del item  # the pack's stream, before the heap is trimmed
                trim(0)
        if not torch.isfinite(acc.sum).all():
            raise UserError(f"the activations of these documents are not finite in model.dtype={self.spec.dtype}: "
                            "the model overflows in it; use model.dtype=bfloat16 or float32")
        return acc

    def write_shard(self, docs: Sequence[Document], stats: means.Stats, index: int) -> dict:
        """Compute one shard and write it atomically; its header (with the seconds it took)."""
        start = time.perf_counter()
        acc = self.mean_stats([d.text for d in docs])
        meta = {"shard": index, "doc_ids": [d.id for d in docs], "docs": acc.docs, "tokens": acc.tokens,
                "stats_id": stats.id, "dtype": self.metadata["dtype"]}
        means.write_stats(stats.shard(index), acc.sum, acc.count, meta)
        return meta | {"seconds": time.perf_counter() - start}

    @staticmethod
    def _each_shard(shards: Iterable[Tuple[int, List[Document]]], layout, compute) -> Iterator[dict]:
        """The header of each (index, documents) shard of `layout` (means.Stats or StoreLayout). A valid
        shard on disk is read without a lock (shards are written whole), so finished files stay usable on
        read-only media; a missing or damaged one is compute(k, docs)'d under its lock. A shard whose
        lock another process holds is left to it and done at the end (after waiting for that lock, it
        is usually on disk), so two runs of the same work share it instead of colliding."""
        def under_lock(k, docs):
            checked = check_shard(layout, k, [d.id for d in docs])  # again: another writer may have finished it
            if checked.problem is None:
                return checked.header
            if layout.shard(k).exists():
                log.warning("shard %d (%s) %s: recomputing it", k, layout.shard(k), checked.problem)
            remove_temp_files(layout.shard(k))  # ours: no one else writes this shard while we hold its lock
            return compute(k, docs) | {"computed": True}

        busy = []
        for k, docs in shards:
            check_interrupt()
            checked = check_shard(layout, k, [d.id for d in docs])
            if checked.problem is None:
                yield checked.header
                continue
            lock = layout.lock(f"shard-{k:05d}")
            try:
                lock.acquire(blocking=False)
            except Timeout:
                busy.append((k, docs, lock))
                continue
            try:
                yield under_lock(k, docs)
            finally:
                lock.release()
        for k, docs, lock in busy:
            check_interrupt()
            with lock:
                yield under_lock(k, docs)

    def extract_shards(self, shards: Iterable[Tuple[int, List[Document]]], stats: means.Stats) -> Iterator[dict]:
        """For each (index, documents): the header of its valid mean shard, computing it if needed."""
        return self._each_shard(shards, stats, lambda k, docs: self.write_shard(docs, stats, k))

    def store_shards(self, shards: Iterable[Tuple[int, List[Document]]], layout: StoreLayout,
                     chunks: Sequence[Chunk], mean: Optional[CorpusMean]) -> Iterator[dict]:
        """For each (index, documents): the header of its valid vector-store shard, computing it if needed."""
        def compute(k, docs):
            start = time.perf_counter()
            header = vector_store.write_shard(layout, k, docs, self.vectors([d.text for d in docs], chunks, mean))
            if TRIM_HEAP is not None and self.lm.device.type == "cpu":
                TRIM_HEAP(0)  # as the mean job does: a long CPU run's resident set stays flat
            return header | {"seconds": time.perf_counter() - start}

        return self._each_shard(shards, layout, compute)

    def store_headers(self, layout: StoreLayout) -> List[dict]:
        return vector_store.shard_headers(layout)

    def finish_store(self, layout: StoreLayout, headers: List[dict], download: bool) -> str:
        """Where the shards are once all are written: here."""
        return "local"

    def aggregate(self, stats: means.Stats, n_shards: int, min_count: int, tail_start: int,
                  checkpoint_every: int) -> CorpusMean:
        return means.merge_shards(stats, n_shards, min_count, tail_start, checkpoint_every)

    def shard_headers(self, stats: means.Stats) -> List[dict]:
        return means.shard_headers(stats)

    @staticmethod
    def saved_shards(layout) -> int:
        """The finished shard files of `layout` on disk. Counted, not tallied from what was yielded: a
        Ctrl-C can land after a shard's rename and before it is reported (while its folder is fsynced)."""
        first = layout.shard(0)
        return sum(1 for _ in first.parent.glob(f"*{first.suffix}"))

    def close(self) -> None:
        """Release the model (a run opens one backend and closes it when it ends)."""
        on_gpu = self._lm is not None and self._lm.device.type == "cuda"
        self._lm, self._device_mean = None, (None, None)
        if on_gpu:
            torch.cuda.empty_cache()
