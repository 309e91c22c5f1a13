"""The extract and similarity jobs end to end: the real CLI in a subprocess."""

import hashlib
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from actexp.config.schema import CONF
from actexp.jobs.common import model_spec
from actexp.models.loading import load_model
from helpers import (LONG, SHORT, TEXTS, compose_cfg, read_only, reference_model, reference_vector, rel_err, run_cli,
                     run_clis)


def test_extract_long_writes_a_4h_vector_matching_in_process(tmp_path):
    out = tmp_path / "run"
    r = run_cli("job=extract", "pooling=long", "text=Hello world", f"hydra.run.dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "512 dims" in r.stdout
    vector = load_file(out / "vector.safetensors")["vector"]
    assert vector.dtype == torch.float32 and vector.shape == (4 * 128,)
    with safe_open(out / "vector.safetensors", "pt") as f:
        assert json.loads(f.metadata()["actexp"])["pooling"]["name"] == "long"
    meta = json.loads((out / "vector.json").read_text())
    assert meta["model"]["model"] == "tiny" and meta["pooling"]["labels"][0] == "last"
    assert meta["centering"] == {"name": "none", "mean": None}
    assert meta["n_tokens"] == 4 and meta["truncated"] is False and meta["input"]["source"] == "text"
    assert meta["input"]["sha256"] == hashlib.sha256(b"Hello world").hexdigest()
    # The seeded tiny model, rebuilt here, and the hook-free reference give the same vector.
    lm = load_model(model_spec(compose_cfg()))
    expected = reference_vector(reference_model(lm.model), lm.tokenizer("Hello world")["input_ids"], LONG)
    assert rel_err(vector, expected) < 1e-5
    assert meta["norm"] == pytest.approx(expected.norm().item(), rel=1e-5)


def test_extract_from_file_short_and_default_output_dir(tmp_path):
    (tmp_path / "doc.txt").write_text(TEXTS[2], encoding="utf-8")
    r = run_cli("pooling=short", "file=doc.txt", "model.max_tokens=16", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    [run_dir] = (tmp_path / "experiments" / "extract").iterdir()
    meta = json.loads((run_dir / "vector.json").read_text())
    assert meta["dims"] == 128 and meta["n_tokens"] == 16 and meta["truncated"] is True
    assert meta["input"]["source"].endswith("doc.txt")
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert "truncated" in r.stderr + r.stdout + (run_dir / "run.log").read_text()


@pytest.mark.slow  # over 10 s: CI (--runslow) runs it; the default run stays under 5 minutes
def test_similarity_per_chunk(tmp_path):
    out, out2 = tmp_path / "sim", tmp_path / "sim2"
    (tmp_path / "b.txt").write_text(TEXTS[1], encoding="utf-8")
    (tmp_path / "long.txt").write_text(TEXTS[2], encoding="utf-8")
    same, other = run_clis([["job=similarity", f"text_a={TEXTS[1]}", "file_b=b.txt", f"hydra.run.dir={out}"],
                            ["job=similarity", "pooling=short", "text_a=Cats purr.", "file_b=long.txt",
                             f"hydra.run.dir={out2}"]], cwd=tmp_path)
    assert same.returncode == 0 and other.returncode == 0, same.stderr + other.stderr
    sim = json.loads((out / "similarity.json").read_text())
    assert sim["cosine"] == pytest.approx(1.0, abs=1e-6)  # the same text twice
    assert list(sim["chunks"]) == ["last", "exp 0.023", "exp 0.067", "exp 0.159"]
    sim = json.loads((out2 / "similarity.json").read_text())
    assert -1 <= sim["cosine"] < 0.9999 and list(sim["chunks"]) == ["exp 0.067"]
    assert sim["n_tokens"][0] < sim["n_tokens"][1]
    assert [i["source"] for i in sim["inputs"]] == ["text", str(tmp_path / "long.txt")]
    assert all(len(i["sha256"]) == 64 for i in sim["inputs"])
    lm = load_model(model_spec(compose_cfg()))
    ref = reference_model(lm.model)
    a, b = (reference_vector(ref, lm.tokenizer(t)["input_ids"], SHORT) for t in ("Cats purr.", TEXTS[2]))
    assert sim["cosine"] == pytest.approx((a @ b / (a.norm() * b.norm())).item(), abs=1e-6)


def _bad_inputs(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    return {
        "empty text": (["text="], "text is empty"),
        "empty file": (["file=empty.txt"], "is empty"),
        "missing file": (["file=nope.txt"], "does not exist"),
        "not utf-8": (["file=latin1.txt"], "not UTF-8"),
        "binary": (["file=blob.bin"], "not text"),
        "no input": ([], "nothing to read"),
        "both inputs": (["text=a", "file=empty.txt"], "not both"),
        "similarity missing b": (["job=similarity", "text_a=a"], "text_b"),
        "unknown pooling": (["pooling=medium", "text=a"], "pooling has no option 'medium' (options: long, short)"),
        "misspelt option": (["pooling=shortt", "text=a"], "pooling has no option 'shortt': did you mean short?"),
        "unknown model": (["model=gpt5", "text=a"], "model has no option 'gpt5'"),
        "unknown key": (["colour=red", "text=a"], "unknown key 'colour'"),
        "misspelt key": (["txt=hi"], "unknown key 'txt': did you mean text?"),
        "typo in group key": (["model.layer=3", "text=a"], "unknown key 'model.layer': did you mean model.layers?"),
        "misspelt experiment": (["+experiment=long_centred"], "did you mean long_centered?"),
        "plot without a csv": (["job=plot"], "job=plot needs plot.csv=PATH"),
        "upside-down colour scale": (["job=plot", "plot.vmin=1", "plot.vmax=0"], "plot.vmin=1 is not below plot.vmax=0"),
        "wrong type": (["hardware.batch_tokens=many", "text=a"], "batch_tokens"),
        "missing model dir": (["model=hf", "model.name_or_path=./no/such/dir", "text=a"], "does not exist"),
        "bad layers": (["model.layers=[7]", "text=a"], "out of range"),
    }


@pytest.mark.slow
def test_bad_input_gives_one_line_exit_2_and_no_output(tmp_path):
    cases = _bad_inputs(tmp_path)
    with ThreadPoolExecutor(2) as pool:  # one CLI process per core
        results = dict(zip(cases, pool.map(lambda args: run_cli(*args, cwd=tmp_path), [a for a, _ in cases.values()])))
    for name, (args, expected) in cases.items():
        r = results[name]
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (name, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (name, r.stderr)
        assert "Traceback" not in r.stderr + r.stdout
        assert not (tmp_path / "experiments").exists() or not any((tmp_path / "experiments").rglob("*")), name


@pytest.mark.slow
def test_a_sweep_refused_before_any_job_leaves_no_folder(tmp_path):
    r = run_cli("-m", "job=extract", "text=hi", "pooling=short,lng", "logger=none", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: pooling has no option 'lng'"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "multirun").exists() or not any((tmp_path / "multirun").rglob("*"))


@pytest.mark.slow
def test_results_go_to_stdout_and_run_log_and_files_get_the_umask_mode(tmp_path):
    out = tmp_path / "run"
    r = run_cli("text=Hello world", f"hydra.run.dir={out}", cwd=tmp_path, umask=0o022)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("vector: 512 dims") and lines[1:] == [f"wrote {out / 'vector.safetensors'}",
                                                                      f"wrote {out / 'vector.json'}"]
    log = (out / "run.log").read_text()
    assert all(line in log for line in lines)  # what the job printed is in run.log too
    for name in ("vector.safetensors", "vector.json", "metrics.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name
    r = run_cli("text=Hello world", f"hydra.run.dir={tmp_path / 'private'}", "logger=none", cwd=tmp_path, umask=0o077)
    assert (tmp_path / "private" / "vector.json").stat().st_mode & 0o777 == 0o600


def test_full_error_shows_the_traceback(tmp_path):
    r = run_cli("text=", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr and "text is empty" in r.stderr


@pytest.mark.slow  # over 7 s: CI (--runslow) runs it; the default run stays under 5 minutes
def test_text_with_commas_can_be_quoted(tmp_path):
    r = run_cli("text='Hello, world'", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "run" / "vector.json").read_text())["n_tokens"] > 2


def test_help_lists_groups_and_options(tmp_path):
    r = run_cli("--help", cwd=tmp_path)
    assert r.returncode == 0
    groups = [p for p in sorted(CONF.iterdir()) if p.is_dir() and p.name != "hydra"]  # hydra/: Hydra's own settings
    assert {"job", "model", "pooling", "centering", "hardware", "corpus", "logger"} <= {g.name for g in groups}
    for group in groups:
        options = sorted(p.stem for p in group.glob("*.yaml"))
        assert f"{group.name}: {', '.join(options)}" in r.stdout


def test_console_script_is_installed():
    """The `actexp` command of this environment (pip install -e puts it beside its python) runs actexp."""
    script = Path(sys.executable).parent / "actexp"
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "actexp: activation vectors of causal language models" in r.stdout


def test_a_read_only_run_folder_is_one_line_naming_the_settings_that_move_it(tmp_path):
    (tmp_path / "ro").mkdir()
    with read_only(tmp_path / "ro"):
        r = run_cli("job=extract", "text=hi", f"hydra.run.dir={tmp_path / 'ro' / 'run'}", cwd=tmp_path)
        there = run_cli("job=extract", "text=hi", f"hydra.run.dir={tmp_path / 'ro'}", cwd=tmp_path)  # the folder exists
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"error: cannot write {tmp_path / 'ro' / 'run'}: ") and "hydra.run.dir=DIR" in r.stderr
    assert there.returncode == 2 and there.stderr.count("\n") == 1, there.stderr
    assert there.stderr.startswith(f"error: cannot write {tmp_path / 'ro'}/") and "hydra.run.dir=DIR" in there.stderr


def test_a_run_that_fails_for_a_reason_no_check_foresaw_leaves_its_record(tmp_path):
    """Exit 1 (not input the code knows to be bad: here a checkpoint config whose field transformers
    refuses while building the model): the run folder is kept as the record, metrics.json says failed
    with the line printed, and run.log holds that line and the traceback that stderr leaves out."""
    folder = tmp_path / "odd-config"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "hidden_size": 64, "num_hidden_layers": 2,
                                                    "num_attention_heads": 4, "intermediate_size": "lots",
                                                    "vocab_size": 4096}))
    out = tmp_path / "run"
    r = run_cli("job=extract", "text=hi", "model=hf", f"model.name_or_path={folder}", "model.random_init=true",
                "logger=none", f"hydra.run.dir={out}", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    [line] = r.stderr.splitlines()
    assert line.startswith("error (") and "Traceback" not in r.stderr
    assert (out / "metrics.json").is_file(), sorted(p.name for p in out.iterdir())
    record = json.loads((out / "metrics.json").read_text())
    assert record["job"] == "extract" and record["status"] == "failed" and record["error"] in line
    log = (out / "run.log").read_text()
    assert line in log and "Traceback (most recent call last)" in log
