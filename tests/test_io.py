"""Atomic writes: durable renames, and the temp files that killed writers leave behind."""

import os
import signal
import stat
import subprocess
import time

import pytest

from actexp import jobs
from actexp.store import io
from actexp.store.hashes import file_sha256
from actexp.store.io import FOREIGN_STALE_AFTER, temp_prefix, write_text
from helpers import REPO, compose_cfg, run_cli


def _writer(folder, name, then):
    """A process that starts a write of folder/name as write_bytes does (its temp file, under its own
    pid) and then() lives on or dies: (pid, the temp file)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nothing of torch runs here, so forking a process that loaded it is safe
        fd, tmp = __import__("tempfile").mkstemp(dir=folder, prefix=temp_prefix(folder / name), suffix=".tmp")
        os.write(fd, b"half a file")
        os.write(write, tmp.encode() + b"\n")
        then()
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        return pid, folder / os.path.basename(f.readline().strip())


def _dead(pid):
    """Kill a writer mid-write and reap it (until then its pid is still taken)."""
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def test_a_killed_lockless_writers_temp_file_is_removed_by_a_later_write_and_a_live_ones_never(tmp_path):
    cache = tmp_path / "hashes"  # the hash cache: its writers take no lock
    cache.mkdir()
    killed, killed_tmp = _writer(cache, "entry-a", lambda: time.sleep(600))
    _dead(killed)
    live, live_tmp = _writer(cache, "entry-b", lambda: time.sleep(600))
    try:
        # Files of another host (or container), whose processes cannot be asked: removed once a day old.
        old, recent = cache / ".entry-c.12345@elsewhere@4026531836.abcdefgh.tmp", cache / ".entry-d.1@elsewhere@1.x_y.tmp"
        for path in (old, recent):
            path.write_bytes(b"half a file")
        os.utime(old, (time.time() - FOREIGN_STALE_AFTER - 60,) * 2)
        legacy = cache / ".entry-e.k1lled_x.tmp"  # no writer in its name: only a holder of its lock may remove it
        legacy.write_bytes(b"half a file")

        weights = tmp_path / "weights.bin"
        weights.write_bytes(os.urandom(1 << 20))  # large enough for the hash cache
        file_sha256(weights, cache)  # a later write to the folder
        assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1  # the cached hash
        assert not killed_tmp.exists() and not old.exists()
        assert live_tmp.exists() and recent.exists() and legacy.exists()
    finally:
        _dead(live)
    # Once dead, the next process that writes there removes it.
    later, _ = _writer(cache, "entry-f", lambda: write_text(cache / "entry-f", "done"))
    os.waitpid(later, 0)
    assert (cache / "entry-f").read_text() == "done" and not live_tmp.exists()


def test_a_write_syncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    """Without a sync of the folder a crash can lose the new name though the file's bytes were synced."""
    synced = []
    fsync = os.fsync

    def spy(fd):  # records what each fsync was of; the OS does the sync
        synced.append((stat.S_ISDIR(os.fstat(fd).st_mode), (tmp_path / "out.json").exists()))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_text(tmp_path / "out.json", "{}")
    assert synced == [(False, False), (True, True)]  # the temp file's bytes, then the folder holding the new name


def test_a_shard_and_a_mean_rewritten_under_their_locks_remove_the_temp_files_of_killed_writes(tmp_path):
    """store.locks.remove_temp_files: a holder of a file's lock is its only writer, so any temp file of that
    file is a killed write's, whoever wrote it."""
    cfg = compose_cfg("job=mean", "corpus=samples", "corpus.max_docs=4", "corpus.shard_size=2", "centering.min_count=2", f"paths.artifacts={tmp_path / 'a'}")
    first = jobs.run("mean", cfg, tmp_path / "run1")
    [shards] = (tmp_path / "a" / "stats").glob("*/shards")
    mean = tmp_path / "a" / "means" / first["mean_id"] / "corpus_mean.safetensors"
    (shards / "00001.safetensors").unlink()
    mean.unlink()
    stale = [shards / ".00001.safetensors.k1lled_x.tmp", mean.parent / ".corpus_mean.safetensors.k1lled_x.tmp",
             shards.parent / ".aggregate.ckpt.safetensors.k1lled_x.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    again = jobs.run("mean", cfg, tmp_path / "run2")
    assert again["shards_computed"] == 1 and again["sha256"] == first["sha256"]
    assert [p for p in stale if p.exists()] == []


@pytest.mark.slow  # a CLI run: the default pytest run stays under 5 minutes
def test_a_new_run_removes_the_temp_files_killed_runs_left_beside_it(tmp_path):
    """No later run writes into a killed run's folder, so its half-written files are removed by the
    next run that starts beside it (writers still alive keep theirs)."""
    killed = subprocess.Popen(["sleep", "0"])
    killed.wait()
    old = tmp_path / "experiments" / "extract" / "killed_run"
    old.mkdir(parents=True)
    stale = old / f".vector.json.{killed.pid}@{io._where()}.x.tmp"  # as write_bytes names it, of a dead writer
    live = old / f"{io.temp_prefix(old / 'vector.safetensors')}y.tmp"  # this pytest process's: alive
    for path in (stale, live):
        path.write_bytes(b"half a file")
    r = run_cli("job=extract", "text=hi", "logger=none", f"hydra.run.dir={old.parent / 'new_run'}", cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert not stale.exists() and live.exists()


def test_a_temp_file_of_another_machine_with_this_host_name_waits_a_day(tmp_path):
    """Host names repeat, and every machine's first pid namespace has the same inode: the boot id in a
    temp file's name tells another machine's writer (which cannot be asked) from a dead one here."""
    gone = subprocess.Popen(["sleep", "0"])
    gone.wait()  # a pid that is dead here, maybe alive there
    host, boot_namespace = io._where().split("@")
    boot, namespace = boot_namespace.split("-")
    other = "0" * 8 if boot != "0" * 8 else "1" * 8
    theirs = tmp_path / f".entry-a.{gone.pid}@{host}@{other}-{namespace}.x.tmp"
    ours = tmp_path / f".entry-b.{gone.pid}@{io._where()}.x.tmp"
    for path in (theirs, ours):
        path.write_bytes(b"half a file")
    write_text(tmp_path / "entry-c", "done")  # the folder's first write in this process sweeps it
    assert theirs.exists() and not ours.exists()
