"""The in-process backend: load the model here and turn texts into pooled vectors."""

import logging
from dataclasses import dataclass
from typing import List, Sequence

import torch

from ..activations import stream
from ..model import load_model
from ..pooling import Chunk, pool

log = logging.getLogger(__name__)


@dataclass
class Vectors:
    vectors: torch.Tensor  # [N, C*H] float32, on the CPU
    n_tokens: List[int]
    truncated: List[bool]


class LocalBackend:
    def __init__(self, model_cfg, hardware_cfg):
        self.lm = load_model(model_cfg, hardware_cfg)
        self.batch_tokens, self.max_padding = hardware_cfg.batch_tokens, hardware_cfg.max_padding

    @property
    def metadata(self) -> dict:
        return self.lm.metadata

    def vectors(self, texts: Sequence[str], chunks: Sequence[Chunk]) -> Vectors:
        ids, truncated = self.lm.encode(texts)
        if any(truncated):
            log.warning("%d of %d texts were truncated to model.max_tokens=%d tokens",
                        sum(truncated), len(texts), self.lm.max_tokens)
        empty = [i for i, x in enumerate(ids) if not x]
        if empty:
            raise ValueError(f"texts {empty} have no tokens")
        out = torch.empty(len(texts), len(chunks) * self.lm.hidden_size, dtype=torch.float32)  # [N, C*H]
        for batch, h, lengths in stream(self.lm, ids, self.batch_tokens, self.max_padding):
            out[batch] = pool(h, lengths, chunks).cpu()
        return Vectors(out, [len(x) for x in ids], truncated)
