"""Retrieval of labelled texts by cosine similarity: recall@k, MRR and the same-vs-different group
margin (README, "Analysis"). Pure numpy: knows nothing of models, configs or files."""

from math import comb
from typing import Dict, Optional, Sequence

import numpy as np


def unit_rows(x: np.ndarray) -> np.ndarray:
    """[N, D] -> [N, D] float64 rows of norm 1 (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)


def cosine_matrix(x: np.ndarray) -> np.ndarray:
    """[N, D] -> [N, N] cosine similarities in float64."""
    u = unit_rows(x)
    return u @ u.T


def relevance(groups: Sequence, partners: Optional[Sequence[Optional[int]]] = None) -> np.ndarray:
    """[N, N] bool: what counts as a right answer for each query. With partners (index of each
    text's partner, or None), only the partner; otherwise every other text of the same group."""
    n = len(groups)
    if partners is not None:
        rel = np.zeros((n, n), dtype=bool)
        for i, j in enumerate(partners):
            if j is not None:
                rel[i, j] = True
    else:
        g = np.asarray(groups, dtype=object)
        rel = g[:, None] == g[None, :]
    np.fill_diagonal(rel, False)
    return rel


def ranks(sim: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Rank (1 = most similar) of each query's best-ranked right answer among all other texts;
    one entry per query that has a right answer. Ties count against the answer: a right answer
    tied with a wrong one ranks below it, so a constant similarity earns nothing. A similarity that
    is not a number (a non-finite vector) counts as the lowest, so it is never a hit."""
    sim = np.where(np.isnan(sim), -np.inf, sim)
    out = []
    for i in np.flatnonzero(rel.any(1)):
        best = sim[i, rel[i]].max()
        wrong = ~rel[i]
        wrong[i] = False  # a text never retrieves itself
        out.append(1 + int(np.sum(sim[i, wrong] >= best)))
    return np.array(out, dtype=np.int64)


def per_query(sim: np.ndarray, rel: np.ndarray, ks: Sequence[int] = (1, 5)) -> Dict[str, np.ndarray]:
    """Each query's hit@k (1 if a right answer is in its top k, else 0) and reciprocal rank [Q]: the
    units that retrieval() averages and a bootstrap resamples."""
    r = ranks(sim, rel)
    if len(r) == 0:
        raise ValueError("no query has a right answer: every group has one text")
    return {f"recall@{k}": (r <= k).astype(np.float64) for k in ks} | {"mrr": 1.0 / r}


def retrieval(sim: np.ndarray, rel: np.ndarray, ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """recall@k (share of queries with a right answer in the top k), MRR, and the query count."""
    values = per_query(sim, rel, ks)
    return {metric: float(v.mean()) for metric, v in values.items()} | {"queries": len(values["mrr"])}


def chance(rel: np.ndarray, ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """Expected recall@k and MRR of similarities that order each query's candidates at random. A query
    with m right answers among n other texts finds none in its top r with probability
    C(n-m, r) / C(n, r); one partner among 19 others gives MRR H_19 / 19 = 0.187, recall@1 1/19."""
    n = rel.shape[0] - 1
    per = []
    for m in rel.sum(1)[rel.any(1)]:
        none_in_top = [comb(n - m, r) / comb(n, r) for r in range(n + 1)]  # P(best right rank > r)
        mrr = sum((none_in_top[r - 1] - none_in_top[r]) / r for r in range(1, n - m + 2))
        per.append([1 - none_in_top[min(k, n)] for k in ks] + [mrr])
    mean = np.mean(per, axis=0)
    return {f"recall@{k}": float(mean[i]) for i, k in enumerate(ks)} | {"mrr": float(mean[-1])}


def margin(sim: np.ndarray, groups: Sequence) -> Dict[str, float]:
    """Mean cosine of pairs of the same group, of different groups, and their difference."""
    g = np.asarray(groups, dtype=object)
    same = g[:, None] == g[None, :]
    off = ~np.eye(len(g), dtype=bool)
    if not (same & off).any() or not (~same).any():
        raise ValueError("the margin needs two groups and a group with two texts")
    within, between = float(sim[same & off].mean()), float(sim[~same].mean())
    return {"same_group": within, "different_group": between, "margin": within - between}
