"""Exact nearest neighbours by cosine similarity over rows read block by block, so the rows
never need to fit in memory at once (README, "Analysis"). Pure numpy."""

from typing import Callable, Tuple

import numpy as np

from .retrieval import unit_rows


def top_k(queries: np.ndarray, read: Callable[[int, int], np.ndarray], n_rows: int, k: int,
          block_rows: int = 8192, progress=None) -> Tuple[np.ndarray, np.ndarray]:
    """The k rows most cosine-similar to each query: (rows [Q, k] int64, cosines [Q, k] float32),
    best first; equal float32 scores go to the lower row (the cosines of two parallel rows of
    different norms may differ in the last bit, and are then ordered by it). A row or query that is
    not finite scores -inf: last, never a hit. `read(start, stop)` returns rows [stop - start, D].

    One block of rows ([block_rows, D] float32) and a [Q, block_rows] score matrix are in memory
    at a time; the products are float32 on unit vectors, so cosines are exact to ~1e-6.
    """
    k = min(k, n_rows)
    q = unit_rows(queries).astype(np.float32)  # [Q, D]
    best_rows = np.zeros((len(q), 0), dtype=np.int64)  # [Q, <=k]
    best = np.zeros((len(q), 0), dtype=np.float32)  # [Q, <=k]
    for start in range(0, n_rows, block_rows):
        stop = min(start + block_rows, n_rows)
        block = read(start, stop)  # [stop - start, D] float32
        # Divide the scores, not the rows, by the rows' norms: no normalised copy of the block.
        scores = (q @ block.T) / np.maximum(np.linalg.norm(block, axis=1), 1e-30)  # [Q, stop - start]
        scores = np.where(np.isnan(scores), -np.inf, scores)
        scores = np.concatenate([best, scores.astype(np.float32)], 1)
        rows = np.concatenate([best_rows, np.broadcast_to(np.arange(start, stop), (len(q), stop - start))], 1)
        kept = min(k, scores.shape[1])  # fewer than k while the first blocks are smaller than k
        kth = np.partition(scores, -kept, axis=1)[:, -kept:].min(1)  # [Q]: the kept-th best score
        best, best_rows = np.empty((len(q), kept), np.float32), np.empty((len(q), kept), np.int64)
        for i in range(len(q)):  # sort only the candidates, by score then row: ties go to the lower row
            keep = np.flatnonzero(scores[i] >= kth[i])
            order = keep[np.lexsort((rows[i, keep], -scores[i, keep]))[:kept]]
            best[i], best_rows[i] = scores[i, order], rows[i, order]
        if progress is not None:
            progress(stop - start)
    return best_rows, best
