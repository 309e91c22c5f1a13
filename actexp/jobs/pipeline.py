"""job=pipeline: one whole experiment in one run folder and one W&B run:
mean (reused when it exists) -> csv raw + centred -> compare -> plot -> visualize."""

import copy

from omegaconf import OmegaConf

from ..errors import CheckFailed
from ..io import vectors_csv_path
from . import run as run_job


def _with(cfg, **updates):
    """A copy of cfg with some keys set (dotted names written with __)."""
    cfg = copy.deepcopy(cfg)
    for key, value in updates.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, merge=False)
    return cfg


def run(cfg, out_dir, tracker, backend) -> dict:
    """Every stage shares the run's backend: one model load, one Modal app context."""

    def stage(name, **updates):
        return {f"{name}/{k}": v for k, v in run_job(name, _with(cfg, **updates), out_dir, tracker, backend).items()}

    metrics = stage("mean", mean__stage="all")
    metrics |= stage("csv", csv__variants=["raw", "centered"])
    raw, centered = (str(vectors_csv_path(out_dir, cfg.pooling.name, v)) for v in ("raw", "centered"))
    failed = None
    try:
        metrics |= stage("compare", compare__raw_csv=raw, compare__centered_csv=centered)
    except CheckFailed as e:  # still draw the plots, then report the failure
        failed = e
    metrics |= stage("plot", plot__csv=None)
    metrics |= stage("visualize", visualize__csvs=[raw, centered])
    if failed:
        raise failed
    return metrics
