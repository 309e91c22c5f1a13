"""Progress of long work, for every layer that does it (the store, the corpus, the backends, jobs): a
tqdm bar on a terminal, a log line at a steady interval off one. Hydra's job logging
(conf/hydra/job_logging/actexp.yaml) keeps these lines out of stdout, where results go."""

import functools
import logging
import os
import sys
import threading

PROGRESS_LOG = "actexp.progress"  # its lines go to stderr and run.log, never to stdout (conf/hydra/job_logging)


PROGRESS_ENV = "ACTEXP_PROGRESS_S"  # seconds between two progress lines off a terminal


PROGRESS_S = 30.0


class ResultsOnly(logging.Filter):
    """Lets records below WARNING through, progress lines excepted: results go to stdout, the rest to stderr."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING and not record.name.startswith(PROGRESS_LOG)


def progress(iterable=None, **kwargs):
    """Progress of work that may take more than a couple of seconds. On a terminal a tqdm bar on stderr
    once the work has run for 2 s; off one (a log file, a batch system) a line through the logger
    actexp.progress every ACTEXP_PROGRESS_S seconds (30 by default) and, after such a line, one at the
    end: `mean: 3/24 shards (12 %), 00:41 elapsed, 13.67s/shard, 04:47 left`. Quick steps stay quiet."""
    from tqdm import tqdm

    settings = {"delay": 2, "leave": False, "dynamic_ncols": True} | kwargs
    if sys.stderr is not None and sys.stderr.isatty():
        return tqdm(iterable, **settings)
    interval = progress_interval()
    known = settings.get("total") is not None or hasattr(iterable, "__len__")
    line = ("{desc}: {n_fmt}" + ("/{total_fmt}" if known else "") + " {unit}s" + (" ({percentage:.0f} %)" if known else "")
            + ", {elapsed} elapsed, {rate_fmt}" + (", {remaining} left" if known else "") + "{postfix}")
    return _log_progress()(iterable, **settings | {"mininterval": interval, "delay": interval, "smoothing": 0, "leave": True,
                                                     "bar_format": line, "file": _Nowhere()})


def progress_interval() -> float:
    """ACTEXP_PROGRESS_S in seconds: a positive number, else the default (with one warning per value)."""
    value = os.environ.get(PROGRESS_ENV)
    try:
        seconds = float(value) if value is not None else PROGRESS_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0:  # NaN, 0, negative, not a number
        if value not in _WARNED:
            _WARNED.add(value)
            # Not the progress lines' own logger: that one has a stderr handler of its own besides the root's.
            logging.getLogger(__package__).warning("%s=%s is not a number of seconds above 0: a progress line every "
                                                "%g s", PROGRESS_ENV, value, PROGRESS_S)
        seconds = PROGRESS_S
    return seconds


_WARNED: set = set()


@functools.lru_cache(maxsize=None)
def _log_progress():
    """tqdm's counting, rate and time left, written as log lines instead of a bar (tqdm imported late):
    a thread writes one every `mininterval` seconds, however long a single step takes."""
    from tqdm import tqdm

    class LogProgress(tqdm):
        def __init__(self, *args, **kwargs):
            self._logged_n, self._logged_t, self._stop = None, 0.0, threading.Event()
            super().__init__(*args, **kwargs)
            threading.Thread(target=self._tick, daemon=True, name="actexp-progress").start()

        def _tick(self):
            while not self._stop.wait(self.mininterval):
                if self._time() >= self.start_t + self.delay:
                    self.refresh()

        def display(self, msg=None, pos=None):
            now = self._time()
            ending = self.disable  # close() sets it before its last display
            due = now - self._logged_t >= 0.99 * self.mininterval and now >= self.start_t + self.delay
            if msg is None and (ending and self._logged_n != self.n or not ending and due):
                logging.getLogger(PROGRESS_LOG).info(" ".join(str(self).split()))
                self._logged_n, self._logged_t = self.n, now
                self.last_print_t = now  # so that close() knows a line was shown and adds the last one
            return True

        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            super().set_postfix(ordered_dict, refresh=False, **kwargs)  # shown with the next line, not as one

        def close(self):
            self._stop.set()
            super().close()

    return LogProgress


class _Nowhere:
    """Where tqdm writes the bar (and the newlines around it) when the lines go to the log instead."""

    def write(self, s: str) -> None:
        pass

    def flush(self) -> None:
        pass
