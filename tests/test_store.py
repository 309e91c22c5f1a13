"""The vector store of a corpus (job=store): rows equal extraction alone, the reader's slices,
third-party reading, storage dtypes, resume, corrupt and foreign shards, reads that verify what
they read, kills, concurrent writers, bad input, and the Modal variant."""

import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

import actexp
from actexp import jobs
from actexp.backends.local import LocalBackend
from actexp.data.corpus import Corpus
from actexp.errors import UserError
from actexp.jobs.common import chunks as chunks_from_cfg
from actexp.jobs.common import corpus_mean
from actexp.store.reader import VectorStore
from helpers import REPO, compose_cfg, read_only, rel_err, run_cli

CORPUS = ["corpus.max_docs=40", "store.shard_size=16"]  # 3 shards: 16, 16, 8


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """A store folder with the corpus mean of the store's corpus."""
    root = tmp_path_factory.mktemp("store-art")
    jobs.run("mean", compose_cfg("job=mean", *CORPUS, f"paths.artifacts={root}"), root)
    return root


def run_store(art, out, *overrides):
    cfg = compose_cfg("job=store", f"paths.artifacts={art}", *CORPUS, *overrides)
    metrics = jobs.run("store", cfg, out)
    return metrics, cfg, VectorStore.open(art / "vectors" / metrics["store_id"])


@pytest.fixture(scope="module")
def centred(art, tmp_path_factory):
    # Record batches of 10 KiB of one 512-dim float32 column: 5 rows, so each 16-row shard is read in
    # batches of 5, 5, 5 and 1 and every read below crosses batch ends.
    return run_store(art, tmp_path_factory.mktemp("out"), "centering=corpus_mean", "store.batch_kb=10")


def test_rows_equal_each_document_extracted_alone(centred):
    metrics, cfg, store = centred
    docs = list(Corpus(cfg.corpus).documents())
    assert len(store) == metrics["docs"] == 40 and store.variants == ["raw", "centered"] and store.dims == 512
    assert len(store.manifest["shards"]) == 3 and store.manifest["model"]["model"] == "tiny"
    batches = [len(b) for b in pa.ipc.open_file(store.folder / "shards" / "00000.arrow").read_all().column("raw").chunks]
    assert batches == [5, 5, 5, 1] and [len(s["xxh3_64"]["raw"]) for s in store.manifest["shards"]] == [4, 4, 2]
    assert store.manifest["centering"]["mean"]["sha256"] == corpus_mean(cfg).sha256
    backend, mean, chunks = LocalBackend.from_config(cfg), corpus_mean(cfg), chunks_from_cfg(cfg.pooling)
    raw, centered = store.vectors(), store.vectors(variant="centered")
    meta = store.metadata().to_pydict()
    assert meta["id"] == [d.id for d in docs] and meta["name"] == [d.name for d in docs]
    for i, doc in enumerate(docs):
        alone = backend.vectors([doc.text], chunks, mean)  # one text, one batch
        assert rel_err(raw[i], alone.raw[0]) < 2e-6 and rel_err(centered[i], alone.centered[0]) < 2e-6
        assert meta["n_tokens"][i] == alone.n_tokens[0] and meta["truncated"][i] == alone.truncated[0]


def test_the_reader_gives_the_rows_asked_for(centred):
    _, _, store = centred
    every = store.vectors()  # [40, 512]
    assert np.array_equal(store.vectors(slice(10, 30)), every[10:30])  # across the first shard's end
    rows = [39, 0, 17, 16, 5]
    assert np.array_equal(store.vectors(rows), every[rows])
    assert np.array_equal(store.vectors(ids=[store.ids[r] for r in rows]), every[rows])
    as_torch = store.vectors(slice(0, 3), variant="centered", to="torch")
    assert as_torch.dtype == torch.float32 and as_torch.shape == (3, 512)
    with pytest.raises(UserError, match="1 of 2 ids are not in the store .*'nope'"):
        store.vectors(ids=[store.ids[0], "nope"])
    with pytest.raises(UserError, match="rows out of range"):
        store.vectors([40])
    mask = np.zeros(40, dtype=bool)
    mask[[3, 17, 39]] = True  # a boolean mask, as numpy takes one
    assert np.array_equal(store.vectors(mask), every[mask]) and len(store.vectors([])) == 0
    for bad, expected in ((mask[:2], "boolean mask of rows needs 40 entries"), ([1.5], "rows must be row numbers")):
        with pytest.raises(UserError, match=expected):
            store.vectors(bad)
    with pytest.raises(UserError, match="to='jax': give numpy or torch"):
        store.vectors(slice(0, 2), to="jax")


def test_a_shard_opens_with_pandas(centred):
    _, _, store = centred
    frame = pd.read_feather(store.folder / "shards" / "00001.arrow")  # no actexp involved
    assert list(frame.columns) == ["id", "name", "n_tokens", "truncated", "raw", "centered"] and len(frame) == 16
    assert frame["id"].tolist() == store.ids[16:32]
    assert np.array_equal(np.stack(frame["centered"].to_numpy()), store.vectors(slice(16, 32), variant="centered"))


@pytest.mark.parametrize("dtype,tolerance", [("float16", 1e-3), ("bfloat16", 1e-2)])
def test_storage_dtypes_halve_the_size_and_read_as_float32(centred, art, tmp_path, dtype, tolerance):
    _, _, full = centred
    metrics, _, half = run_store(art, tmp_path, "centering=corpus_mean", f"store.storage_dtype={dtype}")
    assert half.manifest["storage_dtype"] == dtype and half.folder != full.folder
    assert half.vectors().dtype == np.float32 and rel_err(half.vectors(), full.vectors()) < tolerance
    size = {s: sum(p.stat().st_size for p in s.folder.glob("shards/*.arrow")) for s in (full, half)}
    assert size[half] < 0.6 * size[full]


def test_a_corrupt_or_foreign_shard_is_recomputed_and_the_rest_kept(centred, art, tmp_path, caplog):
    metrics, _, store = run_store(art, tmp_path)
    before = store.vectors()
    shard = store.folder / "shards" / "00001.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte inside the vectors
    shard.write_bytes(bytes(data))
    # A finished store is reused from its manifest: a re-run reads no shard, so it cannot see the damage ...
    caplog.set_level(logging.INFO)
    assert run_store(art, tmp_path)[0]["tokens_computed"] == 0 and "vector store up to date" in caplog.text
    # ... which store.verify=true finds, recomputing that shard alone.
    again, _, _ = run_store(art, tmp_path, "store.verify=true")
    assert again["tokens_computed"] == store.manifest["tokens"] - sum(
        json.loads(pa.ipc.open_file(store.folder / "shards" / f"0000{k}.arrow").schema.metadata[b"actexp"])["tokens"]
        for k in (0, 2))  # only shard 1 ran again
    assert np.array_equal(VectorStore.open(store.folder).vectors(), before)
    # A shard of another store (here: the centred store's) put in its place is refused and redone; so is
    # one whose content is right but whose batch checksums (what readers compare) are not: else the
    # manifest, written from the headers, would keep failing every read.
    # (The fixture's, not a new one: a run here before the fixture's would write that store with the
    # default batch size, and the fixture would then reuse it, as finished, for its 5-row batches.)
    _, _, other = centred
    shard.write_bytes((other.folder / "shards" / "00001.arrow").read_bytes())
    first = store.folder / "shards" / "00000.arrow"
    table = pa.ipc.open_file(first).read_all()
    header = json.loads(table.schema.metadata[b"actexp"])
    header["xxh3_64"]["raw"][0] = "0" * 16
    table = table.replace_schema_metadata({"actexp": json.dumps(header)})
    with pa.ipc.new_file(first, table.schema) as writer:
        writer.write_table(table)
    run_store(art, tmp_path, "store.verify=true")
    assert f"shard 1 ({shard}) belongs to another store ({other.folder.name})" in caplog.text
    assert f"shard 0 ({first}) is missing, truncated or corrupt" in caplog.text
    assert np.array_equal(VectorStore.open(store.folder).vectors(), before)


def _zero_bytes_of(shard, values: np.ndarray, n=64):
    """Zero n bytes of a shard file where `values` (a row of one of its vectors) lie, as a bad disk would."""
    data = bytearray(shard.read_bytes())
    at = data.find(values.tobytes())
    assert at > 0
    data[at + 8:at + 8 + n] = bytes(n)
    shard.write_bytes(bytes(data))


def test_reads_verify_the_batches_they_touch_and_name_a_damaged_shard(centred, art, tmp_path):
    _, _, store = centred
    copy = tmp_path / "vectors" / store.folder.name
    shutil.copytree(store.folder, copy)
    raw, centered = store.vectors(), store.vectors(variant="centered")
    shard = copy / "shards" / "00001.arrow"
    _zero_bytes_of(shard, raw[28])  # row 12 of shard 1: its third batch, rows 10-14
    damaged = re.escape(f"shard {shard} is damaged: the raw vectors of its rows 10-14 do not match their checksum "
                        "in manifest.json: recompute it by running the job=store command that wrote this store again "
                        "with store.verify=true")
    reader = VectorStore.open(copy)
    # What a read does not touch is served, checked: the other batches, the other variant, the metadata.
    assert np.array_equal(reader.vectors(slice(0, 26)), raw[:26]) and np.array_equal(reader.vectors([31, 39]), raw[[31, 39]])
    assert np.array_equal(reader.vectors(variant="centered"), centered) and reader.ids == store.ids
    for read in (lambda: reader.vectors([28]), lambda: reader.vectors(slice(20, 40)),
                 lambda: actexp.open_store(copy).vectors()):  # the Python API's reader
        with pytest.raises(UserError, match=f"^{damaged}$"):
            read()
    # Every job that reads a store reads it through the reader.
    with pytest.raises(UserError, match=damaged):
        jobs.run("analyze", compose_cfg("job=analyze", "analyze.source=store", f"analyze.path={copy}", "analyze.max_rows=40",
                                        "logger=none"), tmp_path / "a")
    with pytest.raises(UserError, match=damaged):
        jobs.run("neighbors", compose_cfg("job=neighbors", f"neighbors.store={copy}", f"neighbors.ids=[{store.ids[0]}]",
                                          "logger=none"), tmp_path / "n")
    # A store written before batch checksums (none in its manifest) is checked shard by shard, whole.
    manifest = json.loads((copy / "manifest.json").read_text())
    for entry in manifest["shards"]:
        del entry["batch_rows"], entry["xxh3_64"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    older = VectorStore.open(copy)
    assert np.array_equal(older.vectors(slice(0, 16)), raw[:16]) and np.array_equal(older.vectors(slice(32, 40)), raw[32:])
    with pytest.raises(UserError, match=re.escape(f"shard {shard} is damaged: its content does not match its sha256 in "
                                                  "manifest.json")):
        older.vectors([16])
    # A truncated or missing shard is the same one line.
    last = copy / "shards" / "00002.arrow"
    last.write_bytes(last.read_bytes()[:5000])
    with pytest.raises(UserError, match=re.escape(f"shard {last} is unreadable (") + ".*store.verify=true$"):
        VectorStore.open(copy).vectors([39])
    last.unlink()
    with pytest.raises(UserError, match=re.escape(f"shard {last} is missing: recompute")):
        VectorStore.open(copy).vectors(slice(32, 40))


def test_text_queries_of_a_store_need_the_mean_it_was_centred_with(centred, art, tmp_path):
    metrics, _, store = centred
    query = ["job=neighbors", f"neighbors.store={store.folder}", "neighbors.queries=[a cat]", "centering=corpus_mean",
             f"paths.artifacts={art}", *CORPUS, "logger=none"]
    assert jobs.run("neighbors", compose_cfg(*query), tmp_path)["rows"] == 40  # the store's own mean
    # Another mean of the same model and corpus: the same shards, a lower min_count, other values.
    other = jobs.run("mean", compose_cfg("job=mean", *CORPUS, f"paths.artifacts={art}", "centering.min_count=2"), tmp_path)
    assert other["sha256"] != store.manifest["centering"]["mean"]["sha256"]
    with pytest.raises(UserError, match=f"the store {store.folder.name} was centred with another mean "
                                        f"\\({store.manifest['centering']['mean']['sha256'][:12]}\\)"):
        jobs.run("neighbors", compose_cfg(*query, "centering.min_count=2"), tmp_path)


@pytest.mark.slow
def test_the_issue_damage_from_the_cli_is_one_line_whose_command_repairs_it(tmp_path):
    """A finished store, 64 bytes zeroed inside shard 0 and shard 2 truncated, then job=neighbors from
    another folder: it read the zeros silently (exit 0), and a truncated shard was
    `error (ArrowInvalid): Not an Arrow file`, exit 1, with a half-made run folder."""
    (tmp_path / "elsewhere").mkdir()
    made = run_cli("job=store", *CORPUS, "paths.artifacts=art", "logger=none", "hydra.run.dir=runs/store", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    [folder] = (tmp_path / "art" / "vectors").iterdir()
    before = VectorStore.open(folder).vectors()
    shard, last = folder / "shards" / "00000.arrow", folder / "shards" / "00002.arrow"
    _zero_bytes_of(shard, before[9])
    last.write_bytes(last.read_bytes()[:1000])
    r = run_cli("job=neighbors", f"neighbors.store={folder}", "neighbors.queries=[a cat]", "logger=none",
                f"hydra.run.dir={tmp_path / 'runs' / 'neighbors'}", cwd=tmp_path / "elsewhere")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"error: shard {shard} is damaged: the raw vectors of its rows 0-15 do not match")
    assert not (tmp_path / "runs" / "neighbors").exists()  # no half-made run folder
    # The line's command, run as it is from the other folder (it goes back to where the store was
    # made, for relative paths), recomputes the damaged shards and nothing else.
    [command] = re.findall(r"recompute it with `([^`]+)`", r.stderr)
    assert command.startswith(f"cd {tmp_path} && python -m actexp.run job=store ") and "store.verify=true" in command
    repaired = subprocess.run(command.replace("python ", f"{sys.executable} ", 1), shell=True, cwd=tmp_path / "elsewhere",
                              capture_output=True, text=True, timeout=300)
    assert repaired.returncode == 0 and "; 2 computed" in repaired.stdout, repaired.stderr
    assert np.array_equal(VectorStore.open(folder).vectors(), before)


def test_progress_and_bad_input(tmp_path, caplog):
    common = ["job=store", f"paths.artifacts={tmp_path / 'art'}", *CORPUS]
    with caplog.at_level("INFO", logger="actexp"):
        assert jobs.run("store", compose_cfg(*common, "store.stage=progress"), tmp_path) == {"shards": 0, "docs": 0}
    assert "shards 0 / 3, documents 0 / 40" in caplog.text
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("\n")
    for args, expected in [
        (["corpus=files", f"corpus.path={tmp_path / 'empty'}"], "has no documents"),
        (["store.storage_dtype=int8"], "store.storage_dtype='int8'"),
        (["store.stage=sideways"], "store.stage"),
    ]:
        with pytest.raises(UserError, match=expected):
            jobs.run("store", compose_cfg(*common, *args), tmp_path)
    with pytest.raises(UserError, match="not a finished vector store"):
        VectorStore.open(tmp_path)


@pytest.mark.slow
def test_a_full_disk_gives_one_line_and_no_half_written_shard(art, tmp_path):
    def small_files():  # the child may write no file over 24 kB: the first shard (32 kB) does not fit
        resource.setrlimit(resource.RLIMIT_FSIZE, (24_000, 24_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    cmd = [sys.executable, "-m", "actexp.run", "job=store", f"paths.artifacts={tmp_path / 'full'}", *CORPUS,
           "logger=none", f"hydra.run.dir={tmp_path / 'run'}"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, preexec_fn=small_files, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: cannot write ") and "File too large" in r.stderr and "paths.artifacts" in r.stderr
    assert not list((tmp_path / "full").rglob("*.arrow")) and not list((tmp_path / "full").rglob("*.tmp"))


def _cli_store(art, run_dir, *extra):
    return [sys.executable, "-m", "actexp.run", "job=store", "corpus.max_docs=96", "store.shard_size=4",
            "hardware.threads=1", "logger=none", f"paths.artifacts={art}", f"hydra.run.dir={run_dir}", *extra]


def _tables(art):
    [folder] = (art / "vectors").iterdir()
    return [pa.ipc.open_file(p).read_all() for p in sorted(folder.glob("shards/*.arrow"))]


@pytest.mark.slow
def test_sigkill_then_resume_gives_a_bit_identical_store(tmp_path):
    subprocess.run(_cli_store(tmp_path / "whole", tmp_path / "w"), cwd=REPO, check=True, capture_output=True)
    art = tmp_path / "killed"
    proc = subprocess.Popen(_cli_store(art, tmp_path / "k"), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and len(list(art.glob("vectors/*/shards/*.arrow"))) < 3:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and 3 <= len(list(art.glob("vectors/*/shards/*.arrow"))) < 24
    assert not list(art.glob("vectors/*/manifest.json"))
    [shards] = art.glob("vectors/*/shards")
    stale = shards / ".00023.arrow.killed.tmp"  # what a writer killed mid-write leaves
    stale.write_bytes(b"half a shard")
    subprocess.run(_cli_store(art, tmp_path / "k2"), cwd=REPO, check=True, capture_output=True)
    assert not stale.exists() and not list(art.rglob("*.tmp"))
    assert all(a.equals(b, check_metadata=True) for a, b in zip(_tables(tmp_path / "whole"), _tables(art)))
    assert len(_tables(art)) == 24


@pytest.mark.slow
def test_two_writers_at_once_share_the_work_and_equal_a_single_run(tmp_path):
    subprocess.run(_cli_store(tmp_path / "whole", tmp_path / "w"), cwd=REPO, check=True, capture_output=True)
    art = tmp_path / "shared"
    procs = [subprocess.Popen(_cli_store(art, tmp_path / f"r{i}"), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all(a.equals(b, check_metadata=True) for a, b in zip(_tables(tmp_path / "whole"), _tables(art)))
    computed = [json.loads((tmp_path / f"r{i}" / "metrics.json").read_text())["metrics"]["tokens_computed"]
                for i in range(2)]
    assert sum(computed) == json.loads(next(art.glob("vectors/*/manifest.json")).read_text())["tokens"]


def test_a_reader_and_its_memory_maps_are_freed_with_it(centred):
    import gc
    import weakref

    _, _, store = centred
    reader = VectorStore.open(store.folder)
    reader.vectors(slice(0, 40))  # opens every shard
    gone = weakref.ref(reader)
    del reader
    gc.collect()
    assert gone() is None


def test_a_read_only_store_is_used_as_it_is_and_a_new_file_there_is_one_line(tmp_path, caplog):
    art = tmp_path / "art"
    base = ["corpus=samples", "centering.min_count=4", f"paths.artifacts={art}"]
    jobs.run("mean", compose_cfg("job=mean", *base), tmp_path / "o")
    made = jobs.run("store", compose_cfg("job=store", "centering=corpus_mean", *base), tmp_path / "o")
    manifest = art / "vectors" / made["store_id"] / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"actexp_version": "', '"actexp_version": "0.0.0-'))  # an older actexp
    before = sorted((p.relative_to(art), p.stat().st_mtime_ns) for p in art.rglob("*"))
    with read_only(art):
        with pytest.raises(OSError):
            (art / "probe").write_text("")  # the folder really is read-only
        assert jobs.run("mean", compose_cfg("job=mean", *base), tmp_path / "o1")["sha256"]
        assert jobs.run("mean", compose_cfg("job=mean", *base, "mean.stage=aggregate"), tmp_path / "o2")["sha256"]
        caplog.set_level(logging.INFO)
        for verify in ("false", "true"):  # true: every shard is checked again, and the manifest is the same
            again = jobs.run("store", compose_cfg("job=store", "centering=corpus_mean", f"store.verify={verify}", *base),
                             tmp_path / f"o3{verify}")
            assert again["store_id"] == made["store_id"] and again["tokens_computed"] == 0
        assert "every shard checked, nothing to write" in caplog.text and "wrote " not in caplog.text
        assert jobs.run("csv", compose_cfg("job=csv", "centering=corpus_mean", *base), tmp_path / "o4")
        # A file that is not there yet must be written there: one line naming the folder.
        for job, extra in (("mean", "centering.min_count=3"), ("store", "store.storage_dtype=float16")):
            with pytest.raises(UserError, match=f"cannot write to {art}/.* write new ones elsewhere with paths.artifacts"):
                jobs.run(job, compose_cfg(f"job={job}", *base, "centering=corpus_mean", extra), tmp_path / "o5")
    assert sorted((p.relative_to(art), p.stat().st_mtime_ns) for p in art.rglob("*")) == before
