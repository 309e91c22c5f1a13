"""What a job tells the user. Jobs log; Hydra's job logging (conf/hydra/job_logging/actexp.yaml)
puts result lines on stdout, warnings and errors on stderr, and both, with times, in run.log."""

import logging
from pathlib import Path
from typing import Iterable


class ResultsOnly(logging.Filter):
    """Lets records below WARNING through: results go to stdout, the rest to stderr."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def wrote(log: logging.Logger, paths: Iterable[Path]) -> None:
    """The last lines of a job: every file it wrote, one absolute path per line."""
    for path in paths:
        log.info("wrote %s", Path(path).resolve())


def progress(iterable=None, **kwargs):
    """A tqdm bar on stderr for work that may take more than a couple of seconds: shown on a
    terminal only, and only once the work has run for 2 s, so quick steps stay quiet."""
    from tqdm import tqdm

    return tqdm(iterable, **({"disable": None, "delay": 2, "leave": False, "dynamic_ncols": True} | kwargs))


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
