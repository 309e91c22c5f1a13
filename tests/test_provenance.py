"""A result is made from exactly the inputs its config names, and says so: the configured corpus mean
(never the newest that fits the model), and model identities made of content (tokenizer, weights,
hub commits), not of names and modification times."""

import hashlib
import json
import logging
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerFast

import actexp
from actexp import jobs
from actexp.errors import UserError
from actexp.jobs.common import model_identity
from actexp.models.spec import BUNDLED_TOKENIZER, BUNDLED_WEIGHTS
from actexp.store.means import load_mean
from helpers import compose_cfg, read_only, run_cli, run_clis


def _json(path):
    return json.loads(Path(path).read_text())


def _centred_with(run_dir: Path, pooling: str = "long") -> dict:
    return _json(run_dir / f"vectors_{pooling}_mode_centered.json")["centering"]["mean"]


@pytest.mark.slow
def test_every_run_centres_with_the_mean_its_config_names_not_the_newest(tmp_path):
    art = f"paths.artifacts={tmp_path / 'art'}"
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(20):
        (docs / f"{i:02d}.txt").write_text(f"Document {i} of a small corpus of the user's own. " * (3 + i % 5))
    # Three means of the same model: 32 and 16 built-in documents, and 20 of the user's files.
    made = {}
    for name, args in zip(("b32", "b16", "files"), run_clis([
            ["job=mean", art, "corpus.max_docs=32", f"hydra.run.dir={tmp_path / 'b32'}"],
            ["job=mean", art, "corpus.max_docs=16", f"hydra.run.dir={tmp_path / 'b16'}"],
            ["job=mean", art, "corpus=files", f"corpus.path={docs}", "centering.min_count=2",
             f"hydra.run.dir={tmp_path / 'files'}"]], cwd=tmp_path)):
        assert args.returncode == 0, args.stderr
        made[name] = _json(tmp_path / name / "mean.json")
    assert made["files"]["corpus"].startswith("files-docs-") and made["files"]["min_count"] == 2
    for order, name in enumerate(("b32", "b16", "files")):  # newest last: what "newest wins" would take
        os.utime(made[name]["mean"], (1e9 + order, 1e9 + order))

    pipeline, extract = run_clis([
        ["+experiment=long_centered", art, "corpus.max_docs=32", "logger=none", f"hydra.run.dir={tmp_path / 'p'}"],
        ["job=extract", art, "text=hi", "centering=corpus_mean", "corpus.max_docs=16", "centering.min_count=4"],
    ], cwd=tmp_path)
    # The pipeline's every stage uses its own mean: the mean stage's file is the centred CSV's.
    assert pipeline.returncode == 0, pipeline.stderr
    assert _json(tmp_path / "p" / "mean.json")["sha256"] == made["b32"]["sha256"]
    used = _centred_with(tmp_path / "p")
    assert used["sha256"] == made["b32"]["sha256"] and used["path"] == made["b32"]["mean"]
    assert used["docs"] == 32 and used["min_count"] == 8 and used["tail_start"] == 32
    assert "identity raw - centred = pooled corpus mean: PASS" in pipeline.stdout
    # A mean of other settings does not stand in: one line with the command that makes the right one.
    assert extract.returncode == 2 and extract.stderr.count("\n") == 1, extract.stderr
    command = "python -m actexp.run job=mean " + art + " corpus.max_docs=16 centering.min_count=4"
    assert f"compute it with `{command}`" in extract.stderr
    make = run_cli(*command.split()[3:], cwd=tmp_path)
    assert make.returncode == 0, make.stderr
    again = run_cli("job=extract", art, "text=hi", "centering=corpus_mean", "corpus.max_docs=16",
                    "centering.min_count=4", f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    mean = _json(tmp_path / "x" / "vector.json")["centering"]["mean"]
    assert mean["min_count"] == 4 and mean["docs"] == 16 and mean["sha256"] == load_mean(mean["path"]).sha256
    assert mean["sha256"] not in {m["sha256"] for m in made.values()}


def test_a_mean_the_user_names_is_used_said_and_recorded(tmp_path, caplog):
    art = tmp_path / "art"
    theirs = jobs.run("mean", compose_cfg("job=mean", f"paths.artifacts={art}", "corpus=samples",
                                          "centering.min_count=3"), tmp_path)
    cfg = compose_cfg("job=extract", "text=hi", "centering=corpus_mean", f"centering.mean_path={theirs['mean']}",
                      f"paths.artifacts={art}")
    jobs.run("extract", cfg, tmp_path / "run")
    recorded = _json(tmp_path / "run" / "vector.json")["centering"]["mean"]
    assert recorded["sha256"] == theirs["sha256"] and recorded["corpus"] == theirs["corpus"]
    assert recorded["min_count"] == 3 and recorded["docs"] == 20
    assert f"centring with the mean at {theirs['mean']} (corpus samples-bundled" in caplog.text


def test_a_session_computes_the_mean_of_its_own_settings(tmp_path):
    art = f"paths.artifacts={tmp_path}"
    jobs.run("mean", compose_cfg("job=mean", art, "corpus=samples", "centering.min_count=4"), tmp_path)
    with actexp.Session("centering=corpus_mean", art, "corpus=samples", "centering.min_count=6") as s:
        with pytest.raises(UserError, match="compute it with"):
            s.corpus_mean()
        mean = s.corpus_mean(compute=True)
    assert mean.metadata["min_count"] == 6 and "-m6-t32" in mean.path


@pytest.mark.slow
def test_a_sweep_over_min_count_centres_each_job_with_its_own_mean(tmp_path):
    art = f"paths.artifacts={tmp_path / 'art'}"
    for m in (3, 5):
        jobs.run("mean", compose_cfg("job=mean", art, "corpus=samples", f"centering.min_count={m}"), tmp_path)
    r = run_cli("-m", "job=extract", "text=hi", "centering=corpus_mean", "corpus=samples", art,
                "centering.min_count=3,5", "logger=none", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    used = sorted(_json(p)["centering"]["mean"]["min_count"] for p in (tmp_path / "sweep").glob("*/vector.json"))
    assert used == [3, 5]


def test_an_edited_tokenizer_gives_a_new_identity_and_a_new_mean(tmp_path):
    folder = tmp_path / "tok"
    PreTrainedTokenizerFast(tokenizer_file=str(BUNDLED_TOKENIZER), bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>").save_pretrained(folder)
    overrides = ["job=mean", f"paths.artifacts={tmp_path / 'art'}", "corpus=samples", "centering.min_count=4",
                 f"model.tokenizer={folder}"]
    first = jobs.run("mean", compose_cfg(*overrides), tmp_path)
    spec = _json(folder / "tokenizer.json")
    assert spec["normalizer"] is None
    spec["normalizer"] = {"type": "Lowercase"}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    second = jobs.run("mean", compose_cfg(*overrides), tmp_path)
    assert second["mean_id"] != first["mean_id"] and second["shards_computed"] == 1
    assert second["tokens"] != first["tokens"]  # the lowercased texts tokenise differently
    # The bundled tokenizer counts by content too.
    assert model_identity(compose_cfg())["tokenizer_sha256"] == model_identity(compose_cfg(
        "model.random_init=true"))["tokenizer_sha256"] != model_identity(compose_cfg(*overrides))["tokenizer_sha256"]


def _rewrite_in_place_keeping_mtime(path: Path) -> None:
    """Other values of the same shapes, written into the same file (same inode, same size), its
    modification time set back: only the change time tells that it was written."""
    st = path.stat()
    tensors = load_file(path)
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    name = sorted(k for k in tensors if tensors[k].dtype.is_floating_point)[0]
    tensors[name] = tensors[name] + 1e-3
    other = path.with_suffix(".other")
    save_file(tensors, other, metadata=metadata)
    data = other.read_bytes()
    assert len(data) == st.st_size
    with open(path, "r+b") as f:
        f.write(data)
    other.unlink()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)


def test_weights_rewritten_with_their_mtime_set_back_give_a_new_identity(neox_dir, tmp_path):
    folder = shutil.copytree(neox_dir, tmp_path / "ckpt")
    weights = tmp_path / "w.safetensors"
    shutil.copy(BUNDLED_WEIGHTS, weights)
    configs = [compose_cfg("model=hf", f"model.name_or_path={folder}", f"paths.artifacts={tmp_path / 'art'}"),
               compose_cfg(f"model.weights={weights}", f"paths.artifacts={tmp_path / 'art'}")]
    before = [model_identity(cfg) for cfg in configs]
    assert list((tmp_path / "art" / "hashes").iterdir())  # the weights' hashes are kept for the next run
    assert [model_identity(cfg) for cfg in configs] == before  # and found again
    for path in (folder / "model.safetensors", weights):
        _rewrite_in_place_keeping_mtime(path)
    after = [model_identity(cfg) for cfg in configs]
    assert after[0]["checkpoint"] != before[0]["checkpoint"] and after[1]["weights"] != before[1]["weights"]


def test_remote_code_counts_only_when_it_runs(neox_dir, tmp_path):
    folder = shutil.copytree(neox_dir, tmp_path / "ckpt")
    ids = {}
    for trust in ("false", "true"):
        cfg = compose_cfg("model=hf", f"model.name_or_path={folder}", f"model.trust_remote_code={trust}")
        ids[trust] = model_identity(cfg)["checkpoint"]
        (folder / "sub").mkdir(exist_ok=True)
        (folder / "sub" / "modeling_x.py").write_text(f"# trust {trust}\n")
        ids[trust + "-edited"] = model_identity(cfg)["checkpoint"]
    assert ids["false"] == ids["false-edited"]  # a .py file that never runs changes nothing
    assert ids["true"] != ids["true-edited"]  # remote code, in a subfolder too, is part of the model


@pytest.mark.slow
def test_a_hub_model_is_the_commit_its_revision_points_to(neox_dir, tmp_path):
    """A Hugging Face cache laid out as the hub client lays it out: main moves from one commit to another."""
    repo = tmp_path / "hub" / "models--acme--tiny"
    commits = ["a" * 40, "b" * 40]
    for i, commit in enumerate(commits):
        snapshot = shutil.copytree(neox_dir, repo / "snapshots" / commit)
        if i:
            tensors = load_file(snapshot / "model.safetensors")
            save_file({k: v * 1.01 for k, v in tensors.items()}, snapshot / "model.safetensors", metadata={"format": "pt"})
    (repo / "refs").mkdir()
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    vectors = []
    for commit in commits:
        (repo / "refs" / "main").write_text(commit)
        r = run_cli("job=extract", "model=hf", "model.name_or_path=acme/tiny", "text=hello there", "logger=none",
                    f"paths.artifacts={tmp_path / 'art'}", f"hydra.run.dir={tmp_path / commit[:1]}", cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stderr
        assert _json(tmp_path / commit[:1] / "vector.json")["model"]["revision"] == commit
        vectors.append(load_file(tmp_path / commit[:1] / "vector.safetensors")["vector"])
    assert not vectors[0].equal(vectors[1])  # the commit recorded is the one that ran


def test_a_mean_made_with_bos_is_refused_for_vectors_without_it(tmp_path):
    art = f"paths.artifacts={tmp_path}"
    bos = jobs.run("mean", compose_cfg("job=mean", art, "corpus=samples", "centering.min_count=4",
                                       "model.prepend_bos=true"), tmp_path)
    cfg = compose_cfg("job=extract", "text=hi", "centering=corpus_mean", f"centering.mean_path={bos['mean']}", art)
    with pytest.raises(UserError, match=r"prepend_bos=true \(this model has prepend_bos=false\)"):
        jobs.run("extract", cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # over 7 s: CI (--runslow) runs it; the default run stays under 5 minutes
def test_a_pipeline_of_corpus_documents_ends_with_its_summary_and_names_its_mean(tmp_path, caplog):
    cfg = compose_cfg("+experiment=long_centered", "csv.source=corpus", "corpus=samples", "corpus.max_docs=12",
                      "centering.min_count=4", "logger=none", f"paths.artifacts={tmp_path / 'art'}")
    caplog.set_level(logging.INFO)
    jobs.run("pipeline", cfg, tmp_path / "run")
    mean = _json(tmp_path / "run" / "mean.json")
    analysis = _json(tmp_path / "run" / "analysis.json")
    assert analysis["centering"]["mean"]["sha256"] == mean["sha256"] == _centred_with(tmp_path / "run")["sha256"]
    summary = caplog.text[caplog.text.index("summary of long_centered"):]
    assert "anisotropy (mean cosine of all pairs): raw" in summary and "retrieval" not in summary


def test_a_files_hash_is_kept_under_a_key_every_write_changes(tmp_path):
    from actexp.store import hashes

    path, cache = tmp_path / "weights.bin", tmp_path / "hashes"
    path.write_bytes(os.urandom(2 << 20))  # over the size from which hashes are kept
    true = hashlib.sha256(path.read_bytes()).hexdigest()
    assert hashes.file_sha256(path, cache) == true
    [entry] = cache.iterdir()
    entry.write_text("f" * 64 + "\n")  # what is kept is what a later run gets: the file is not read again
    hashes._sha256.cache_clear()
    assert hashes.file_sha256(path, cache) == "f" * 64
    st = path.stat()
    with open(path, "r+b") as f:  # one byte rewritten in place, its modification time set back
        f.write(bytes([path.read_bytes()[0] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert hashes.file_sha256(path, cache) == hashlib.sha256(path.read_bytes()).hexdigest() != true


@pytest.mark.slow  # over 7 s: a CLI run and a mean
def test_a_read_only_store_suggests_a_mean_command_that_works(tmp_path):
    """A mean of other settings than the shared read-only store holds is made in a store of the
    user's own (here the default one, $ACTEXP_ARTIFACTS): the suggested command runs as given."""
    shared, mine = tmp_path / "shared", tmp_path / "mine"
    jobs.run("mean", compose_cfg("job=mean", f"paths.artifacts={shared}", "corpus=samples", "centering.min_count=4"),
             tmp_path / "m")
    asked = ["job=extract", "text=hi", "centering=corpus_mean", "corpus=samples", "centering.min_count=3"]
    with read_only(shared):
        r = run_cli(*asked, f"paths.artifacts={shared}", "logger=none", cwd=tmp_path, env={"ACTEXP_ARTIFACTS": str(mine)})
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        command = re.search(r"`(python -m actexp\.run job=mean [^`]*)`", r.stderr).group(1)
        assert f"paths.artifacts={mine}" in command and f"paths.artifacts={mine} too" in r.stderr, r.stderr
        # The very command, composed as the CLI composes it, makes the mean; the same run then finds it there.
        made = jobs.run("mean", compose_cfg(*shlex.split(command)[3:]), tmp_path / "m2")
        assert Path(made["mean"]).is_relative_to(mine)
        jobs.run("extract", compose_cfg(*asked, f"paths.artifacts={mine}", "logger=none"), tmp_path / "x")
    used = _json(tmp_path / "x" / "vector.json")["centering"]["mean"]
    assert used["min_count"] == 3 and used["sha256"] == made["sha256"]
