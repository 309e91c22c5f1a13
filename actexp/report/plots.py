"""Figures of vectors: cosine-similarity heatmaps and distribution plots. Matplotlib only, no
config; every PNG is written atomically. All text is black."""

import io
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap, Normalize  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..store.io import write_bytes  # noqa: E402

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


class ColorScale(NamedTuple):
    vmin: float
    vmax: float
    center: float  # the white middle, halfway between vmin and vmax
    rule: str  # how the middle was chosen, for the colour bar's label


def color_scale(matrices: Sequence[np.ndarray], vmin=None, vmax=None, center=None) -> ColorScale:
    """One colour scale for several similarity matrices, linear and symmetric about its middle, so
    equal distances from the middle get equal colours.

    By default the range of their off-diagonal values (the diagonal is 1 and saturates). The middle
    is 0 when that range spans 0 (a cosine of -0.09 is then as pale as +0.09, not as dark as +0.91),
    and the range's midpoint otherwise, so an all-positive raw matrix still uses every colour. The
    range is widened to be symmetric about the middle.
    """
    values = np.concatenate([off_diagonal(m) for m in matrices])
    lo = float(values.min()) if vmin is None else float(vmin)
    hi = float(values.max()) if vmax is None else float(vmax)
    if hi - lo < 0.02:  # one value: give it a visible range
        lo, hi = lo - 0.01, hi + 0.01
    if center is not None:
        rule = f"white at {float(center):g} (plot.center)"
    elif lo < 0 < hi:
        center, rule = 0.0, "white at 0, symmetric"
    else:
        center = (lo + hi) / 2
        rule = f"white at the range's midpoint {center:.2f}"
    half = max(center - lo, hi - center)
    return ColorScale(center - half, center + half, float(center), rule)


def heatmap_figure(sims: Sequence[np.ndarray], names: Sequence[str], titles: Sequence[str], scale: ColorScale,
                   title: Optional[str] = None):
    """Annotated heatmaps of similarity matrices of the same texts side by side (raw beside centred),
    all on one colour scale with one colour bar, so equal colours are equal cosines in every panel."""
    n, k = len(names), len(sims)
    side = max(6.0, 0.55 * n + 2.5)
    # The panels share the first one's row names: the others need no room for them.
    fig, axes = plt.subplots(1, k, figsize=(side * k - 1.8 * (k - 1) + 1.8, side + (0.4 if title else 0)), squeeze=False, sharey=True,
                             layout="constrained")
    norm = Normalize(vmin=scale.vmin, vmax=scale.vmax)
    size = 7 if n <= 12 else 6 if n <= 24 else 4
    for ax, sim, panel in zip(axes[0], sims, titles):
        image = ax.imshow(sim, cmap=DIVERGING, norm=norm)
        ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=size, color="black")
        ax.set_title(panel, fontsize=12)
    bar = fig.colorbar(image, ax=list(axes[0]), fraction=0.046 / k, pad=0.01, aspect=30)
    bar.set_label(f"cosine similarity ({scale.rule})")
    if title:
        fig.suptitle(title, fontsize=13)
    return fig


def heatmap(sims: Sequence[np.ndarray], names: Sequence[str], titles: Sequence[str], path: Path, scale: ColorScale,
            title: Optional[str] = None) -> Path:
    return _save(heatmap_figure(sims, names, titles, scale, title), path)


def _panels(labels: Sequence[str], title: str, width: float = 6.5, height: float = 4.5, sharex: bool = False):
    fig, axes = plt.subplots(1, len(labels), figsize=(width * len(labels), height), squeeze=False, sharex=sharex)
    fig.suptitle(title, fontsize=12)
    return fig, axes[0]


def norms_figure(sets: List[np.ndarray], labels: Sequence[str], names: Sequence[str]):
    """One bar per sample and panel; the panels share their norm axis, so their bars compare."""
    fig, axes = _panels(labels, "L2 norm per sample", height=max(4.5, 0.25 * len(names) + 1.5), sharex=True)
    for ax, x, label in zip(axes, sets, labels):
        ax.barh(range(len(names)), np.linalg.norm(x.astype(np.float64), axis=1), color="#6a8fbf")
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(label)
        ax.set_xlabel("norm")
        ax.xaxis.set_tick_params(labelbottom=True)
    fig.tight_layout()
    return fig


def norms(sets: List[np.ndarray], labels: Sequence[str], names: Sequence[str], path: Path) -> Path:
    return _save(norms_figure(sets, labels, names), path)


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


def projection_figure(coords: List[np.ndarray], labels: Sequence[str], names: Sequence[str], groups, title: str,
                      explained: Optional[List[Sequence[float]]] = None):
    """2-D scatter of each set's first two principal components ([N, 2] each), one panel per set,
    coloured by group (when there are groups), each axis with its share of the variance
    (`explained`: per set, PC1's and PC2's). Up to 40 texts are numbered beside their points and
    named in a key on the right, so long names cannot overlap."""
    numbered = len(names) <= 40
    fig, axes = _panels(labels, title, width=6.5, height=6.0)
    palette = plt.get_cmap("tab10" if groups is None or len(set(groups)) <= 10 else "tab20")
    kinds = sorted(set(groups)) if groups is not None else [None]
    for p, (ax, xy, label) in enumerate(zip(axes, coords, labels)):
        for k, group in enumerate(kinds):
            here = [i for i in range(len(xy)) if groups is None or groups[i] == group]
            ax.scatter(xy[here, 0], xy[here, 1], s=28 if len(xy) <= 200 else 6, color=palette(k % palette.N),
                       label=group, alpha=0.9 if len(xy) <= 200 else 0.5)
        if numbered:
            for i, (x, y) in enumerate(xy):
                ax.annotate(str(i + 1), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_title(label)
        shares = explained[p] if explained else None
        for axis, set_label, k in ((ax.xaxis, ax.set_xlabel, 0), (ax.yaxis, ax.set_ylabel, 1)):
            set_label(f"PC {k + 1}" + (f" ({100 * shares[k]:.0f} % of the variance)" if shares else ""))
        if groups is not None:
            ax.legend(fontsize=8, title="group", loc="best")
    if numbered:
        lines = [f"{i + 1:>2}  {name[:40]}" for i, name in enumerate(names)]
        width = (max(map(len, lines)) * 7 * 0.6 / 72 + 0.3) / fig.get_figwidth()  # 7 pt monospace, in figure widths
        fig.text(1 - width, 0.5, "\n".join(lines), fontsize=7, family="monospace", va="center", ha="left")
        fig.tight_layout(rect=(0, 0, 1 - width, 1))
    else:
        fig.tight_layout()
    return fig


def projection(coords: List[np.ndarray], labels: Sequence[str], names: Sequence[str], groups, path: Path,
               title: str, explained: Optional[List[Sequence[float]]] = None) -> Path:
    return _save(projection_figure(coords, labels, names, groups, title, explained), path)


def sts_scatter(cosines: dict, gold: np.ndarray, spearman: dict, path: Path, title: str) -> Path:
    """One panel per variant: each pair's cosine against its gold score, the median per tenth of the
    score range as a black line, and Spearman in the title."""
    names = list(cosines)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False, sharex=True)
    fig.suptitle(title, fontsize=11)
    for ax, name in zip(axes.flat, names):
        ax.scatter(gold, cosines[name], s=3, alpha=0.35, color="#2a6fb0", linewidths=0)
        edges = np.linspace(gold.min(), gold.max(), 11)  # the median cosine of each tenth of the score range
        which = np.clip(np.digitize(gold, edges[1:-1]), 0, 9)
        filled = [b for b in range(10) if (which == b).any()]
        ax.plot([(edges[b] + edges[b + 1]) / 2 for b in filled],
                [np.median(cosines[name][which == b]) for b in filled], color="black", linewidth=1.5)
        rho = spearman[name]
        ax.set_title(f"{name}: Spearman {'undefined' if rho is None else f'{100 * rho:.1f}'}", fontsize=10)
        ax.set_xlabel("gold score")
        ax.set_ylabel("cosine")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def sts_layers(by_block: dict, mean_of_blocks: dict, path: Path, title: str) -> Path:
    """Spearman x 100 against block, one line per variant; a dashed line of the same colour at the
    vector of the blocks' mean (model.layers=all). An undefined Spearman leaves a gap."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for k, (name, values) in enumerate(by_block.items()):
        colour = f"C{k % 10}"
        ax.plot(range(len(values)), [np.nan if v is None else 100 * v for v in values], marker="o", markersize=3,
                color=colour, label=name)
        if mean_of_blocks.get(name) is not None:
            ax.axhline(100 * mean_of_blocks[name], color=colour, linestyle="--", linewidth=0.9)
    ax.set_xlabel("block")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("Spearman x 100")
    ax.set_title(title + "\n(dashed: the blocks' mean)", fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
