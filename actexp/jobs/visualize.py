"""job=visualize: per-sample norms, value histograms, per-dimension mean/std and the top outlier
dimensions of one vector CSV, or of two side by side (raw vs centred)."""

import logging
from pathlib import Path

from ..report import plots
from ..report.console import plural, wrote
from ..store.layout import model_label
from . import common

log = logging.getLogger(__name__)


def run(cfg, out_dir, tracker, backend) -> dict:
    paths, loaded = zip(*common.vector_csvs(cfg.visualize.csvs, out_dir, cfg.pooling.name, "visualize.csvs",
                                            same_model=False))  # two models side by side is a fair question
    names = loaded[0][1]
    sets = [x[0] for x in loaded]
    labels = [x[2].get("variant", p.stem) for x, p in zip(loaded, paths)]
    titles = [f"{label}, {model_label(x[2]['model']) if x[2].get('model') else 'model unknown'}"
              for label, x in zip(labels, loaded)]
    chunk_labels = loaded[0][2].get("pooling", {}).get("labels") or [c.label for c in common.chunks(cfg.pooling)]
    out = Path(out_dir)
    written = [
        plots.norms(sets, titles, names, out / "vectors_norms.png"),
        plots.value_histograms(sets, titles, out / "vectors_values.png"),
        plots.dim_stats(sets, titles, sets[0].shape[1] // len(chunk_labels), out / "vectors_dim_stats.png"),
        plots.outlier_dims(sets, titles, cfg.visualize.top_dims, chunk_labels, out / "vectors_outlier_dims.png"),
    ]
    tracker.images(written)
    metrics = {}
    for x, label in zip(sets, labels):
        metrics[f"norm_mean/{label}"] = float(((x.astype("float64") ** 2).sum(1) ** 0.5).mean())
        metrics[f"top_dim/{label}"] = int(plots.top_dims(x, 1)[0])
    log.info(f"{plural(len(written), 'figure')} of {', '.join(p.name for p in paths)}")
    wrote(log, written)
    return metrics
