"""job=pipeline: one whole experiment in one run folder and one W&B run. With a centring
(centering=corpus_mean): mean (reused when it exists) -> csv raw + centred -> compare -> plot ->
visualize -> analyze, raw beside centred (the heatmaps side by side on one colour scale). With
centering=none the raw variant alone: csv -> plot -> visualize -> analyze, so a sweep over
`centering` computes what its name says. It ends with a short summary: where the outputs are, the
identity check, the numbers of each variant."""

import copy
import logging

from omegaconf import OmegaConf

from ..errors import CheckFailed
from ..report.console import metric_with_interval
from ..store.io import vectors_csv_path
from . import run as run_job

log = logging.getLogger(__name__)


def with_keys(cfg, **updates):
    """A copy of cfg with some keys set (dotted names written with __)."""
    cfg = copy.deepcopy(cfg)
    for key, value in updates.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, merge=False)
    return cfg


def with_mean(cfg, out_dir, tracker, backend):
    """(cfg, metrics of the mean job): with centering.mean_path auto, the mean job makes (or reuses) the
    corpus mean of the corpus group, and the returned cfg names that very file, so that later stages
    centre with it; else cfg as it is (the user named a mean) and no metrics."""
    if cfg.centering.mean_path != "auto":
        return cfg, {}
    centring = {} if cfg.centering.name != "none" else {"centering__name": "corpus_mean"}  # job=sts with centering=none
    made = run_job("mean", with_keys(cfg, mean__stage="all", **centring), out_dir, tracker, backend)
    return with_keys(cfg, centering__mean_path=made["mean"]), made


def run(cfg, out_dir, tracker, backend) -> dict:
    """Every stage shares the run's backend: one model load, one Modal app context."""

    def stage(name, prefix=None, **updates):
        prefix = f"{name}/" if prefix is None else prefix
        return {f"{prefix}{k}": v for k, v in run_job(name, with_keys(cfg, **updates), out_dir, tracker, backend).items()}

    centred = cfg.centering.name != "none"
    variants = ["raw", "centered"] if centred else ["raw"]
    metrics = {}
    if centred:
        cfg, made = with_mean(cfg, out_dir, tracker, backend)
        metrics = {f"mean/{k}": v for k, v in made.items()}
    metrics |= stage("csv", csv__variants=variants)
    csvs = [str(vectors_csv_path(out_dir, cfg.pooling.name, v)) for v in variants]
    failed = None
    if centred:
        try:
            metrics |= stage("compare", compare__raw_csv=csvs[0], compare__centered_csv=csvs[1])
        except CheckFailed as e:  # still draw the plots, then report the failure
            failed = e
    metrics |= stage("plot", plot__csv=None)
    metrics |= stage("visualize", visualize__csvs=csvs)
    # The analysis's names say what they measure (eval/..., geometry/...): the same as job=analyze's,
    # so that a pipeline and an analyze run share W&B panels and sweep columns.
    metrics |= stage("analyze", prefix="", analyze__source="csv", analyze__csvs=csvs)
    log.info(summary(cfg, out_dir, metrics, failed, variants))
    if failed:
        raise failed
    return metrics


def summary(cfg, out_dir, metrics: dict, failed, variants) -> str:
    """The answer of the experiment in a few lines (all chunks together), retrieval with its bootstrap
    intervals, its chance level and the paired interval of centred minus raw."""
    def named(v):
        return "centred" if v == "centered" else v

    def pair(metric):
        line = " -> ".join(f"{named(v)} {metric_with_interval(metrics, f'{metric}/{v}/all')}" for v in variants)
        diff = f"{metric}/centered-raw/all"
        return line + (f"; centred - raw {metric_with_interval(metrics, diff)}" if diff in metrics else "")

    # Retrieval needs labelled texts (the samples); other texts (csv.source=corpus) get geometry only.
    retrieval = [
        f"  retrieval of each sample's long/short partner (chance: recall@1 {metrics.get('eval/recall@1/chance/all', 0):.3f}, "
        f"MRR {metrics.get('eval/mrr/chance/all', 0):.3f}; [{100 * cfg.bootstrap.level:g} % bootstrap interval]):",
        f"    recall@1 {pair('eval/recall@1')}", f"    MRR {pair('eval/mrr')}",
    ] if metrics.get("eval/mrr/raw/all") is not None else []
    if "compare/worst_rel_error" in metrics or failed:
        check = (f"FAIL ({failed})" if failed else f"PASS (worst relative error {metrics['compare/worst_rel_error']:.2g} "
                 f"over {metrics['compare/samples']} samples)")
        checks = [f"  identity raw - centred = pooled corpus mean: {check}"]
    else:
        checks = ["  raw vectors only (centering=none): no mean, no identity check"]
    anisotropy = " -> ".join(f"{named(v)} {metrics[f'geometry/anisotropy/{v}/all']:.3f}" for v in variants)
    return "\n".join([
        f"summary of {cfg.name} (model {cfg.model.name}, pooling={cfg.pooling.name}):",
        f"  outputs: {out_dir}",
        *checks,
        *retrieval,
        f"  anisotropy (mean cosine {'across topics' if retrieval else 'of all pairs'}): {anisotropy}",
    ])
