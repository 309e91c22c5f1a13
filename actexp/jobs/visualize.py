"""job=visualize: per-sample norms, value histograms, per-dimension mean/std and the top outlier
dimensions of one vector CSV, or of two side by side (raw vs centred)."""

from pathlib import Path

from .. import plots
from ..errors import UserError
from ..io import read_vectors_csv, vectors_csv_path


def run(cfg, out_dir, tracker, backend) -> dict:
    paths = [Path(p) for p in cfg.visualize.csvs] or [
        p for p in (vectors_csv_path(out_dir, cfg.pooling.name, v) for v in ("raw", "centered")) if p.is_file()]
    if not paths or len(paths) > 2:
        raise UserError("give visualize.csvs=[one.csv] or [raw.csv,centered.csv] (or run job=csv first)")
    loaded = [read_vectors_csv(p) for p in paths]
    names = loaded[0][1]
    if any(x[1] != names for x in loaded):
        raise UserError(f"{paths[0]} and {paths[1]} hold different samples")
    sets = [x[0] for x in loaded]
    labels = [x[2].get("variant", p.stem) for x, p in zip(loaded, paths)]
    n_chunks = len(loaded[0][2].get("pooling", {}).get("labels", [None]))
    out = Path(out_dir)
    written = [
        plots.norms(sets, labels, names, out / "vectors_norms.png"),
        plots.value_histograms(sets, labels, out / "vectors_values.png"),
        plots.dim_stats(sets, labels, sets[0].shape[1] // n_chunks, out / "vectors_dim_stats.png"),
        plots.outlier_dims(sets, labels, cfg.visualize.top_dims, out / "vectors_outlier_dims.png"),
    ]
    tracker.images(written)
    metrics = {}
    for x, label in zip(sets, labels):
        metrics[f"norm_mean/{label}"] = float(((x.astype("float64") ** 2).sum(1) ** 0.5).mean())
        metrics[f"top_dim/{label}"] = int(plots.top_dims(x, 1)[0])
    print(f"{len(written)} figures of {', '.join(p.name for p in paths)} -> {out_dir}")
    return metrics
