"""The one entry point: `python -m actexp.run [group=option ...] [key=value ...]` (or `actexp`).

It only wires: compose the config (Hydra), run the job named by `job`, and turn any error into
one line on stderr with a non-zero exit (the full traceback with HYDRA_FULL_ERROR=1).
"""

import contextlib
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import jobs
from .errors import UserError
from .schema import CONF, register
from .tracking import NULL, Tracker

FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR") == "1"  # asked for by the user
HYDRA_FILES = {".hydra", "run.log", "wandb"}  # what a run dir holds before the job writes anything

register()


def _run_names(cfg, hc) -> tuple:
    """W&B run name and group: a sweep's jobs share a group, named after the sweep."""
    if hc.mode == RunMode.MULTIRUN:
        sweep = Path(hc.sweep.dir).name
        overrides = hc.job.override_dirname or "defaults"
        return f"{cfg.name}-{hc.job.num}-{overrides}", f"{cfg.name}-{sweep}"
    return f"{cfg.name}-{Path(hc.runtime.output_dir).name}", cfg.name


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
def _main(cfg: DictConfig) -> dict:
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    tracker = NULL
    try:
        jobs.get(cfg.job.name)  # an unknown job fails before a W&B run starts
        name, group = _run_names(cfg, hc)
        tracker = Tracker.start(cfg.logger, OmegaConf.to_container(cfg, resolve=True), out_dir, name, group,
                                cfg.job.name)
        metrics = jobs.run(cfg.job.name, cfg, out_dir, tracker)  # one backend for the whole run
        tracker.metrics(metrics)
        tracker.finish(0)
        return metrics
    except Exception as e:
        tracker.finish(1)  # a failed job still closes its run, so a sweep gets one run per job
        if hc.mode == RunMode.MULTIRUN:
            raise  # Hydra records the failed job and runs the others
        if isinstance(e, UserError) and {p.name for p in out_dir.iterdir()} <= HYDRA_FILES:
            shutil.rmtree(out_dir, ignore_errors=True)  # bad input leaves no run folder behind
            with contextlib.suppress(OSError):
                out_dir.parent.rmdir()
        if FULL_ERROR:
            raise
        fail(e)


def one_line(e: BaseException) -> str:
    """An exception as one line: Hydra and OmegaConf messages span several."""
    parts = []
    for err in (e, e.__cause__):
        for line in str(err or "").splitlines():
            line = line.strip()
            if line.startswith("Config search path"):
                break
            if line and not line.startswith(("full_key:", "object_type", "reference_type")) and line not in parts:
                parts.append(line)
    return " ".join(parts) or type(e).__name__


def fail(e: BaseException) -> None:
    """Print e as one line and exit: 2 for input the user can fix, 1 for anything else."""
    user_fault = isinstance(e, UserError) or type(e).__module__.startswith(("hydra.", "omegaconf."))
    if user_fault:
        print(f"error: {one_line(e)}", file=sys.stderr)
    else:
        print(f"error ({type(e).__name__}): {one_line(e)} [HYDRA_FULL_ERROR=1 shows the traceback]", file=sys.stderr)
    sys.exit(2 if user_fault else 1)


def main() -> None:
    os.environ["HYDRA_FULL_ERROR"] = "1"  # compose errors reach us instead of Hydra's multi-line report
    try:
        _main()
    except Exception as e:
        if FULL_ERROR:
            raise
        fail(e)


if __name__ == "__main__":
    main()
