"""What a job tells the user at its end: the files it wrote, one absolute path per line. Jobs log;
Hydra's job logging (conf/hydra/job_logging/actexp.yaml) puts these result lines on stdout,
warnings and errors on stderr, and both, with times, in run.log."""

import logging
from pathlib import Path
from typing import Iterable, Optional, Sequence


def wrote(log: logging.Logger, paths: Iterable[Path]) -> None:
    """The last lines of a job: every file it wrote, one absolute path per line."""
    for path in paths:
        log.info("wrote %s", Path(path).resolve())


def with_interval(value: Optional[float], interval: Optional[Sequence[float]], scale: float = 1.0,
                  digits: int = 3) -> str:
    """"0.203 [0.118, 0.316]": a value with its interval (none where there is none), times scale; "-" for no value."""
    if value is None:
        return "-"
    text = f"{scale * value:.{digits}f}"
    return text + (f" [{scale * interval[0]:.{digits}f}, {scale * interval[1]:.{digits}f}]" if interval else "")


def metric_with_interval(metrics: dict, name: str, scale: float = 1.0, digits: int = 3) -> str:
    """with_interval of the flat metric `name` and its `name/low`, `name/high` (metrics.json, W&B)."""
    value, low, high = (metrics.get(f"{name}{end}") for end in ("", "/low", "/high"))
    return with_interval(value, None if low is None else (low, high), scale, digits)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
