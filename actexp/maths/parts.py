"""The parts of pooled vectors that are post-processed and scored apart.

A vector of model.layers=each is [L*C*H]: block l's chunk c is dims (l*C + c)*H onwards. Its parts
are each block's chunks, then the chunks of the blocks' mean, which is the vector of
model.layers=all (pooling and centring are linear in the stream). A vector of one block (or of
the layer mean) has its C chunks as parts. Parts are made one at a time in float64, so
post-processing every block never holds a float64 copy of all of them.
Pure numpy: no model, no files.
"""

from typing import List, Sequence, Tuple

import numpy as np


def n_parts(n_chunks: int, n_blocks: int = 1) -> int:
    """How many parts vectors of n_blocks blocks of n_chunks chunks have: the blocks' mean adds C when L > 1."""
    return n_chunks * (n_blocks + (n_blocks > 1))


class Parts(Sequence):
    """x [N, L*C*H] as L*C parts [N, H] (plus C for the blocks' mean when L > 1), in float64."""

    def __init__(self, x: np.ndarray, n_chunks: int, n_blocks: int = 1):
        self.x, self.n_chunks, self.n_blocks = x, n_chunks, n_blocks
        self.h = x.shape[1] // (n_chunks * n_blocks)
        if self.h * n_chunks * n_blocks != x.shape[1]:
            raise ValueError(f"{x.shape[1]} dims do not split into {n_blocks} blocks of {n_chunks} chunks")

    def __len__(self) -> int:
        return n_parts(self.n_chunks, self.n_blocks)

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(i)
        C, H = self.n_chunks, self.h
        if i < self.n_blocks * C:
            return self.x[:, i * H:(i + 1) * H].astype(np.float64)  # [N, H]
        c = i - self.n_blocks * C  # a chunk of the blocks' mean
        total = np.zeros((len(self.x), H))  # [N, H]
        for block in range(self.n_blocks):
            total += self.x[:, (block * C + c) * H:(block * C + c + 1) * H]
        return total / self.n_blocks

    def groups(self, chunk_labels: Sequence[str]) -> List[Tuple[str, List[Tuple[int, str]]]]:
        """[(group, [(part index, label)])]: one group per block ("b0/", ...) and the blocks' mean
        ("mean/"), or a single unnamed group ("") for a vector of one block. A group's "all" label is
        its chunks side by side."""
        C = self.n_chunks
        if self.n_blocks == 1:
            return [("", [(c, label) for c, label in enumerate(chunk_labels)])]
        names = [f"b{block}/" for block in range(self.n_blocks)] + ["mean/"]
        return [(name, [(g * C + c, f"{name}{label}") for c, label in enumerate(chunk_labels)])
                for g, name in enumerate(names)]
