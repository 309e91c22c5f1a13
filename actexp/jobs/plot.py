"""job=plot: cosine-similarity heatmaps from a vector CSV -> similarity_<mode>_all.png, and for
modes with several chunks (long) one similarity_<mode>_chunk<k>.png per chunk."""

from pathlib import Path

import numpy as np

from .. import plots
from ..errors import UserError
from ..io import read_vectors_csv, vectors_csv_path
from . import common


def run(cfg, out_dir, tracker, backend) -> dict:
    variant = "centered" if cfg.centering.name != "none" else "raw"
    path = Path(cfg.plot.csv) if cfg.plot.csv else vectors_csv_path(out_dir, cfg.pooling.name, variant)
    vectors, names, info = read_vectors_csv(path)
    pooling = info.get("pooling", {})
    mode = pooling.get("name", cfg.pooling.name)
    labels = pooling.get("labels") or [c.label for c in common.chunks(cfg.pooling)]
    if vectors.shape[1] % len(labels):
        raise UserError(f"{path} has {vectors.shape[1]} rows, not a multiple of the {len(labels)} chunks of pooling={mode}")
    kind = info.get("variant", variant)
    sim = plots.cosine_matrix(vectors)
    written = [plots.heatmap(sim, names, f"Cosine similarity, {mode} mode, {kind} (all chunks)",
                             Path(out_dir) / f"similarity_{mode}_all.png")]
    metrics = {"cosine_offdiag_mean": float(sim[~np.eye(len(names), dtype=bool)].mean())}
    if len(labels) > 1:
        width = vectors.shape[1] // len(labels)
        for k, label in enumerate(labels):
            chunk_sim = plots.cosine_matrix(vectors[:, k * width:(k + 1) * width])
            written.append(plots.heatmap(chunk_sim, names, f"Cosine similarity, {mode} mode, {kind}: chunk {k} ({label})",
                                         Path(out_dir) / f"similarity_{mode}_chunk{k}.png"))
            metrics[f"cosine_offdiag_mean/{label}"] = float(chunk_sim[~np.eye(len(names), dtype=bool)].mean())
    tracker.images(written)
    print(f"{len(written)} heatmaps of {path.name} -> {out_dir}")
    return metrics

