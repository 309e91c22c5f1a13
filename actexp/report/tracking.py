"""Weights & Biases tracking: one run per job, offline by default, a no-op for logger=none.

Jobs call `tracker.images(...)`, `tracker.table(...)` and `tracker.artifact(...)`; run.py starts
the run, logs the metrics a job returns, and finishes the run even when the job fails.
"""

import copy
import hashlib
import netrc
import os
from numbers import Number
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..errors import UserError


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


TEXT_KEYS = ("text", "text_a", "text_b")  # config keys that hold a user's raw text
QUERY_KEYS = ("queries",)  # ... and lists of them, in the job groups


def _redact(text: str) -> dict:
    return {"sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "chars": len(text)}


def run_config(config: dict, log_texts: bool = False) -> dict:
    """The config as W&B gets it: input texts replaced by their sha256 and length unless asked for."""
    if log_texts:
        return config
    config = copy.deepcopy(config)
    for key in TEXT_KEYS:
        if isinstance(config.get(key), str):
            config[key] = _redact(config[key])
    for group in config.values():
        if isinstance(group, dict):
            for key in QUERY_KEYS:
                if isinstance(group.get(key), list):
                    group[key] = [_redact(t) if isinstance(t, str) else t for t in group[key]]
    return config


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
                         dir=str(out_dir), name=name, group=group, job_type=job_type,
                         config=run_config(config, logger_cfg.log_texts),
                         tags=list(logger_cfg.tags), reinit="finish_previous",
                         settings=wandb.Settings(silent=True, console="off"))
        return cls(run, logger_cfg.log_artifacts)

    def centering(self, used: dict) -> None:
        """The centring a job did (jobs.common.centering_metadata) in the run's config, in place of
        what was configured (`mean_path: auto` names no file): the mean's path, sha256, corpus,
        documents, min_count and tail_start."""
        if self.run is None or not used.get("mean"):
            return
        configured = dict(self.run.config.get("centering") or {})
        self.run.config.update({"centering": configured | {"mean_path": used["mean"]["path"], "mean": used["mean"]}},
                               allow_val_change=True)

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

    def table(self, name: str, columns: Sequence[str], rows: Iterable[Sequence]) -> None:
        """A table whose cells keep their types (numbers stay numbers, so W&B can plot them)."""
        if self.run is None:
            return
        import wandb

        self.run.log({name: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

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
