"""The in-process backend: load the model here and turn texts into pooled vectors or mean statistics."""

import logging
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from ..activations import stream
from ..centering import MeanAccumulator
from ..errors import UserError
from ..model import load_model
from ..pooling import Chunk, pool

log = logging.getLogger(__name__)


@dataclass
class Vectors:
    raw: torch.Tensor  # [N, C*H] float32, on the CPU
    centered: Optional[torch.Tensor]  # [N, C*H] float32, when a corpus mean was given
    n_tokens: List[int]
    truncated: List[bool]


class LocalBackend:
    def __init__(self, model_cfg, hardware_cfg):
        self.lm = load_model(model_cfg, hardware_cfg)
        self.batch_tokens, self.max_padding = hardware_cfg.batch_tokens, hardware_cfg.max_padding

    @property
    def metadata(self) -> dict:
        return self.lm.metadata

    def _encode(self, texts: Sequence[str]):
        ids, truncated = self.lm.encode(texts)
        if any(truncated):
            log.warning("%d of %d texts were truncated to model.max_tokens=%d tokens",
                        sum(truncated), len(texts), self.lm.max_tokens)
        empty = [i for i, x in enumerate(ids) if not x]
        if empty:
            raise UserError(f"text {empty[0]} has no tokens: give non-empty texts")
        return ids, truncated

    def _batches(self, ids):
        return stream(self.lm, ids, self.batch_tokens, self.max_padding)

    def vectors(self, texts: Sequence[str], chunks: Sequence[Chunk], mean: Optional[torch.Tensor] = None) -> Vectors:
        """Raw vectors, and centred ones (h_t - mean_t pooled) too when mean [P, H] is given."""
        ids, truncated = self._encode(texts)
        dims = len(chunks) * self.lm.hidden_size
        raw = torch.empty(len(texts), dims, dtype=torch.float32)  # [N, C*H]
        centered = None if mean is None else torch.empty(len(texts), dims, dtype=torch.float32)  # [N, C*H]
        mean = None if mean is None else mean.to(self.lm.device)
        for batch, h, lengths in self._batches(ids):
            raw[batch] = pool(h, lengths, chunks).cpu()
            if mean is not None:
                centered[batch] = pool(h, lengths, chunks, mean).cpu()
        return Vectors(raw, centered, [len(x) for x in ids], truncated)

    def mean_stats(self, texts: Sequence[str]) -> MeanAccumulator:
        """Per-position float64 sum and count of h_t over the texts (one shard of a corpus mean)."""
        ids, _ = self._encode(texts)
        acc = MeanAccumulator(self.lm.hidden_size, self.lm.device)
        for _, h, lengths in self._batches(ids):
            acc.add(h, lengths)
        return acc
