"""The one entry point: `python -m actexp.run [group=option ...] [key=value ...]` (or `actexp`).

It only wires: compose the config (Hydra), run the job named by `job`, and turn any error into
one line on stderr with a non-zero exit (the full traceback with HYDRA_FULL_ERROR=1).
"""

import signal
import sys


def _interrupted_while_starting(signum, frame):
    print("interrupted; run the same command again", file=sys.stderr)
    sys.exit(130)


# Ctrl-C while the imports below load (a second or two): one line, not a traceback. main()
# installs errors.on_sigint, so that a job sees KeyboardInterrupt.
signal.signal(signal.SIGINT, _interrupted_while_starting)

import contextlib  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from . import jobs  # noqa: E402
from .config.schema import CONF, register  # noqa: E402
from .config.suggest import message  # noqa: E402
from .errors import Interrupted, on_sigint, one_line, user_fault  # noqa: E402
from .report.sweep import print_summary  # noqa: E402
from .report.tracking import NULL, Tracker  # noqa: E402
from .store.io import remove_dead_writers_files_below, write_json  # noqa: E402

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
    multirun = hc.mode == RunMode.MULTIRUN
    tracker = NULL
    remove_dead_writers_files_below(out_dir.parent)  # temp files of killed runs beside this one: no one else removes them
    try:
        jobs.check(cfg.job.name, cfg)  # an unknown job or a number out of range fails before a W&B run starts
        name, group = _run_names(cfg, hc)
        tracker = Tracker.start(cfg.logger, OmegaConf.to_container(cfg, resolve=True), out_dir, name, group,
                                cfg.job.name)
        metrics = jobs.run(cfg.job.name, cfg, out_dir, tracker)  # one backend for the whole run
        tracker.metrics(metrics)
        tracker.finish(0)
        _record(out_dir, cfg, hc, "ok", metrics=metrics)
        return metrics
    except KeyboardInterrupt as e:  # Ctrl-C, anywhere in the job: what was kept is kept
        tracker.finish(130, interrupted=True)
        # W&B's offline run is the record of an interrupted run (what it logged, tagged interrupted):
        # its folder stays, with metrics.json saying so. Without one, an unused folder goes.
        if (out_dir / "wandb").is_dir() or not _remove_if_unused(out_dir):
            _record(out_dir, cfg, hc, "interrupted", error=interrupted_line(e))
        if multirun:
            raise  # stops the sweep; main() prints the line
        interrupted(e)
    except Exception as e:
        tracker.finish(1)  # a failed job still closes its run, so a sweep gets one run per job
        # Bad input leaves no run folder behind (unless the job had written something); any other
        # failure keeps its folder as the record: metrics.json and run.log say what went wrong.
        if multirun or not (user_fault(e) and _remove_if_unused(out_dir)):
            _record(out_dir, cfg, hc, "failed", error=one_line(e), exc=None if user_fault(e) else e, line=error_line(e))
        if multirun:
            raise  # Hydra records the failed job and runs the others
        if FULL_ERROR:
            raise
        fail(e)


def _record(out_dir: Path, cfg, hc, status: str, metrics=None, error=None, exc=None, line=None) -> None:
    """metrics.json: how the job ended and what it returned (the sweep summary reads it); a run that
    did not end well also gets the line stderr gets (and an unforeseen error's traceback) in run.log."""
    if status != "ok":
        _to_run_log(line or error, exc)
    with contextlib.suppress(OSError):  # a folder that cannot be written keeps the error the user sees
        write_json(out_dir / "metrics.json", {"job": cfg.job.name, "status": status,
                                              "overrides": list(hc.overrides.task), "metrics": metrics or {},
                                              "error": error})


def _to_run_log(line: str, exc: Optional[BaseException]) -> None:
    """Into run.log only: stderr gets its one line from fail() or interrupted()."""
    record = logging.getLogger("actexp.run").makeRecord(
        "actexp.run", logging.ERROR, __file__, 0, line, None, None if exc is None else (type(exc), exc, exc.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _remove_if_unused(out_dir: Path) -> bool:
    """Remove a run folder that holds nothing but Hydra's and W&B's own records; whether it is gone."""
    if out_dir.is_dir() and {p.name for p in out_dir.iterdir()} <= HYDRA_FILES:
        shutil.rmtree(out_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            out_dir.parent.rmdir()
    return not out_dir.exists()


def error_line(e: BaseException) -> str:
    """The one line stderr gets for an error: `error: ...` for input the user can fix."""
    if user_fault(e):
        return f"error: {message(e)}"
    return f"error ({type(e).__name__}): {one_line(e)} [HYDRA_FULL_ERROR=1 shows the traceback]"


def fail(e: BaseException) -> None:
    """Print e as one line and exit: 2 for input the user can fix, 1 for anything else."""
    print(error_line(e), file=sys.stderr)
    sys.exit(2 if user_fault(e) else 1)


def interrupted_line(e: BaseException) -> str:
    """One line for Ctrl-C, saying what was kept."""
    if isinstance(e, Interrupted):
        return f"interrupted: {e}; run the same command to resume"
    return "interrupted; run the same command again"


def interrupted(e: BaseException) -> None:
    """The line for Ctrl-C and the conventional exit status 130."""
    print(interrupted_line(e), file=sys.stderr)
    sys.exit(130)


def main() -> None:
    os.environ["HYDRA_FULL_ERROR"] = "1"  # compose errors reach us instead of Hydra's multi-line report
    signal.signal(signal.SIGINT, on_sigint)
    try:
        _main()
    except KeyboardInterrupt as e:
        if FULL_ERROR:
            raise
        interrupted(e)
    except Exception as e:
        print_summary()  # a sweep whose job failed ends here, before Hydra's on_multirun_end
        if FULL_ERROR:
            raise
        fail(e)


if __name__ == "__main__":
    main()
