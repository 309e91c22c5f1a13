"""Pooling over tokens: the weight vectors of docs/math.md and their application.

Pure torch: knows nothing of models, configs or files. Weights are float64.
"""

import functools
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

KINDS = ("last", "exp", "mean")


@dataclass(frozen=True)
class Chunk:
    kind: str  # last | exp | mean
    alpha: Optional[float] = None  # per-token decay of exp

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown pooling chunk kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.kind == "exp" and not (self.alpha is not None and 0.0 <= self.alpha < 1.0):
            raise ValueError(f"an exp pooling chunk needs 0 <= alpha < 1, got {self.alpha!r}")

    @property
    def label(self) -> str:
        return f"exp {self.alpha:g}" if self.kind == "exp" else self.kind


def chunk_weights(chunk: Chunk, n_tokens: int) -> torch.Tensor:
    """Weights w_t over t = 0..n_tokens-1 for one chunk, summing to 1: [T] float64."""
    if n_tokens < 1:
        raise ValueError("pooling needs at least one token")
    return batch_weights((chunk,), [n_tokens], n_tokens, "cpu")[0, 0]


@functools.lru_cache(maxsize=8192)
def weights(chunks: Sequence[Chunk], n_tokens: int) -> torch.Tensor:
    """Weights of all chunks of a mode for one text of n_tokens: [C, n_tokens] float64 (cached: read only)."""
    return torch.stack([chunk_weights(c, n_tokens) for c in chunks])  # [C, T]


def on_device(x: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on a device without the host waiting for the GPU: through pinned memory,
    non-blocking (torch.tensor(values, device=cuda) waits for every kernel queued before it)."""
    return x.pin_memory().to(device, non_blocking=True) if torch.device(device).type == "cuda" else x


def to_device(values: Sequence, dtype: torch.dtype, device) -> torch.Tensor:
    return on_device(torch.tensor(values, dtype=dtype), device)


def batch_weights(chunks: Sequence[Chunk], lengths: Sequence[int], width: int, device,
                  starts: Optional[Sequence[int]] = None) -> torch.Tensor:
    """The weight formulas of docs/math.md, for all chunks of a right-padded batch, built on its device:
    [B, C, width] float64 over the lengths[b] tokens from starts[b] (0 if not given), zero elsewhere:
    a span inside a templated sequence is weighted as a text of its own length."""
    n = to_device(lengths, torch.float64, device)[:, None]  # [B, 1]
    t = torch.arange(width, dtype=torch.float64, device=device)[None, :]  # [1, T]
    if starts is not None:
        t = t - to_device(starts, torch.float64, device)[:, None]  # [B, T]: position within the span
    valid = (t >= 0) & (t < n)  # [B, T]
    rows = []
    for chunk in chunks:
        if chunk.kind == "last":
            w = (t == n - 1).to(torch.float64)
        elif chunk.kind == "mean":
            w = valid / n
        else:
            w = torch.where(valid, (1.0 - chunk.alpha) ** (n - 1 - t).clamp(min=0), 0.0)
            w = w / w.sum(-1, keepdim=True)
        rows.append(w.expand(len(lengths), width))
    return torch.stack(rows, 1)  # [B, C, T]


def pooled_mean(w: torch.Tensor, mean: torch.Tensor, tail: Optional[torch.Tensor]) -> torch.Tensor:
    """pooled_mean(T) of docs/math.md, sum_t w_t mu_t [..., C, H] float64 for weights w [..., C, T],
    where mu_t is mean[t] [P, H] for t < P and tail [H] from P on. The one place it is computed:
    pool() calls it per batch, CorpusMean.pooled_mean per text.

    A float64 mean (CorpusMean.to) is used as it is for T <= P. Past P the rows [T, H] are built with
    the tail repeated (float64, once per call: 84 MB at T = 2,048 and H = 5,120), rather than adding
    the weights' sum times the tail, so that a mean padded to max_tokens with its tail (as an earlier
    version stored it) gives the same bits as today's mean and tail."""
    T, P = w.shape[-1], mean.shape[0]
    rows = mean[:T] if T <= P else torch.cat([mean, tail.expand(T - P, -1)])  # [T, H]: mu_t, row by row
    return torch.matmul(w, rows.to(torch.float64))  # [..., C, H]


def pool(h: torch.Tensor, lengths: Sequence[int], chunks: Sequence[Chunk],
         means: Sequence[Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]]] = (None,),
         spans: Optional[Sequence[Tuple[int, int]]] = None) -> List[torch.Tensor]:
    """Pooled vectors of a right-padded batch h [B, T, H]: one [B, C*H] float32 tensor per entry of means.
    Each text pools its span [start, end) of its lengths[b] tokens (all of them if spans is None);
    the mean is indexed by the position in the whole sequence, as it was accumulated.

    An entry None pools h_t (raw); a per-position corpus mean, (mean [P, H], tail [H] for t >= P)
    as CorpusMean.to gives it (float64), pools h_t - mu_t (centred, subtracted before pooling). The
    whole batch is pooled at once on its device in float64, pads zeroed and weighted 0, so a text's
    vector does not depend on the batch it shares (to float32). h itself is left unchanged.

    Pooling is linear, so W(h - mean) = Wh - W mean: the centred vectors cost a [B, C, T] x [T, H]
    product, not a second float64 copy of h. In float64 the difference loses nothing that float32
    keeps, even where the mean dominates the stream (|Wh| / |W(h - mean)| of 10^3 costs 10^-13).
    """
    B, T, _ = h.shape
    w = (batch_weights(chunks, lengths, T, h.device) if spans is None else
         batch_weights(chunks, [e - s for s, e in spans], T, h.device, [s for s, _ in spans]))  # [B, C, T] float64
    valid = to_device(lengths, torch.int64, h.device)[:, None] > torch.arange(T, device=h.device)  # [B, T]
    # A copy even when h is float64 already: the caller's h is left as it was.
    x = h.to(torch.float64, copy=True).masked_fill_(~valid[..., None], 0.0)  # [B, T, H]: pads may hold anything
    raw = torch.bmm(w, x)  # [B, C, H] float64
    del x
    outs = []
    for mean in means:
        pooled = raw if mean is None else raw - pooled_mean(w, *mean)  # [B, C, H]
        outs.append(pooled.reshape(B, -1).to(torch.float32))  # [B, C*H]
    return outs
