"""Bootstrap intervals: how far a statistic of N units (the scored pairs of an STS set, the queries
of a retrieval) would move had the N units been drawn again. Percentile intervals over `resamples`
draws of N units with replacement, from one seeded generator (Efron & Tibshirani 1993, ch. 13). A
difference of two statistics is resampled paired: the same draws for both, so what the two share
(the same hard pairs, the same easy queries) cancels.

A resample is a multiset of units, so it is held as counts [B, N] (how often each unit was drawn)
and every statistic is a weighted one: a resampled Spearman costs O(B N), with no sort per draw.
Pure numpy."""

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np


@dataclass(frozen=True)
class Bootstrap:
    resamples: int = 1000  # B draws
    seed: int = 0  # the same seed, the same draws, the same intervals
    level: float = 0.95  # the interval's coverage

    def draws(self, n: int) -> np.ndarray:
        """[B, n] unit indices: row b is the b-th resample, the same for every statistic of n units."""
        return np.random.default_rng(self.seed).integers(0, n, size=(self.resamples, n))

    def counts(self, n: int) -> np.ndarray:
        """[B, n] how many times each unit is in each resample of draws(n)."""
        idx = self.draws(n) + n * np.arange(self.resamples)[:, None]
        return np.bincount(idx.ravel(), minlength=self.resamples * n).reshape(self.resamples, n)

    def interval(self, values: np.ndarray) -> Optional[Tuple[float, float]]:
        """The central `level` share of a statistic's B resampled values; None where the statistic is
        undefined (NaN: a constant resample) in more draws than one tail holds, as no interval can be read."""
        values = np.asarray(values, dtype=np.float64)
        defined = values[np.isfinite(values)]
        tail = (1 - self.level) / 2
        if len(defined) == 0 or len(values) - len(defined) > tail * len(values):
            return None
        low, high = np.quantile(defined, [tail, 1 - tail])
        return float(low), float(high)

    def record(self, unit: str) -> dict:
        """What the intervals were made with, for the JSON beside them: enough to make them again."""
        return {"method": "percentile", "unit": unit, "resamples": self.resamples, "seed": self.seed,
                "level": self.level}


def mean(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[B]: the mean of a per-unit value [N] in each resample (MRR, recall@k)."""
    return counts @ np.asarray(values, dtype=np.float64) / counts.sum(1)


def ranks(x: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[B, N]: the rank that unit i's value has among the values drawn in resample b, ties (a unit drawn
    twice, or two units of one value) sharing their mean rank, as the expanded sample would give them."""
    values, group = np.unique(np.asarray(x, dtype=np.float64), return_inverse=True)  # [G], [N]
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], np.arange(len(values)))
    per_value = np.add.reduceat(counts[:, order], starts, axis=1)  # [B, G] draws of each distinct value
    below = np.cumsum(per_value, 1) - per_value
    return (below + (per_value + 1) / 2)[:, group]


def _constant(x: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[B] bool: resamples whose drawn values of x [N] differ by no more than correlation.constant allows."""
    drawn = counts > 0
    high, low = np.where(drawn, x, -np.inf).max(1), np.where(drawn, x, np.inf).min(1)
    return high - low <= 8 * np.finfo(np.float64).eps * np.where(drawn, np.abs(x), 0).max(1)


def _pearson(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    w = counts / counts.sum(1, keepdims=True)  # [B, N]
    dx = x - (w * x).sum(1, keepdims=True)
    dy = y - (w * y).sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w * dx * dy).sum(1) / np.sqrt((w * dx * dx).sum(1) * (w * dy * dy).sum(1))


def pearson(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[B]: Pearson's r of the per-unit values x, y [N] in each resample; NaN where either is constant
    within rounding (correlation.pearson)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return np.where(_constant(x, counts) | _constant(y, counts), np.nan, _pearson(x, y, counts))


def spearman(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[B]: Spearman's rho of x, y [N] in each resample (Pearson of average ranks); NaN where either is
    constant within rounding (correlation.spearman)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    rho = _pearson(ranks(x, counts), ranks(y, counts), counts)
    return np.where(_constant(x, counts) | _constant(y, counts), np.nan, rho)
