"""job=plot: cosine-similarity heatmaps from vector CSVs -> similarity_<mode>_all.png, and for modes
with several chunks (long) one similarity_<mode>_chunk<k>.png per chunk. Given this run's raw and
centred CSVs (the pipeline), each figure shows them side by side; every heatmap of the run is on one
colour scale (plot.vmin, plot.vmax, plot.center), so colours compare across panels and figures."""

import logging
from pathlib import Path

from ..errors import UserError
from ..maths.analysis import chunk_key
from ..maths.retrieval import cosine_matrix
from ..report import plots
from ..report.console import plural, wrote
from ..store.io import vectors_csv_path
from . import common

log = logging.getLogger(__name__)
VARIANT_TITLES = {"raw": "raw", "centered": "centred"}


def _csvs(cfg, out_dir: Path) -> list:
    """plot.csv, else this run's CSVs (raw and centred where both are there), as common.vector_csvs."""
    if cfg.plot.csv:
        return common.vector_csvs([cfg.plot.csv], out_dir, cfg.pooling.name, "plot.csv")
    if not any(vectors_csv_path(out_dir, cfg.pooling.name, v).is_file() for v in ("raw", "centered")):
        raise UserError("job=plot needs plot.csv=PATH: a vectors_<mode>_mode_<raw|centered>.csv of a csv or pipeline run")
    return common.vector_csvs([], out_dir, cfg.pooling.name, "plot.csv")


def _scale(cfg, sims):
    """The run's one colour scale; a bound that the cosines leave on the wrong side of the other one
    (plot.vmin=0.95 when none is above 0.9) is refused rather than drawn as one flat colour."""
    values = [plots.off_diagonal(s) for s in sims]
    lo, hi = min(float(v.min()) for v in values), max(float(v.max()) for v in values)
    if cfg.plot.vmin is not None and cfg.plot.vmax is None and cfg.plot.vmin >= hi:
        raise UserError(f"plot.vmin={cfg.plot.vmin:g} is not below the highest cosine of these heatmaps ({hi:.3g}): "
                        "give a lower plot.vmin, or a plot.vmax above it")
    if cfg.plot.vmax is not None and cfg.plot.vmin is None and cfg.plot.vmax <= lo:
        raise UserError(f"plot.vmax={cfg.plot.vmax:g} is not above the lowest cosine of these heatmaps ({lo:.3g}): "
                        "give a higher plot.vmax, or a plot.vmin below it")
    return plots.color_scale(sims, cfg.plot.vmin, cfg.plot.vmax, cfg.plot.center)


def run(cfg, out_dir, tracker, backend) -> dict:
    loaded = _csvs(cfg, Path(out_dir))
    paths = [p for p, _ in loaded]
    names, info = loaded[0][1][1], loaded[0][1][2]
    variants = [sidecar.get("variant", p.stem.rsplit("_", 1)[-1]) for p, (_, _, sidecar) in loaded]
    pooling = info.get("pooling", {})
    mode = pooling.get("name", cfg.pooling.name)
    labels = pooling.get("labels") or [c.label for c in common.chunks(cfg.pooling)]
    width = loaded[0][1][0].shape[1] // len(labels)
    if loaded[0][1][0].shape[1] % len(labels):
        raise UserError(f"{paths[0]} has {loaded[0][1][0].shape[1]} rows, not a multiple of the {len(labels)} chunks "
                        f"of pooling={mode}")
    # (file, chunk's metric name, title, its dims): all chunks, then each chunk of a mode with several
    parts = [(f"similarity_{mode}_all.png", "all", "all chunks" if len(labels) > 1 else labels[0], slice(None))]
    if len(labels) > 1:
        parts += [(f"similarity_{mode}_chunk{k}.png", chunk_key(label), f"chunk {k} ({label})",
                   slice(k * width, (k + 1) * width)) for k, label in enumerate(labels)]
    figures = {name: (chunk, what, {v: cosine_matrix(x[:, dims]) for v, (_, (x, _, _)) in zip(variants, loaded)})
               for name, chunk, what, dims in parts}  # each matrix [N, N]
    scale = _scale(cfg, [sim for _, _, sims in figures.values() for sim in sims.values()])
    written = [plots.heatmap(list(sims.values()), names, [VARIANT_TITLES.get(v, v) for v in sims], Path(out_dir) / name,
                             scale, f"Cosine similarity, {mode} mode, {what}")
               for name, (_, what, sims) in figures.items()]
    tracker.images(written)
    metrics = {f"cosine_offdiag_mean/{v}/{chunk}": float(plots.off_diagonal(sim).mean())
               for chunk, _, sims in figures.values() for v, sim in sims.items()}
    metrics |= {"color_vmin": scale.vmin, "color_vmax": scale.vmax, "color_center": scale.center}
    log.info(f"{plural(len(written), 'heatmap')} of {' and '.join(p.name for p in paths)}, colours from "
             f"{scale.vmin:.3g} to {scale.vmax:.3g} ({scale.rule})")
    wrote(log, written)
    return metrics
