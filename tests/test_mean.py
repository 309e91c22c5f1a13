"""The corpus mean job: exact sums and counts, resume after a crash, corrupt shards, finalise."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from actexp import jobs
from actexp.errors import UserError
from actexp.jobs.common import corpus_mean
from actexp.jobs.common import model_spec
from actexp.maths.centering import CorpusMean, finalise
from actexp.maths.pooling import Chunk
from actexp.models.loading import load_model
from actexp.store import means
from helpers import (REPO, TEXTS, compose_cfg, reference_model, reference_pooled_mean, reference_stream, rel_err, run_cli,
                     run_clis, wandb_records)


@pytest.fixture()
def docs_dir(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    texts = TEXTS + ["Short note.", TEXTS[2][:300], TEXTS[1] * 3]
    for i, text in enumerate(texts):
        (folder / f"{i:02d}.txt").write_text(text)
    return folder


def run_mean(artifacts, *overrides):
    cfg = compose_cfg("job=mean", f"paths.artifacts={artifacts}", *overrides)
    out = artifacts.parent / "out"
    out.mkdir(exist_ok=True)
    return jobs.run("mean", cfg, out), cfg


def stats_folder(artifacts):
    [folder] = (artifacts / "stats").iterdir()
    return folder


def mean_file(artifacts):
    [path] = (artifacts / "means").glob(f"*/{means.MEAN_FILE}")
    return path


def files_corpus(folder, shard_size=2):
    # 7 documents: every position has fewer than the default min_count of 8
    return ["corpus=files", f"corpus.path={folder}", f"corpus.shard_size={shard_size}", "centering.min_count=1"]


def test_mean_equals_per_document_reference(tmp_path, docs_dir):
    metrics, cfg = run_mean(tmp_path / "art", *files_corpus(docs_dir), "centering.tail_start=0")
    folder = stats_folder(tmp_path / "art")
    assert len(list((folder / "shards").glob("*.safetensors"))) == 4  # 7 documents, 2 per shard
    saved = load_file(mean_file(tmp_path / "art"))
    lm = load_model(model_spec(cfg))
    ref = reference_model(lm.model)
    P, H = 2048, lm.hidden_size
    ref_sum, ref_count = torch.zeros(P, H, dtype=torch.float64), torch.zeros(P, dtype=torch.int64)
    for path in sorted(docs_dir.iterdir()):
        ids = lm.tokenizer(path.read_text(), add_special_tokens=False)["input_ids"]
        ref_sum[: len(ids)] += reference_stream(ref, ids).mean(0)
        ref_count[: len(ids)] += 1
    seen = ref_count > 0
    reached = int(seen.sum())  # the longest document's tokens: only these positions are stored
    assert reached < P and saved["sum"].dtype == torch.float64 and saved["count"].dtype == torch.int64
    assert saved["mean"].dtype == torch.float32 and saved["mean"].shape == (reached, H)
    assert torch.equal(saved["count"], ref_count[:reached])
    assert rel_err(saved["sum"], ref_sum[:reached]) < 1e-6
    assert rel_err(saved["mean"], ref_sum[seen] / ref_count[seen, None]) < 1e-6
    # Positions no document reached take the count-weighted mean of all positions (tail_start 0).
    assert saved["tail"].shape == (H,) and rel_err(saved["tail"], ref_sum.sum(0) / ref_count.sum()) < 1e-6
    mean = means.load_mean(mean_file(tmp_path / "art"))
    assert torch.equal(mean.rows(P)[reached:], saved["tail"].expand(P - reached, H))
    header = means.load_mean(mean_file(tmp_path / "art")).metadata
    assert header["docs"] == 7 and header["tokens"] == int(ref_count.sum())
    for key in ("model", "revision", "layers", "prepend_bos", "max_tokens", "corpus", "min_count", "tail_start"):
        assert key in header
    assert metrics["docs"] == 7


def test_finalise_fallback_by_hand():
    sum_ = torch.tensor([[10.0], [6.0], [4.0], [0.0]], dtype=torch.float64)
    count = torch.tensor([5, 3, 1, 0])
    mean = finalise(sum_, count, min_count=2, tail_start=1)
    # positions 0 and 1 have enough documents; 2 and 3 take the tail mean of position 1: 6 / 3
    assert mean[:, 0].tolist() == [2.0, 2.0, 2.0, 2.0]
    assert finalise(sum_, count, min_count=1, tail_start=0)[:, 0].tolist() == pytest.approx([2.0, 2.0, 4.0, 20.0 / 9.0])
    with pytest.raises(ValueError, match="tail_start"):
        finalise(sum_, count, min_count=4, tail_start=1)


def _tensors(artifacts):
    return load_file(mean_file(artifacts))


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in ("sum", "count", "mean"))


def test_resume_after_a_crash_in_extract_is_bit_identical(tmp_path, docs_dir, monkeypatch):
    run_mean(tmp_path / "whole", *files_corpus(docs_dir))
    real_write, calls = means.write_stats, []

    def crash_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise RuntimeError("injected crash after shard 1")
        calls.append(real_write(*args, **kwargs))

    monkeypatch.setattr(means, "write_stats", crash_after_two)
    with pytest.raises(RuntimeError, match="injected"):
        run_mean(tmp_path / "resumed", *files_corpus(docs_dir))
    monkeypatch.setattr(means, "write_stats", real_write)
    assert len(list((stats_folder(tmp_path / "resumed") / "shards").iterdir())) == 2
    metrics, _ = run_mean(tmp_path / "resumed", *files_corpus(docs_dir))
    assert 0 < metrics["tokens_computed"] < metrics["tokens"]  # only the missing shards ran
    assert _same(_tensors(tmp_path / "whole"), _tensors(tmp_path / "resumed"))
    again, _ = run_mean(tmp_path / "resumed", *files_corpus(docs_dir))  # a re-run is free
    assert "tokens_computed" not in again


def test_resume_after_a_crash_in_aggregate_uses_the_checkpoint(tmp_path, docs_dir, monkeypatch):
    run_mean(tmp_path / "whole", *files_corpus(docs_dir))
    art = tmp_path / "resumed"
    run_mean(art, *files_corpus(docs_dir), "mean.stage=extract")

    def crash(*args, **kwargs):
        raise RuntimeError("injected crash before the mean is saved")

    monkeypatch.setattr(means, "save_mean", crash)
    with pytest.raises(RuntimeError, match="injected"):
        run_mean(art, *files_corpus(docs_dir), "mean.stage=aggregate", "mean.checkpoint_every=1")
    monkeypatch.undo()
    folder = stats_folder(art)
    assert means.read_stats(folder / means.CHECKPOINT_FILE)[2]["next"] == 3
    for k in range(3):  # the checkpoint covers these: the merge must not read them again
        (folder / "shards" / f"{k:05d}.safetensors").unlink()
    run_mean(art, *files_corpus(docs_dir), "mean.stage=aggregate")
    assert _same(_tensors(tmp_path / "whole"), _tensors(art))
    assert not (folder / means.CHECKPOINT_FILE).exists()


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign"])
def test_corrupt_shard_is_detected_and_redone(tmp_path, docs_dir, damage, caplog):
    art = tmp_path / "art"
    run_mean(art, *files_corpus(docs_dir))
    whole = _tensors(art)
    shard = stats_folder(art) / "shards" / "00001.safetensors"
    data = bytearray(shard.read_bytes())
    if damage == "flip":
        data[-5] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(bytes(data[: len(data) // 2]))
    else:  # a valid file computed in another dtype: its checksum is fine, its header is not
        sum_, count, meta = means.read_stats(shard)
        means.write_stats(shard, sum_, count, meta | {"dtype": "bfloat16"})
        data = bytearray(shard.read_bytes())
    assert damage == "foreign" or means.read_stats(shard) is None
    mean_file(art).unlink()  # a finished mean is reused as it is: merge again
    # The merge alone refuses it and removes it ...
    expected = "dtype=bfloat16 .these sums are for dtype=float32" if damage == "foreign" else "is missing, truncated or corrupt"
    with pytest.raises(UserError, match=f"shard 1 of .* {expected}"):
        run_mean(art, *files_corpus(docs_dir), "mean.stage=aggregate")
    assert not shard.exists()
    # ... and the next run recomputes it.
    if damage != "truncate":
        shard.write_bytes(bytes(data))
    metrics, _ = run_mean(art, *files_corpus(docs_dir))
    assert 0 < metrics["tokens_computed"] < metrics["tokens"]
    assert _same(whole, _tensors(art))


@pytest.mark.slow
def test_sigkill_at_two_points_then_rerun_is_identical(tmp_path):
    overrides = ["job=mean", "corpus.max_docs=96", "corpus.shard_size=8"]  # 12 shards
    run_mean(tmp_path / "whole", *overrides[1:])
    art = tmp_path / "killed"
    cmd = [sys.executable, "-m", "actexp.run", *overrides, f"paths.artifacts={art}", f"hydra.run.dir={tmp_path / 'run'}"]
    for wanted in (2, 7):  # kill once early, once late
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline, seen = time.time() + 120, 0
        while proc.poll() is None and time.time() < deadline:
            seen = len(list(art.glob("stats/*/shards/*.safetensors")))
            if seen >= wanted:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"the run ended on its own (status {proc.returncode})"
        on_disk = len(list(art.glob("stats/*/shards/*.safetensors")))
        assert wanted <= seen <= on_disk < 12 and not list(art.glob(f"means/*/{means.MEAN_FILE}"))
    [shards] = art.glob("stats/*/shards")
    stale = shards / ".00011.safetensors.killed.tmp"  # what a writer killed mid-write leaves
    stale.write_bytes(b"half a shard")
    r = run_cli(*overrides, f"paths.artifacts={art}", f"hydra.run.dir={tmp_path / 'run2'}", cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert not stale.exists() and not list(art.rglob("*.tmp"))
    assert _same(_tensors(tmp_path / "whole"), _tensors(art))


@pytest.mark.slow
def test_ctrl_c_says_what_was_kept_in_one_line_and_the_same_command_resumes(tmp_path):
    overrides = ["job=mean", "corpus.max_docs=96", "corpus.shard_size=4", "hardware.threads=1"]  # 24 shards
    run_mean(tmp_path / "whole", *overrides[1:])
    art = tmp_path / "interrupted"

    def interrupt(run_dir, shards, *extra):
        """Ctrl-C once `shards` shards are saved: the process's stderr."""
        cmd = [sys.executable, "-m", "actexp.run", *overrides, *extra, f"paths.artifacts={art}", f"hydra.run.dir={run_dir}"]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        # Finished shards (pathlib's * also matches a shard's hidden temp file, which is not yet saved).
        while proc.poll() is None and time.time() < deadline and len(list(art.glob("stats/*/shards/*.safetensors"))) < shards:
            time.sleep(0.02)
        assert proc.poll() is None, f"the job ended before {shards} shards were saved"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert re.fullmatch(r"interrupted: \d+ of 24 shards of the corpus mean saved; run the same command to resume\n", err)
        saved = int(err.split()[1])
        assert shards <= saved == len(list(art.glob("stats/*/shards/*.safetensors"))) < 24
        assert not list(art.rglob("*.tmp"))  # no half file
        return err.strip(), saved

    err, saved = interrupt(tmp_path / "run", 2)
    # The interrupted run's W&B run is its record: the folder keeps it (nothing else of the job's),
    # closed with 130, tagged and summarised as interrupted; metrics.json and run.log say what was kept.
    run_dir = tmp_path / "run"
    assert run_dir.is_dir(), "the interrupted run's folder was removed with its W&B run"
    assert {p.name for p in run_dir.iterdir()} == {".hydra", "run.log", "wandb", "metrics.json"}
    record = json.loads((run_dir / "metrics.json").read_text())
    assert (record["job"], record["status"], record["error"]) == ("mean", "interrupted", err)
    assert err in (run_dir / "run.log").read_text()
    [offline] = (run_dir / "wandb").glob("offline-run-*")
    records = wandb_records(offline)
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [130]
    assert "interrupted" in [r for r in records if r.WhichOneof("record_type") == "run"][-1].run.tags
    summary = {i.key: json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "summary"
               for i in r.summary.update}
    assert summary["status"] == "interrupted"
    # Without W&B the folder holds nothing of the job's: it goes.
    _, saved = interrupt(tmp_path / "quiet", saved + 2, "logger=none")
    assert not (tmp_path / "quiet").exists()
    r = run_cli(*overrides, f"paths.artifacts={art}", f"hydra.run.dir={tmp_path / 'run2'}", cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "run2" / "mean.json").read_text())["shards_computed"] == 24 - saved
    assert _same(_tensors(tmp_path / "whole"), _tensors(art))


@pytest.mark.slow
def test_two_mean_jobs_at_once_share_the_work_and_equal_a_single_run(tmp_path):
    overrides = ["corpus.max_docs=64", "corpus.shard_size=2", "hardware.threads=1"]
    run_mean(tmp_path / "whole", *overrides)
    art = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, "-m", "actexp.run", "job=mean", *overrides, "logger=none",
                               f"paths.artifacts={art}", f"hydra.run.dir={tmp_path / f'run{i}'}"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert _same(_tensors(tmp_path / "whole"), _tensors(art))
    assert not list(art.rglob("*.tmp"))
    reports = [tmp_path / f"run{i}" / "mean.json" for i in range(2)]
    computed = [json.loads(r.read_text()).get("shards_computed", 0) if r.exists() else 0 for r in reports]
    assert sum(computed) == 32  # each shard computed once, by one of the two


def test_refinalising_keeps_the_other_mean_and_reuses_the_shards(tmp_path, docs_dir):
    art = tmp_path / "art"
    run_mean(art, *files_corpus(docs_dir))
    [first] = (art / "means").glob(f"*/{means.MEAN_FILE}")
    before = first.read_bytes()
    metrics, _ = run_mean(art, *files_corpus(docs_dir), "centering.min_count=2", "mean.stage=aggregate")
    assert first.read_bytes() == before  # the mean that earlier outputs point to is untouched
    second = Path(metrics["mean"])
    assert second != first and second.parent.name.endswith("-m2-t32")
    assert means.load_mean(second).metadata["min_count"] == 2 and means.load_mean(first).metadata["min_count"] == 1
    assert "tokens_computed" not in metrics  # the same shards, merged again


def test_an_edited_corpus_folder_gets_a_new_mean(tmp_path, docs_dir):
    art = tmp_path / "art"
    original = (docs_dir / "03.txt").read_text()
    run_mean(art, *files_corpus(docs_dir))
    (docs_dir / "03.txt").write_text("A new text replaces the old one entirely.")
    metrics, cfg = run_mean(art, *files_corpus(docs_dir))
    assert metrics["shards_computed"] == 4  # never the old mean, silently
    files = sorted((art / "means").glob(f"*/{means.MEAN_FILE}"), key=lambda p: p.stat().st_mtime)
    assert len(files) == 2 and files[1] == Path(metrics["mean"])
    assert not torch.equal(load_file(files[0])["sum"], load_file(files[1])["sum"])
    centring = ["centering=corpus_mean", f"paths.artifacts={art}", *files_corpus(docs_dir)]
    assert corpus_mean(compose_cfg(*centring)).path == files[1]
    (docs_dir / "03.txt").write_text(original)  # the folder as it was: its own mean, not the newest
    assert corpus_mean(compose_cfg(*centring)).path == files[0]


@pytest.mark.slow  # over 10 s: CI (--runslow) runs it; the default run stays under 5 minutes
def test_progress_and_cli_errors(tmp_path, docs_dir):
    art = tmp_path / "art"
    run_mean(art, *files_corpus(docs_dir), "mean.stage=extract")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("\n")
    bad = [(["corpus=files", f"corpus.path={tmp_path / 'empty'}"], "has no documents"),
           (["corpus=files"], "corpus.path"),
           (["mean.stage=sideways"], "mean.stage")]
    progress = ["mean.stage=progress", *files_corpus(docs_dir), f"hydra.run.dir={tmp_path / 'p'}"]
    r, *errors = run_clis([["job=mean", f"paths.artifacts={art}", *args] for args in [progress, *(a for a, _ in bad)]],
                          cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "shards 4 / 4, documents 7 / 7" in r.stdout and "not yet aggregated" in r.stdout
    for r, (_, expected) in zip(errors, bad):
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and expected in r.stderr, r.stderr


def test_a_reused_mean_is_said_to_be_reused_not_written(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    first, _ = run_mean(tmp_path / "art", "corpus=samples", "centering.min_count=4")
    assert f"wrote {first['mean']}" in caplog.text
    caplog.clear()
    again, _ = run_mean(tmp_path / "art", "corpus=samples", "centering.min_count=4")
    assert again["sha256"] == first["sha256"] and f"wrote {first['mean']}" not in caplog.text
    assert f"corpus mean up to date (20 documents, {first['tokens']} tokens): {first['mean']}" in caplog.text


def test_a_mean_padded_to_max_tokens_by_an_earlier_version_still_loads(tmp_path):
    metrics, _ = run_mean(tmp_path / "art", "corpus=samples", "centering.min_count=4")
    new = means.load_mean(metrics["mean"])
    P, reached = new.positions, new.mean.shape[0]
    assert reached < P and new.tail is not None
    pad = P - reached
    old = CorpusMean(new.rows(P), torch.cat([new.sum, new.sum.new_zeros(pad, new.sum.shape[1])]),
                     torch.cat([new.count, new.count.new_zeros(pad)]), None, dict(new.metadata))
    loaded = means.load_mean(means.save_mean(old, tmp_path / "old.safetensors").path)
    assert loaded.tail is None and torch.equal(loaded.rows(P), new.rows(P))
    chunks = [Chunk("last"), Chunk("exp", 0.067)]
    assert torch.equal(loaded.pooled_mean(chunks, reached + 100), new.pooled_mean(chunks, reached + 100))
    # Past P by the definition: mu_t read position by position, the closed-form weights.
    assert rel_err(new.pooled_mean(chunks, reached + 100), reference_pooled_mean(new, chunks, reached + 100)) < 1e-12
