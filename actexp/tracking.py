"""Weights & Biases tracking: one run per job, offline by default, a no-op for logger=none.

Jobs call `tracker.images(...)`, `tracker.table(...)` and `tracker.artifact(...)`; run.py starts
the run, logs the metrics a job returns, and finishes the run even when the job fails.
"""

import netrc
import os
from numbers import Number
from pathlib import Path
from typing import Iterable, Optional

from .errors import UserError


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class Tracker:
    def __init__(self, run=None, log_artifacts: bool = False):
        self.run, self.log_artifacts = run, log_artifacts

    @classmethod
    def start(cls, logger_cfg, config: dict, out_dir: Path, name: str, group: str, job_type: str) -> "Tracker":
        if logger_cfg.name == "none" or logger_cfg.mode == "disabled":
            return cls()
        if logger_cfg.mode not in ("offline", "online"):
            raise UserError(f"unknown logger.mode {logger_cfg.mode!r}: use offline, online or disabled")
        if logger_cfg.mode == "online" and not _has_wandb_key():
            raise UserError("logger.mode=online needs a W&B key: run `wandb login` or set WANDB_API_KEY "
                            "(or keep logger.mode=offline and `wandb sync` later)")
        import wandb

        run = wandb.init(project=logger_cfg.project, entity=logger_cfg.entity, mode=logger_cfg.mode,
                         dir=str(out_dir), name=name, group=group, job_type=job_type, config=config,
                         tags=list(logger_cfg.tags), reinit="finish_previous",
                         settings=wandb.Settings(silent=True, console="off"))
        return cls(run, logger_cfg.log_artifacts)

    def metrics(self, values: dict, prefix: str = "") -> None:
        """Log the numbers among values as metrics and keep all of them in the run summary."""
        if self.run is None:
            return
        flat = {f"{prefix}{k}": v for k, v in values.items() if v is not None}
        numbers = {k: v for k, v in flat.items() if isinstance(v, Number)}
        if numbers:
            self.run.log(numbers)
        self.run.summary.update(flat)

    def images(self, paths: Iterable[Path]) -> None:
        if self.run is None:
            return
        import wandb

        self.run.log({f"images/{Path(p).stem}": wandb.Image(str(p)) for p in paths})

    def table(self, name: str, csv_path: Path) -> None:
        if self.run is None:
            return
        import csv

        import wandb

        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        self.run.log({name: wandb.Table(columns=rows[0], data=rows[1:])})

    def artifact(self, path: Path, kind: str, name: Optional[str] = None) -> None:
        """Attach a file as an artifact, when logger.log_artifacts=true."""
        if self.run is None or not self.log_artifacts:
            return
        import wandb

        art = wandb.Artifact(name or Path(path).stem.replace(".", "_"), type=kind)
        art.add_file(str(path))
        self.run.log_artifact(art)

    def finish(self, exit_code: int = 0, interrupted: bool = False) -> None:
        """Close the run. W&B knows only finished (0) and failed (any other code): an interrupted run
        ends with 130 and says so in its tags and summary."""
        if self.run is not None:
            if interrupted:
                self.run.tags = tuple(self.run.tags or ()) + ("interrupted",)
                self.run.summary["status"] = "interrupted"
            self.run.finish(exit_code=exit_code)
            self.run = None


NULL = Tracker()  # what jobs get when nothing is tracked
