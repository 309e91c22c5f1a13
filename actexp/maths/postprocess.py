"""Post-processing of pooled vectors with statistics fitted on a set of texts, as the sentence-
embedding literature does it; applied to each chunk's H dims apart, with that chunk's own fit.

  global_mean  x - mu                          mu: the fit set's mean vector
  abtt         x - mu minus its projection on the fit set's top D principal directions
               ("All-but-the-Top", Mu & Viswanath 2018)
  whitening    (x - mu) U_k diag(lambda_k)^(-1/2), from the eigendecomposition U diag(lambda) U^T of
               the fit set's covariance, keeping the top k directions (Su et al. 2021)

A Fit holds mu and the eigendecomposition, so every variant and every D or k come from one fit.
It keeps the directions the fit set spans, at most min(H, N - 1) for N vectors: beyond them the
variance is zero, so ABTT has nothing to remove and whitening would divide by zero there.
Pure numpy in float64: no model, no files.
"""

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

METHODS = ("global_mean", "abtt", "whitening")


@dataclass
class Fit:
    """The statistics of one chunk's vectors over a fit set."""

    mean: np.ndarray  # [H]
    eigvals: np.ndarray  # [R] of the covariance (divided by N - 1, as np.cov), descending; R = min(H, N - 1)
    eigvecs: np.ndarray  # [H, R], column i the direction of eigvals[i]
    count: int  # texts in the fit set


def fit(x: np.ndarray) -> Fit:
    """The Fit of vectors x [N, H] (N >= 2)."""
    centred = np.array(x, dtype=np.float64)  # [N, H]: a copy, centred in place (never the caller's array)
    if centred.ndim != 2 or len(centred) < 2:
        raise ValueError(f"a fit needs at least 2 vectors as an [N, H] array, got shape {centred.shape}")
    n, h = centred.shape
    mean = centred.mean(0)  # [H]
    centred -= mean
    covariance = centred.T @ centred  # [H, H]
    covariance /= n - 1  # in place: an H x H float64 is 210 MB at H = 5120
    eigvals, eigvecs = np.linalg.eigh(covariance)  # ascending; [H], [H, H]
    rank = min(h, n - 1)  # the directions beyond it are an arbitrary basis of zero variance
    return Fit(mean, eigvals[::-1][:rank].copy(), eigvecs[:, ::-1][:, :rank].copy(), n)


def apply(method: str, x: np.ndarray, f: Fit, abtt_dims: int = 3, whitening_dims: Optional[int] = None) -> np.ndarray:
    """x [N, H] post-processed by `method` with the fit f: [N, H], or [N, k] for whitening to k dims."""
    x = np.asarray(x, dtype=np.float64) - f.mean  # [N, H]: every method removes the mean first
    if method == "global_mean":
        return x
    spanned = len(f.eigvals)
    if method == "abtt":
        if abtt_dims > spanned:
            raise ValueError(f"ABTT of {abtt_dims} directions, but the fit set's {f.count} texts span {spanned}: remove fewer")
        top = f.eigvecs[:, :abtt_dims]  # [H, D]
        return x - (x @ top) @ top.T
    if method == "whitening":
        k = whitening_dims or len(f.mean)
        if k > spanned:
            raise ValueError(f"whitening keeps {k} dims, but the fit set's {f.count} texts span {spanned}: "
                             "keep fewer dims or fit on more texts")
        values = f.eigvals[:k]
        if values[-1] <= values[0] * 1e-10:
            raise ValueError(f"the fit set's covariance is singular within the top {k} directions "
                             f"({f.count} texts, {len(f.mean)} dims): keep fewer dims or fit on more texts")
        return x @ (f.eigvecs[:, :k] / np.sqrt(values))  # [N, k]
    raise ValueError(f"unknown post-processing {method!r}: one of {', '.join(METHODS)}")


def per_chunk(x: np.ndarray, n_chunks: int) -> List[np.ndarray]:
    """Vectors [N, C*H] as the C views [N, H] of their pooling chunks (chunk c holds dims c*H..(c+1)*H-1)."""
    h = x.shape[1] // n_chunks
    if h * n_chunks != x.shape[1]:
        raise ValueError(f"{x.shape[1]} dims do not split into {n_chunks} chunks")
    return [x[:, c * h:(c + 1) * h] for c in range(n_chunks)]
