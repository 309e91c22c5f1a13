"""Rank and linear correlation of two score lists: Spearman's rho (Pearson of average ranks, so ties
share their mean rank) and Pearson's r, in float64. Either is undefined (NaN) when a list is
constant within rounding: seven cosines of 0.7 have a float mean 1e-16 off, and the rounding noise
left after subtracting it would otherwise be correlated as if it were data."""

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


def constant(x) -> bool:
    """Whether the values of x differ by no more than a few units in the last place of the largest
    (the cosine of a vector with itself varies by 2 ulps, measured for 128 to 20,480 dims)."""
    x = np.asarray(x, dtype=np.float64)
    return bool(np.ptp(x) <= 8 * np.finfo(np.float64).eps * np.abs(x).max())


def _check(x, y) -> None:
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"a correlation needs two lists of equal length >= 2, got {len(x)} and {len(y)}")


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    _check(x, y)
    if constant(x) or constant(y):
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    return float(dx @ dy / np.sqrt((dx @ dx) * (dy @ dy)))


def spearman(x, y) -> float:
    if not (np.isfinite(x).all() and np.isfinite(y).all()):  # NaN would take a rank of its own
        raise ValueError("a correlation of values that are not all finite")
    _check(x, y)
    if constant(x) or constant(y):  # values a rounding apart would otherwise get ranks of their own
        return float("nan")
    return pearson(average_ranks(x), average_ranks(y))
