"""Pooling over tokens: the weight vectors of docs/math.md and their application.

Pure torch: knows nothing of models, configs or files. Weights are float64.
"""

import functools
from dataclasses import dataclass
from typing import List, Optional, Sequence

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
    """Weights w_t over t = 0..n_tokens-1 for one chunk, summing to 1."""
    if n_tokens < 1:
        raise ValueError("pooling needs at least one token")
    t = torch.arange(n_tokens, dtype=torch.float64)  # [T]
    if chunk.kind == "last":
        return (t == n_tokens - 1).to(torch.float64)
    if chunk.kind == "mean":
        return torch.full((n_tokens,), 1.0 / n_tokens, dtype=torch.float64)
    w = torch.tensor(1.0 - chunk.alpha, dtype=torch.float64) ** (n_tokens - 1 - t)  # [T]
    return w / w.sum()


@functools.lru_cache(maxsize=8192)
def weights(chunks: Sequence[Chunk], n_tokens: int) -> torch.Tensor:
    """Weights of all chunks of a mode for one text of n_tokens: [C, n_tokens] float64 (cached: read only)."""
    return torch.stack([chunk_weights(c, n_tokens) for c in chunks])  # [C, T]


def pool(h: torch.Tensor, lengths: Sequence[int], chunks: Sequence[Chunk],
         means: Sequence[Optional[torch.Tensor]] = (None,)) -> List[torch.Tensor]:
    """Pooled vectors of a right-padded batch h [B, T, H]: one [B, C*H] float32 tensor per entry of means.

    An entry None pools h_t (raw); a per-position corpus mean [P, H] pools h_t - mean_t (centred).
    Pad positions get no weight. Each text is done alone in float64, so the result does not
    depend on how texts were batched and needs no [B, T, H] float64 copy.
    """
    chunks = tuple(chunks)
    outs = [torch.empty(len(lengths), len(chunks) * h.shape[-1], dtype=torch.float32, device=h.device)
            for _ in means]  # [B, C*H] each
    for b, n in enumerate(lengths):
        w = weights(chunks, n).to(h.device)  # [C, n]
        x = h[b, :n].to(torch.float64)  # [n, H]
        for out, mean in zip(outs, means):
            out[b] = (w @ (x if mean is None else x - mean[:n].to(torch.float64))).reshape(-1)
    return outs
