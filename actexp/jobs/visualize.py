"""job=visualize: per-sample norms, value histograms, per-dimension mean/std and the top outlier
dimensions of one vector CSV, or of two side by side (raw vs centred)."""

import logging
from pathlib import Path

from .. import plots
from ..errors import UserError
from ..io import read_vectors_csv, vectors_csv_path
from ..report import plural, wrote
from . import common

log = logging.getLogger(__name__)


def run(cfg, out_dir, tracker, backend) -> dict:
    paths = [Path(p) for p in cfg.visualize.csvs] or [
        p for p in (vectors_csv_path(out_dir, cfg.pooling.name, v) for v in ("raw", "centered")) if p.is_file()]
    if not paths or len(paths) > 2:
        raise UserError("job=visualize needs visualize.csvs=[one.csv] or [raw.csv,centered.csv]: vectors CSVs of a "
                        "csv or pipeline run")
    loaded = [read_vectors_csv(p) for p in paths]
    names = loaded[0][1]
    if any(x[1] != names for x in loaded):
        raise UserError(f"{paths[0]} and {paths[1]} hold different samples")
    sets = [x[0] for x in loaded]
    labels = [x[2].get("variant", p.stem) for x, p in zip(loaded, paths)]
    chunk_labels = loaded[0][2].get("pooling", {}).get("labels") or [c.label for c in common.chunks(cfg.pooling)]
    out = Path(out_dir)
    written = [
        plots.norms(sets, labels, names, out / "vectors_norms.png"),
        plots.value_histograms(sets, labels, out / "vectors_values.png"),
        plots.dim_stats(sets, labels, sets[0].shape[1] // len(chunk_labels), out / "vectors_dim_stats.png"),
        plots.outlier_dims(sets, labels, cfg.visualize.top_dims, chunk_labels, out / "vectors_outlier_dims.png"),
    ]
    tracker.images(written)
    metrics = {}
    for x, label in zip(sets, labels):
        metrics[f"norm_mean/{label}"] = float(((x.astype("float64") ** 2).sum(1) ** 0.5).mean())
        metrics[f"top_dim/{label}"] = int(plots.top_dims(x, 1)[0])
    log.info(f"{plural(len(written), 'figure')} of {', '.join(p.name for p in paths)}")
    wrote(log, written)
    return metrics
