"""The Python API: the same numbers as the CLI bit for bit, the CLI's one-line errors as exceptions,
one model load per session, and the example notebook (its code cells run here, in order)."""

import json
import re
import numpy as np
import pytest
from safetensors.numpy import load_file

import actexp
from actexp.backends import local
from actexp.store.io import read_vectors_csv
from helpers import REPO, TEXTS, run_cli, run_clis

NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


def code_cells():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def test_every_import_the_docs_show_works():
    """The README, docs/ and the notebook name modules by their paths: each `import actexp...` and
    `from actexp... import ...` they show imports (a module moved without its docs fails here)."""
    texts = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    shown = {line.strip() for path in texts for line in path.read_text().splitlines()}
    shown |= {line.strip() for cell in code_cells() for line in cell.splitlines()}
    imports = sorted(line.split("#")[0].strip() for line in shown if re.match(r"(from actexp[\w.]* import \w|import actexp\b)", line))
    assert len(imports) >= 3
    failed = []
    for line in imports:
        try:
            exec(line, {})
        except ImportError as e:
            failed.append(f"{line}: {e}")
    assert not failed, failed


@pytest.mark.slow  # over 10 s: CI (--runslow) runs it; the default run stays under 5 minutes
def test_vectors_equal_the_clis_vector_and_csv_columns_bit_for_bit(tmp_path):
    art = f"paths.artifacts={tmp_path / 'art'}"
    with actexp.Session("pooling=short", "centering=corpus_mean", "corpus.max_docs=64", art) as s:
        s.corpus_mean(compute=True)
        one = s.vectors(TEXTS[1])
        samples = s.vectors(actexp.samples().texts)
    r = run_cli("job=extract", f"text={TEXTS[1]}", "pooling=short", "centering=corpus_mean", "corpus.max_docs=64", art,
                "logger=none", f"hydra.run.dir={tmp_path / 'extract'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    vector = load_file(tmp_path / "extract" / "vector.safetensors")["vector"]  # [H], centred
    assert vector.tobytes() == one.centered[0].tobytes()
    r = run_cli("job=csv", "pooling=short", "centering=corpus_mean", "corpus.max_docs=64", "csv.variants=[raw,centered]",
                art, "logger=none", f"hydra.run.dir={tmp_path / 'csv'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for variant in ("raw", "centered"):
        x, names, sidecar = read_vectors_csv(tmp_path / "csv" / f"vectors_short_mode_{variant}.csv")
        assert names == actexp.samples().names
        assert x.tobytes() == getattr(samples, variant).tobytes(), variant
    assert sidecar["n_tokens"] == samples.n_tokens and samples.chunks == ["exp 0.067"]
    assert samples.chunk(0, "centered").shape == (20, 128)


BAD = [("pooling=shortt",), ("hardware.batch_tokens=many",)]  # an option and a type; test_cli.py has the rest


def test_a_bad_override_raises_the_clis_one_line(tmp_path):
    results = run_clis([("job=extract", "text=a", *args) for args in BAD], cwd=tmp_path)
    for args, r in zip(BAD, results):
        with pytest.raises(actexp.UserError) as raised:
            actexp.Session("job=extract", "text=a", *args)
        assert r.returncode == 2 and r.stderr.strip() == f"error: {raised.value}", args


def test_a_session_loads_the_model_once_for_many_calls_and_releases_it(tmp_path, monkeypatch):
    loads = []
    real = local.load_model
    monkeypatch.setattr(local, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k))
    s = actexp.Session("logger=none", "analyze.log_vectors=false", "bootstrap.seed=3")
    assert loads == []  # nothing loads until a call needs the model
    a = s.vectors(TEXTS)
    sim = s.similarity(TEXTS[0], TEXTS[1])
    texts = actexp.samples()
    result = s.analyze(texts.texts, texts.groups, texts.partners)
    metrics = s.run("analyze", out_dir=tmp_path / "analyze")
    assert len(loads) == 1
    assert metrics["eval/recall@1/raw/all"] == result.metrics()["eval/recall@1/raw/all"]
    # The session's bootstrap (seed 3), not the default's (seed 0): the same intervals as the CLI job's.
    assert metrics["eval/mrr/raw/all/low"] == result.metrics()["eval/mrr/raw/all/low"]
    default = actexp.analyze(s.vectors(texts.texts), groups=texts.groups, partners=texts.partners).metrics()
    assert default["eval/mrr/raw/all"] == result.metrics()["eval/mrr/raw/all"]
    assert (default["eval/mrr/raw/all/low"], default["eval/mrr/raw/all/high"]) != (
        metrics["eval/mrr/raw/all/low"], metrics["eval/mrr/raw/all/high"])
    u = a.raw[:2] / np.linalg.norm(a.raw[:2], axis=1, keepdims=True)
    assert sim.cosine == pytest.approx(float(u[0] @ u[1]), abs=1e-6) and sim.variant == "raw"
    assert isinstance(a.raw, np.ndarray) and a.raw.dtype == np.float32 and a.centered is None
    with pytest.raises(actexp.UserError, match="another Session"):
        s.run("extract", "model=pythia-70m")
    s.close()
    assert s._backend._backend is None  # the model is released


def test_the_example_notebook_runs_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for source in code_cells():
        exec(compile(source, str(NOTEBOOK), "exec"), namespace)
    assert namespace["v"].centered.shape == (1, 512) and (tmp_path / "analysis-run" / "analysis.json").is_file()
    assert namespace["mean"].metadata["docs"] == 64  # the cell's mean is the one it asked for
    assert not (tmp_path / "experiments" / "store").exists()  # store(compute=True) leaves no empty run folder


def test_the_readme_example_is_the_notebooks_first_cells():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## From Python"):]
    [block] = re.findall(r"```python\n(.*?)```", section[:section.index("\n## ", 5)], re.S)
    assert block.strip() == "\n\n".join(code_cells()[:2]).strip()


def test_no_texts_is_one_clear_error_and_unlabelled_arrays_are_analysed_once():
    with pytest.raises(actexp.UserError, match="at least one text"):
        with actexp.Session() as s:
            s.vectors([])
    rng = np.random.default_rng(0)
    result = actexp.analyze({"raw": rng.normal(size=(6, 8))}, groups=[0, 0, 1, 1, 2, 2])
    keys = [(r["metric"], r["variant"], r["chunk"]) for r in result.records]
    assert len(keys) == len(set(keys)) and {k[2] for k in keys} == {"all"}
