"""Figures of vectors: cosine-similarity heatmaps and distribution plots. Matplotlib only, no
config; every PNG is written atomically. All text is black."""

import io
from pathlib import Path
from typing import List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap, TwoSlopeNorm  # noqa: E402

from .io import write_bytes  # noqa: E402

# RdBu without its darkest ends, so black annotations stay readable on every cell.
DIVERGING = LinearSegmentedColormap.from_list("actexp_rdbu", plt.get_cmap("RdBu_r")(np.linspace(0.12, 0.88, 256)))
plt.rcParams.update({"text.color": "black", "axes.labelcolor": "black", "axes.titlecolor": "black",
                     "xtick.color": "black", "ytick.color": "black", "axes.edgecolor": "black"})


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, facecolor="white")
    plt.close(fig)
    return write_bytes(path, buf.getvalue())


def off_diagonal(sim: np.ndarray) -> np.ndarray:
    return sim[~np.eye(len(sim), dtype=bool)] if len(sim) > 1 else sim.ravel()


def color_scale(matrices: Sequence[np.ndarray], vmin=None, vmax=None, center=None) -> Tuple[float, float, float]:
    """(vmin, vmax, center) of one colour scale for several similarity matrices.

    By default the range of their off-diagonal values (the diagonal is 1 and saturates), with the
    middle colour at 0 when the range spans 0 and at its midpoint otherwise, so an all-positive
    raw matrix still uses every colour. A center outside the range widens it symmetrically.
    """
    values = np.concatenate([off_diagonal(m) for m in matrices])
    lo = float(values.min()) if vmin is None else float(vmin)
    hi = float(values.max()) if vmax is None else float(vmax)
    if hi - lo < 0.02:  # one value: give it a visible range
        lo, hi = lo - 0.01, hi + 0.01
    if center is None:
        center = 0.0 if lo < 0 < hi else (lo + hi) / 2
    half = max(center - lo, hi - center)
    if not lo < center < hi:
        lo, hi = center - half, center + half
    return lo, hi, float(center)


def heatmap(sim: np.ndarray, names: Sequence[str], title: str, path: Path,
            scale: Tuple[float, float, float]) -> Path:
    """Annotated heatmap of a similarity matrix on a given colour scale (color_scale)."""
    n = len(names)
    side = max(6.0, 0.55 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.8, side))
    vmin, vmax, center = scale
    image = ax.imshow(sim, cmap=DIVERGING, norm=TwoSlopeNorm(vcenter=center, vmin=vmin, vmax=vmax))
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    size = 7 if n <= 12 else 6 if n <= 24 else 4
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=size, color="black")
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("cosine similarity")
    ax.set_title(title, fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def _panels(labels: Sequence[str], title: str, width: float = 6.5, height: float = 4.5):
    fig, axes = plt.subplots(1, len(labels), figsize=(width * len(labels), height), squeeze=False)
    fig.suptitle(title, fontsize=12)
    return fig, axes[0]


def norms(sets: List[np.ndarray], labels: Sequence[str], names: Sequence[str], path: Path) -> Path:
    fig, axes = _panels(labels, "L2 norm per sample", height=max(4.5, 0.25 * len(names) + 1.5))
    for ax, x, label in zip(axes, sets, labels):
        ax.barh(range(len(names)), np.linalg.norm(x.astype(np.float64), axis=1), color="#6a8fbf")
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(label)
        ax.set_xlabel("norm")
    fig.tight_layout()
    return _save(fig, path)


def value_histograms(sets: List[np.ndarray], labels: Sequence[str], path: Path) -> Path:
    fig, axes = _panels(labels, "Distribution of vector values (all samples, all dims)")
    for ax, x, label in zip(axes, sets, labels):
        ax.hist(x.ravel(), bins=120, color="#6a8fbf", log=True)
        ax.set_title(f"{label}: mean {x.mean():.3g}, std {x.std():.3g}")
        ax.set_xlabel("value")
        ax.set_ylabel("count (log)")
    fig.tight_layout()
    return _save(fig, path)


def dim_stats(sets: List[np.ndarray], labels: Sequence[str], chunk_size: int, path: Path) -> Path:
    chunked = chunk_size < sets[0].shape[1]
    fig, axes = _panels(labels, "Per-dimension mean and std across samples", width=8)
    for ax, x, label in zip(axes, sets, labels):
        dims = np.arange(x.shape[1])
        ax.plot(dims, x.mean(0), lw=0.6, color="#b2443a", label="mean")
        ax.plot(dims, x.std(0), lw=0.6, color="#3a6eb2", label="std")
        for edge in range(chunk_size, x.shape[1], chunk_size):
            ax.axvline(edge, color="black", lw=0.5, ls=":")
        ax.set_title(label)
        ax.set_xlabel("dimension (dotted lines: chunk edges)" if chunked else "dimension")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def top_dims(x: np.ndarray, k: int) -> np.ndarray:
    """The k dimensions with the largest mean |value| across samples (massive activations)."""
    return np.argsort(-np.abs(x).mean(0), kind="stable")[:k]


def outlier_dims(sets: List[np.ndarray], labels: Sequence[str], k: int, chunk_labels: Sequence[str],
                 path: Path) -> Path:
    """The top k dimensions, each named by its chunk and hidden unit (exp 0.067 / unit 44)."""
    fig, axes = _panels(labels, f"Top {k} dimensions by mean |value|")
    width = sets[0].shape[1] // len(chunk_labels)
    for ax, x, label in zip(axes, sets, labels):
        top = top_dims(x, k)
        ax.bar(range(len(top)), np.abs(x[:, top]).mean(0), color="#b2443a")
        ax.set_xticks(range(len(top)), [f"{chunk_labels[d // width]} / unit {d % width}" for d in top],
                      rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{label} (median |value| {np.median(np.abs(x)):.3g})")
        ax.set_xlabel("chunk / hidden unit")
        ax.set_ylabel("mean |value|")
    fig.tight_layout()
    return _save(fig, path)


def projection(coords: List[np.ndarray], labels: Sequence[str], names: Sequence[str], groups, path: Path,
               title: str) -> Path:
    """2-D scatter of each set's first two principal components ([N, 2] each), one panel per set,
    coloured by group (when there are groups); texts are named when there are at most 40."""
    fig, axes = _panels(labels, title, width=6.5, height=6.0)
    palette = plt.get_cmap("tab10" if groups is None or len(set(groups)) <= 10 else "tab20")
    kinds = sorted(set(groups)) if groups is not None else [None]
    for ax, xy, label in zip(axes, coords, labels):
        for k, group in enumerate(kinds):
            here = [i for i in range(len(xy)) if groups is None or groups[i] == group]
            ax.scatter(xy[here, 0], xy[here, 1], s=28 if len(xy) <= 200 else 6, color=palette(k % palette.N),
                       label=group, alpha=0.9 if len(xy) <= 200 else 0.5)
        if len(names) <= 40:
            for (x, y), name in zip(xy, names):
                ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_title(label)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        if groups is not None:
            ax.legend(fontsize=8, title="group", loc="best")
    fig.tight_layout()
    return _save(fig, path)
