"""job=plot: cosine-similarity heatmaps from a vector CSV -> similarity_<mode>_all.png, and for
modes with several chunks (long) one similarity_<mode>_chunk<k>.png per chunk, all on one colour
scale (plot.vmin, plot.vmax, plot.center) so their colours compare."""

import logging
from pathlib import Path

from .. import plots
from ..retrieval import cosine_matrix
from ..errors import UserError
from ..io import read_vectors_csv, vectors_csv_path
from ..report import plural, wrote
from . import common

log = logging.getLogger(__name__)


def run(cfg, out_dir, tracker, backend) -> dict:
    variant = "centered" if cfg.centering.name != "none" else "raw"
    path = Path(cfg.plot.csv) if cfg.plot.csv else vectors_csv_path(out_dir, cfg.pooling.name, variant)
    if not cfg.plot.csv and not path.is_file():
        raise UserError("job=plot needs plot.csv=PATH: a vectors_<mode>_mode_<raw|centered>.csv of a csv or pipeline run")
    vectors, names, info = read_vectors_csv(path)
    pooling = info.get("pooling", {})
    mode = pooling.get("name", cfg.pooling.name)
    labels = pooling.get("labels") or [c.label for c in common.chunks(cfg.pooling)]
    if vectors.shape[1] % len(labels):
        raise UserError(f"{path} has {vectors.shape[1]} rows, not a multiple of the {len(labels)} chunks of pooling={mode}")
    kind = info.get("variant", variant)
    title = f"Cosine similarity, {mode} mode, {kind}"
    figures = {f"similarity_{mode}_all.png": (cosine_matrix(vectors),
                                              f"{title} ({'all chunks' if len(labels) > 1 else labels[0]})")}
    if len(labels) > 1:
        width = vectors.shape[1] // len(labels)
        for k, label in enumerate(labels):
            figures[f"similarity_{mode}_chunk{k}.png"] = (cosine_matrix(vectors[:, k * width:(k + 1) * width]),
                                                          f"{title}: chunk {k} ({label})")
    sims = [sim for sim, _ in figures.values()]
    scale = plots.color_scale(sims, cfg.plot.vmin, cfg.plot.vmax, cfg.plot.center)
    written = [plots.heatmap(sim, names, t, Path(out_dir) / name, scale) for name, (sim, t) in figures.items()]
    tracker.images(written)
    metrics = {"cosine_offdiag_mean": float(plots.off_diagonal(sims[0]).mean())}
    metrics |= {f"cosine_offdiag_mean/{label}": float(plots.off_diagonal(sim).mean())
                for label, sim in zip(labels, sims[1:])}
    metrics |= {"color_vmin": scale.vmin, "color_vmax": scale.vmax, "color_center": scale.center}
    log.info(f"{plural(len(written), 'heatmap')} of {path.name}, colours from {scale.vmin:.3g} to {scale.vmax:.3g} "
             f"({scale.rule})")
    wrote(log, written)
    return metrics
