"""job=pipeline: one whole experiment in one run folder and one W&B run:
mean (reused when it exists) -> csv raw + centred -> compare -> plot -> visualize."""

import copy

from omegaconf import OmegaConf

from ..errors import CheckFailed
from . import compare, csv, mean, plot, visualize


def _with(cfg, **updates):
    """A copy of cfg with some keys set (dotted names written with __)."""
    cfg = copy.deepcopy(cfg)
    for key, value in updates.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, merge=False)
    return cfg


def run(cfg, out_dir, tracker, backend) -> dict:
    """Every stage shares the run's backend: one model load, one Modal app context."""
    metrics = {}
    for name, value in mean.run(_with(cfg, mean__stage="all"), out_dir, tracker, backend).items():
        metrics[f"mean/{name}"] = value
    both = _with(cfg, csv__variants=["raw", "centered"])
    metrics |= {f"csv/{k}": v for k, v in csv.run(both, out_dir, tracker, backend).items()}
    raw, centered = (str(csv.csv_path(out_dir, cfg.pooling.name, v)) for v in ("raw", "centered"))
    failed = None
    try:
        metrics |= {f"compare/{k}": v for k, v in compare.run(
            _with(cfg, compare__raw_csv=raw, compare__centered_csv=centered), out_dir, tracker, backend).items()}
    except CheckFailed as e:  # still draw the plots, then report the failure
        failed = e
    metrics |= {f"plot/{k}": v for k, v in plot.run(_with(cfg, plot__csv=None), out_dir, tracker, backend).items()}
    metrics |= {f"visualize/{k}": v for k, v in visualize.run(
        _with(cfg, visualize__csvs=[raw, centered]), out_dir, tracker, backend).items()}
    if failed:
        raise failed
    return metrics
