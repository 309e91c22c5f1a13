"""job=pipeline: one whole experiment in one run folder and one W&B run:
mean (reused when it exists) -> csv raw + centred -> compare -> plot -> visualize -> analyze,
ending with a short summary: where the outputs are, the identity check, raw vs centred numbers."""

import copy
import logging

from omegaconf import OmegaConf

from ..errors import CheckFailed
from ..io import vectors_csv_path
from . import run as run_job

log = logging.getLogger(__name__)


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

    metrics = {}
    if cfg.centering.mean_path == "auto":  # else the stages use the mean the user named
        metrics = stage("mean", mean__stage="all")
        cfg = _with(cfg, centering__mean_path=metrics["mean/mean"])  # the later stages centre with this very file
    metrics |= stage("csv", csv__variants=["raw", "centered"])
    raw, centered = (str(vectors_csv_path(out_dir, cfg.pooling.name, v)) for v in ("raw", "centered"))
    failed = None
    try:
        metrics |= stage("compare", compare__raw_csv=raw, compare__centered_csv=centered)
    except CheckFailed as e:  # still draw the plots, then report the failure
        failed = e
    metrics |= stage("plot", plot__csv=None)
    metrics |= stage("visualize", visualize__csvs=[raw, centered])
    metrics |= stage("analyze", analyze__source="csv", analyze__csvs=[raw, centered])
    log.info(summary(cfg, out_dir, metrics, failed))
    if failed:
        raise failed
    return metrics


def summary(cfg, out_dir, metrics: dict, failed) -> str:
    """The answer of the experiment in five lines (all chunks together)."""
    def pair(metric):
        raw, centred = (metrics.get(f"analyze/{metric}/{v}/all") for v in ("raw", "centered"))
        return f"raw {raw:.3f} -> centred {centred:.3f}"

    # Retrieval needs labelled texts (the samples); other texts (csv.source=corpus) get geometry only.
    retrieval = [f"  retrieval of each sample's long/short partner: recall@1 {pair('eval/recall@1')}; "
                 f"MRR {pair('eval/mrr')}"] if metrics.get("analyze/eval/mrr/raw/all") is not None else []

    check = (f"FAIL ({failed})" if failed else f"PASS (worst relative error {metrics['compare/worst_rel_error']:.2g} "
             f"over {metrics['compare/samples']} samples)")
    return "\n".join([
        f"summary of {cfg.name} (model {cfg.model.name}, pooling={cfg.pooling.name}):",
        f"  outputs: {out_dir}",
        f"  identity raw - centred = pooled corpus mean: {check}",
        *retrieval,
        f"  anisotropy (mean cosine {'across topics' if retrieval else 'of all pairs'}): {pair('geometry/anisotropy')}",
    ])
