"""The per-position corpus mean of docs/math.md: accumulate, merge, finalise, and pooled_mean(T)
for centring after the fact. Pure torch: files are the artifact store's business (store/means.py).

Sufficient statistics only: a float64 sum [P, H] and a count [P] of documents longer than t.
"""

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch

from . import pooling
from .pooling import Chunk, to_device, weights


class MeanAccumulator:
    """Running float64 sum [P, H] and int64 count [P] of h_t; P grows to the longest document."""

    def __init__(self, hidden_size: int, device="cpu"):
        self.sum = torch.zeros(0, hidden_size, dtype=torch.float64, device=device)  # [P, H]
        self.count = torch.zeros(0, dtype=torch.int64, device=device)  # [P]
        self.docs = 0
        self.tokens = 0

    def _grow(self, n: int) -> None:
        if n > self.count.numel():
            extra = n - self.count.numel()
            self.sum = torch.cat([self.sum, self.sum.new_zeros(extra, self.sum.shape[1])])
            self.count = torch.cat([self.count, self.count.new_zeros(extra)])

    def add(self, h: torch.Tensor, lengths: Sequence[int], block: Optional[int] = None) -> None:
        """Add the real positions of a right-padded batch h [B, T, H]: one masked float64 sum over the
        batch (a loop over its texts left the C heap fragmented and launched a kernel per text).
        With block k, h is the k-th of the blocks whose streams lie side by side in the sum's columns
        (model.layers=each); the texts are counted with block 0."""
        T, H = h.shape[1], h.shape[2]
        self._grow(T)
        valid = torch.arange(T, device=h.device)[None, :] < to_device(lengths, torch.int64, h.device)[:, None]  # [B, T]
        columns = slice(None) if block is None else slice(block * H, (block + 1) * H)
        # A copy even when h is float64 already: the caller's h is left as it was.
        self.sum[:T, columns] += h.to(torch.float64, copy=True).masked_fill_(~valid[..., None], 0.0).sum(0)  # [T, H]
        if block:
            return
        self.count[:T] += valid.sum(0)
        self.docs += len(lengths)
        self.tokens += sum(lengths)

    def merge(self, sum_: torch.Tensor, count: torch.Tensor, docs: int, tokens: int) -> None:
        """Add another accumulator's statistics (a shard)."""
        self._grow(count.numel())
        self.sum[: count.numel()] += sum_.to(self.sum.device)
        self.count[: count.numel()] += count.to(self.count.device)
        self.docs += docs
        self.tokens += tokens


def tail_mean(sum_: torch.Tensor, count: torch.Tensor, min_count: int, tail_start: int) -> torch.Tensor:
    """The fallback [H] float64: the count-weighted mean of the positions >= tail_start that have at
    least min_count documents."""
    tail = (count >= max(min_count, 1)) & (torch.arange(count.numel()) >= tail_start)  # [P]
    if not tail.any():
        raise ValueError(f"no position >= centering.tail_start={tail_start} has centering.min_count={min_count} "
                         "documents")
    return sum_[tail].sum(0) / count[tail].sum()


def finalise(sum_: torch.Tensor, count: torch.Tensor, min_count: int, tail_start: int) -> torch.Tensor:
    """mu_t = S_t / n_t [P, H] float32; positions with n_t < min_count take tail_mean."""
    enough = count >= max(min_count, 1)  # [P]
    mean = torch.zeros_like(sum_)  # [P, H] float64
    mean[enough] = sum_[enough] / count[enough, None]
    if not enough.all():
        mean[~enough] = tail_mean(sum_, count, min_count, tail_start)
    return mean.to(torch.float32)


@dataclass
class CorpusMean:
    """mu_t for t < max_tokens: stored for the P positions some document reached, and as one tail
    value for every position from P on (a 128k-context model's mean is not padded to 128k rows)."""

    mean: torch.Tensor  # [P, H] float32, after the min_count/tail_start fallback
    sum: torch.Tensor  # [P, H] float64
    count: torch.Tensor  # [P] int64
    tail: Optional[torch.Tensor] = None  # [H] float32: mu_t for t >= P; None when P is max_tokens
    metadata: dict = field(default_factory=dict)
    path: Optional[Path] = None

    @classmethod
    def from_stats(cls, sum_, count, max_tokens: int, min_count: int, tail_start: int, metadata: dict):
        """Finalise the statistics of the positions documents reached; the rest up to max_tokens take the tail."""
        sum_, count = sum_.cpu(), count.cpu()
        tail = tail_mean(sum_, count, min_count, tail_start).to(torch.float32) if count.numel() < max_tokens else None
        meta = metadata | {"min_count": min_count, "tail_start": tail_start}
        return cls(finalise(sum_, count, min_count, tail_start), sum_, count, tail, meta)

    @property
    def positions(self) -> int:
        """How many positions the mean covers (the model's max_tokens)."""
        return self.metadata.get("max_tokens", self.mean.shape[0])

    def rows(self, n: int) -> torch.Tensor:
        """mu_t for t < n, row by row: [n, H] float32 (the tail repeated past P)."""
        self._check_length(n)
        P = self.mean.shape[0]
        return self.mean[:n] if n <= P else torch.cat([self.mean, self.tail.expand(n - P, -1)])

    def _check_length(self, n: int) -> None:
        if n > self.positions:
            raise ValueError(f"a text of {n} tokens is longer than the corpus mean ({self.positions} positions)")

    @functools.cached_property
    def float64(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(mean [P, H], tail [H] or None) in float64, converted once: centring computes in float64, and
        a conversion per batch or per text would copy the mean again each time."""
        return self.mean.to(torch.float64), None if self.tail is None else self.tail.to(torch.float64)

    def to(self, device) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(mean [P, H], tail [H] or None) in float64 on a device: what pooling.pool centres with (on the
        CPU the float64 tensors themselves; a backend keeps its device's copy for the run)."""
        mean, tail = self.float64
        return mean.to(device), None if tail is None else tail.to(device)

    @property
    def sha256(self) -> Optional[str]:
        """The checksum of the mean's tensors (set when it is saved): which mean was used, exactly."""
        return self.metadata.get("sha256")

    def pooled_mean(self, chunks: Sequence[Chunk], n_tokens: int) -> torch.Tensor:
        """pooled_mean(T) per chunk for a text of n_tokens: [C*H] float64 (= raw - centred)."""
        self._check_length(n_tokens)
        return pooling.pooled_mean(weights(tuple(chunks), n_tokens), *self.float64).reshape(-1)

    def recenter(self, raw: torch.Tensor, n_tokens: Sequence[int], chunks: Sequence[Chunk]) -> torch.Tensor:
        """Centred vectors from raw ones [N, C*H] and their token counts, without the model."""
        pooled = torch.stack([self.pooled_mean(chunks, n) for n in n_tokens])  # [N, C*H]
        return (raw.to(torch.float64) - pooled).to(torch.float32)
