"""Rank and linear correlation of two score lists: Spearman's rho (Pearson of average ranks, so ties
share their mean rank) and Pearson's r, in float64."""

import numpy as np


def average_ranks(x) -> np.ndarray:
    """Ranks 1..n of x; tied values all get the mean of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])  # first index of each run of ties
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"a correlation needs two lists of equal length >= 2, got {len(x)} and {len(y)}")
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt((dx @ dx) * (dy @ dy))
    return float(dx @ dy / denominator) if denominator > 0 else float("nan")  # a constant list: undefined


def spearman(x, y) -> float:
    if not (np.isfinite(x).all() and np.isfinite(y).all()):  # NaN would take a rank of its own
        raise ValueError("a correlation of values that are not all finite")
    return pearson(average_ranks(x), average_ranks(y))
