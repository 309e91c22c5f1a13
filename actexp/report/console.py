"""What a job tells the user at its end: the files it wrote, one absolute path per line. Jobs log;
Hydra's job logging (conf/hydra/job_logging/actexp.yaml) puts these result lines on stdout,
warnings and errors on stderr, and both, with times, in run.log."""

import logging
from pathlib import Path
from typing import Iterable


def wrote(log: logging.Logger, paths: Iterable[Path]) -> None:
    """The last lines of a job: every file it wrote, one absolute path per line."""
    for path in paths:
        log.info("wrote %s", Path(path).resolve())


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
