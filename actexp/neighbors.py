"""Exact nearest neighbours by cosine similarity over rows read block by block, so the rows
never need to fit in memory at once (docs/analysis.md). Pure numpy."""

from typing import Callable, Tuple

import numpy as np

from .retrieval import unit_rows


def top_k(queries: np.ndarray, read: Callable[[int, int], np.ndarray], n_rows: int, k: int,
          block_rows: int = 65536, progress=None) -> Tuple[np.ndarray, np.ndarray]:
    """The k rows most cosine-similar to each query: (rows [Q, k] int64, cosines [Q, k] float32),
    best first; ties go to the lower row. `read(start, stop)` returns rows [stop - start, D].

    One block of rows ([block_rows, D] float32) and a [Q, block_rows] score matrix are in memory
    at a time; the products are float32 on unit vectors, so cosines are exact to ~1e-6.
    """
    k = min(k, n_rows)
    q = unit_rows(queries).astype(np.float32)  # [Q, D]
    best_rows = np.zeros((len(q), 0), dtype=np.int64)  # [Q, <=k]
    best = np.zeros((len(q), 0), dtype=np.float32)  # [Q, <=k]
    for start in range(0, n_rows, block_rows):
        stop = min(start + block_rows, n_rows)
        scores = q @ unit_rows(read(start, stop)).astype(np.float32).T  # [Q, stop - start]
        rows = np.broadcast_to(np.arange(start, stop), scores.shape)
        best = np.concatenate([best, scores], 1)
        best_rows = np.concatenate([best_rows, rows], 1)
        # Sort by score, then row: the kept k do not depend on block_rows.
        order = np.lexsort((best_rows, -best), axis=1)[:, :k]
        best, best_rows = np.take_along_axis(best, order, 1), np.take_along_axis(best_rows, order, 1)
        if progress is not None:
            progress(stop - start)
    return best_rows, best
