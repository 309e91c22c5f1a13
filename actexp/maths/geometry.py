"""The shape of a set of vectors: anisotropy, rogue dimensions and principal components
(README, "Analysis"). Pure numpy: knows nothing of models, configs or files."""

from typing import Dict, Optional, Sequence

import numpy as np

from .retrieval import unit_rows


def pair_mask(n: int, groups: Optional[Sequence] = None) -> np.ndarray:
    """[N, N] bool: the pairs anisotropy averages over: texts of different groups, or (no groups)
    every pair of different texts."""
    if groups is None:
        return ~np.eye(n, dtype=bool)
    g = np.asarray(groups, dtype=object)
    return g[:, None] != g[None, :]


def cosine_contributions(x: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """[D]: each dimension's share of the mean cosine over the pairs (Timkey & van Schijndel 2021):
    CC_i = mean over pairs (a, b) of u_a,i * u_b,i with u = x / |x|; they sum to the mean cosine."""
    if not pairs.any():
        raise ValueError("no pairs to average over: give at least two texts (of different groups)")
    u = unit_rows(x)  # [N, D]
    return (u * (pairs.astype(np.float64) @ u)).sum(0) / pairs.sum()  # [D]


def anisotropy(x: np.ndarray, pairs: np.ndarray, top: int = 3) -> Dict[str, object]:
    """Mean cosine over the pairs (Ethayarajh 2019), and how much of it the `top` dimensions carry.

    rogue_share is sum of the top |CC_i| over sum of all |CC_i|: bounded in [0, 1] even when the
    mean cosine is near 0 (after centring), where Timkey & van Schijndel's signed ratio explodes.
    """
    cc = cosine_contributions(x, pairs)  # [D]
    order = np.argsort(-np.abs(cc), kind="stable")[:top]
    total = float(np.abs(cc).sum())
    return {"anisotropy": float(cc.sum()), "rogue_share": float(np.abs(cc[order]).sum() / total) if total else 0.0,
            "rogue_dims": [int(d) for d in order]}


def principal_components(x: np.ndarray) -> Dict[str, object]:
    """Variance along the principal components of x (its own mean removed): the share of the
    first, how many reach 90 % of the total, and every text's coordinates on the first two with
    those two's shares."""
    xc = np.asarray(x, dtype=np.float64)
    xc = xc - xc.mean(0)  # [N, D]
    gram = xc @ xc.T  # [N, N]: N << D, so its eigenvectors are cheaper than an SVD of x
    values, vectors = np.linalg.eigh(gram)
    values, vectors = np.clip(values[::-1], 0.0, None), vectors[:, ::-1]  # largest first
    total = values.sum()
    if total <= 0:
        return {"pc1_share": 0.0, "pcs_for_90": 0, "coords": np.zeros((len(xc), 2)), "shares": [0.0, 0.0]}
    shares = values / total
    coords = vectors[:, :2] * np.sqrt(values[:2])  # [N, 2] (fewer columns for one text)
    coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return {"pc1_share": float(shares[0]), "pcs_for_90": int(np.searchsorted(np.cumsum(shares), 0.9 - 1e-12) + 1),
            "coords": coords, "shares": [float(v) for v in np.pad(shares[:2], (0, max(0, 2 - len(shares))))]}
