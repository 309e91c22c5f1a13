"""Long work is visible off a terminal, and a Ctrl-C is never lost."""

import logging
import os
import re
import signal
import time

import pytest

from actexp import errors, jobs, progress
from actexp.backends.local import LocalBackend
from actexp.models.activations import Batching, stream
from actexp.store import io
from helpers import REPO, compose_cfg, run_cli

LINE = r"mean: (\d+)/8 shards \(\d+ %\), \d\d:\d\d elapsed, [^,]+, [^,]+ left(, docs=\d+, tokens=\d+)?"


def test_off_a_terminal_progress_is_a_line_at_a_steady_interval_and_one_at_the_end(monkeypatch, caplog):
    monkeypatch.setenv(progress.PROGRESS_ENV, "0.2")
    caplog.set_level(logging.INFO, logger=progress.PROGRESS_LOG)
    with progress.progress(total=10, unit="batch", desc="vectors") as bar:  # pytest's stderr is no terminal
        bar.update(1)
        time.sleep(1.5)  # one long step: lines come from the clock, not from updates
        bar.update(9)
    lines = [r.getMessage() for r in caplog.records if r.name == progress.PROGRESS_LOG]
    assert all(re.fullmatch(r"vectors: \d+/10 batchs \(\d+ %\), 00:0\d elapsed, [^,]+, 00:\d\d left", x) for x in lines), lines
    during = [x for x in lines if x.startswith("vectors: 1/10 batchs (10 %)")]
    assert 3 <= len(during) <= 7, lines  # about one every 0.2 s after the first 0.2 s
    assert lines[-1].startswith("vectors: 10/10 batchs (100 %)") and lines[-2].startswith("vectors: 1/10")  # the end, once


def test_quick_work_off_a_terminal_stays_quiet(monkeypatch, caplog):
    monkeypatch.setenv(progress.PROGRESS_ENV, "5")
    caplog.set_level(logging.INFO, logger=progress.PROGRESS_LOG)
    for _ in progress.progress(range(100), desc="scan", delay=0):
        pass
    assert not [r for r in caplog.records if r.name == progress.PROGRESS_LOG]


@pytest.mark.slow
def test_the_cli_off_a_terminal_writes_progress_to_stderr_and_run_log_not_stdout(tmp_path):
    run_dir = tmp_path / "run"
    r = run_cli("job=mean", "corpus.max_docs=32", "corpus.shard_size=4", "logger=none", f"paths.artifacts={tmp_path / 'a'}",
                f"hydra.run.dir={run_dir}", cwd=REPO, env={progress.PROGRESS_ENV: "0.05"})
    assert r.returncode == 0, r.stderr
    shown = [x for x in r.stderr.splitlines() if x.startswith("mean: ")]
    assert shown and all(re.fullmatch(LINE, x) for x in shown), r.stderr
    assert shown[-1].startswith("mean: 8/8 shards (100 %)") and shown[-1].endswith("docs=32, tokens=" + shown[-1].split("=")[-1])
    logged = re.findall(r"\[actexp\.progress\]\[INFO\] - (mean: .*)", (run_dir / "run.log").read_text())
    assert logged == shown and shown.count(shown[-1]) == 1  # the end, once
    assert "mean: " not in r.stdout and "elapsed" not in r.stdout  # stdout is for results


@pytest.mark.slow
def test_a_bad_interval_is_one_warning_on_the_clis_stderr(tmp_path):
    r = run_cli("job=extract", "text=hi", "logger=none", f"hydra.run.dir={tmp_path / 'run'}", cwd=REPO,
                env={progress.PROGRESS_ENV: "abc"})
    assert r.returncode == 0, r.stderr
    assert r.stderr.count(f"{progress.PROGRESS_ENV}=abc is not a number") == 1, r.stderr


@pytest.fixture
def ctrl_c_handler():
    old = signal.signal(signal.SIGINT, errors.on_sigint)
    yield
    signal.signal(signal.SIGINT, old)
    errors._SIGINT.clear()  # this process goes on: forget the Ctrl-C the test sent


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_that_a_finaliser_swallows_still_stops_the_next_batch(ctrl_c_handler):
    """Python drops an exception raised in __del__ ("Exception ignored in ..."), as filelock's
    FileLock.__del__ did to a Ctrl-C in CI: the job ran to the end and exited 0."""
    class Finalised:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # the handler raises here, inside the finaliser
            time.sleep(0.1)

    Finalised()  # collected at once: the KeyboardInterrupt is printed and dropped
    lm = LocalBackend.from_config(compose_cfg()).lm
    with pytest.raises(KeyboardInterrupt):
        for _ in stream(lm, [[1, 2, 3]] * 4, Batching(batch_tokens=3)):
            pass


@pytest.mark.slow  # about 5 s each: a job each
@pytest.mark.parametrize("job, shards", [("mean", "stats/*/shards/*.safetensors"), ("store", "vectors/*/shards/*.arrow")])
def test_a_ctrl_c_just_after_a_shard_is_renamed_into_place_counts_it_as_saved(tmp_path, monkeypatch, ctrl_c_handler,
                                                                              job, shards):
    """The rename saves a shard; the folder's fsync after it is where a Ctrl-C in CI landed: the job said
    "3 of 24 shards saved" with 4 on disk, as it counted what the backend had reported."""
    renamed = []

    def fsync_then_ctrl_c(folder):
        fsync_folder(folder)
        if folder.name == "shards":
            renamed.append(folder)
            if len(renamed) == 2:
                os.kill(os.getpid(), signal.SIGINT)  # the handler raises here, before the shard is reported

    fsync_folder = io.fsync_folder
    monkeypatch.setattr(io, "fsync_folder", fsync_then_ctrl_c)
    cfg = compose_cfg(f"job={job}", "corpus.max_docs=24", "corpus.shard_size=4", "store.shard_size=4",
                      f"paths.artifacts={tmp_path / 'art'}")
    with pytest.raises(errors.Interrupted) as caught:
        jobs.run(job, cfg, tmp_path)
    on_disk = len(list((tmp_path / "art").glob(shards)))
    assert on_disk == 2 and str(caught.value).startswith(f"{on_disk} of 6 shards")


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan"])
def test_an_interval_that_is_no_positive_number_falls_back_to_the_default_with_a_warning(monkeypatch, caplog, value):
    monkeypatch.setenv(progress.PROGRESS_ENV, value)
    with caplog.at_level(logging.WARNING):
        for _ in progress.progress(range(3), desc="scan"):
            pass
    assert progress.progress_interval() == progress.PROGRESS_S
    assert f"{progress.PROGRESS_ENV}={value} is not a number of seconds above 0" in caplog.text
