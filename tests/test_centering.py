"""Centred vectors, the identity raw - centred = pooled_mean(T), finding a mean, and job=compare."""

import json
import shutil

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import PreTrainedTokenizerFast

from actexp import jobs
from actexp.backends import open_backend
from actexp.backends.local import LocalBackend
from actexp.data.corpus import bundled_samples
from actexp.errors import CheckFailed, UserError
from actexp.jobs.common import chunks as chunks_from_cfg
from actexp.jobs.common import corpus_mean, model_spec
from actexp.maths.centering import MeanAccumulator
from actexp.maths.pooling import pool
from actexp.models.activations import segments, stream
from actexp.models.loading import load_model
from actexp.models.spec import BUNDLED_TOKENIZER
from actexp.store.io import write_json, write_matrix_csv
from actexp.store.means import load_mean
from helpers import (LONG, TEXTS, compose_cfg, reference_model, reference_pooled_mean, reference_stream, reference_vector,
                     rel_err, run_cli, run_clis)

MEAN = ["corpus=samples", "centering.min_count=4"]


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    """A store with two means of the samples: all layers, and layer 0 only."""
    root = tmp_path_factory.mktemp("store")
    for extra in ([], ["model.layers=[0]"]):
        cfg = compose_cfg("job=mean", f"paths.artifacts={root / 'artifacts'}", *MEAN, *extra)
        jobs.run("mean", cfg, root)
    return root / "artifacts"


@pytest.mark.parametrize("pooling", ["short", "long"])
def test_centred_vectors_satisfy_the_identity_and_match_post_hoc(artifacts, pooling):
    cfg = compose_cfg(f"pooling={pooling}", "centering=corpus_mean", f"paths.artifacts={artifacts}", *MEAN)
    mean = corpus_mean(cfg)
    assert mean.metadata["layers"] == "all"
    chunks = chunks_from_cfg(cfg.pooling)
    out = LocalBackend.from_config(cfg).vectors(TEXTS, chunks, mean)
    for i, n in enumerate(out.n_tokens):
        pooled = reference_pooled_mean(mean, chunks, n)
        assert rel_err(out.raw[i].double() - out.centered[i].double(), pooled) < 1e-5
    assert rel_err(mean.recenter(out.raw, out.n_tokens, chunks), out.centered) < 1e-5
    assert not torch.allclose(out.raw, out.centered)


def test_centred_vectors_from_first_principles(artifacts):
    """Independent of CorpusMean, pooling.weights and the hooks: mu from a per-document loop over the
    samples (with the min_count/tail_start fallback written out), closed-form weights, hook-free h_t."""
    cfg = compose_cfg("pooling=long", "centering=corpus_mean", f"paths.artifacts={artifacts}", *MEAN)
    mean = corpus_mean(cfg)  # of the samples: min_count 4, tail_start 32
    lm = load_model(model_spec(cfg))
    ref = reference_model(lm.model)
    P, H = mean.mean.shape
    sums, counts = torch.zeros(P, H, dtype=torch.float64), torch.zeros(P, dtype=torch.int64)
    for doc in bundled_samples():
        ids = lm.tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        sums[: len(ids)] += reference_stream(ref, ids).mean(0)
        counts[: len(ids)] += 1
    mu = torch.zeros(P, H, dtype=torch.float64)
    for t in range(P):
        if counts[t] >= 4:
            mu[t] = sums[t] / counts[t]
    tail = [t for t in range(32, P) if counts[t] >= 4]
    fallback = sum(sums[t] for t in tail) / sum(counts[t] for t in tail)  # [H]
    mu[counts < 4] = fallback
    assert rel_err(mean.mean, mu) < 1e-6
    # A text longer than the longest sample (P tokens) is centred with the fallback from P on.
    by_length = sorted((d.text for d in bundled_samples()), key=len)
    longer = f"{by_length[-1]} {by_length[0]}"  # the longest sample and the shortest
    n_longer = len(lm.tokenizer(longer, add_special_tokens=False)["input_ids"])
    assert P < n_longer <= lm.text.max_tokens
    texts = [*TEXTS, longer]
    out = LocalBackend.from_config(cfg).vectors(texts, chunks_from_cfg(cfg.pooling), mean)
    for i, text in enumerate(texts):
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        mu_t = torch.cat([mu, fallback.expand(max(0, len(ids) - P), H)])  # [max(T, P), H]
        assert rel_err(out.centered[i], reference_vector(ref, ids, LONG, mu=mu_t)) < 1e-5, text[:20]


def test_auto_is_the_mean_of_this_config_and_never_the_newest(artifacts, tmp_path):
    for layers, expected in (("all", "all"), ("[0]", [0])):
        cfg = compose_cfg("centering=corpus_mean", f"model.layers={layers}", f"paths.artifacts={artifacts}", *MEAN)
        assert corpus_mean(cfg).metadata["layers"] == expected
    # A newer mean of the same model made from other settings (min_count 5) does not win ...
    store = tmp_path / "store"
    for other in artifacts.glob("means/*"):
        (store / "means").mkdir(parents=True, exist_ok=True)
        (store / "means" / other.name).symlink_to(other)
    jobs.run("mean", compose_cfg("job=mean", f"paths.artifacts={store}", "corpus=samples", "centering.min_count=5"),
             tmp_path)
    newest = max(store.glob("means/*/corpus_mean.safetensors"), key=lambda p: p.stat().st_mtime)
    assert "-m5-" in newest.parent.name
    cfg = compose_cfg("centering=corpus_mean", f"paths.artifacts={store}", *MEAN)
    assert corpus_mean(cfg).metadata["min_count"] == 4 and corpus_mean(cfg).path != newest
    # ... and a file of another mean put in this config's place is refused, not used.
    mine = corpus_mean(cfg).path
    (store / "means" / mine.parent.name).unlink()
    mine_copy = store / "means" / mine.parent.name / "corpus_mean.safetensors"
    mine_copy.parent.mkdir()
    mine_copy.write_bytes(newest.read_bytes())
    with pytest.raises(UserError, match="holds the mean .*-m5-t32, not this config's"):
        corpus_mean(cfg)


def test_mismatched_or_missing_mean_is_refused(artifacts, tmp_path):
    [layer0] = artifacts.glob("means/*L0*/corpus_mean.safetensors")
    cfg = compose_cfg("centering=corpus_mean", f"centering.mean_path={layer0}")
    with pytest.raises(UserError, match=r"layers=\[0\] \(this model has layers=\"all\"\)"):
        corpus_mean(cfg)
    cfg = compose_cfg("centering=corpus_mean", "model.max_tokens=512", f"paths.artifacts={artifacts}", *MEAN)
    with pytest.raises(UserError, match="the corpus mean of this config .* is not in .* compute it with "
                                        "`python -m actexp.run job=mean"):
        corpus_mean(cfg)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a readable corpus mean"):
        load_mean(bad)


def test_the_accumulator_leaves_a_float64_h_as_it_was():
    h = torch.randn(2, 5, 3, dtype=torch.float64)  # [B, T, H]
    h[1, 2:] = 1e30  # pads: the accumulator zeroes them in its own copy
    before = h.clone()
    acc = MeanAccumulator(3)
    acc.add(h, [5, 2])
    assert torch.equal(h, before)
    assert torch.equal(acc.sum, torch.cat([h[:, :2].sum(0), h[0, 2:]])) and acc.count.tolist() == [2, 2, 1, 1, 1]


def test_a_run_converts_the_mean_to_float64_once_not_per_batch(artifacts):
    """Centring works in float64; the float32 mean [P, H] is converted once (CorpusMean.float64), and
    the device copy is kept for the run, however many batches and calls the run makes."""
    cfg = compose_cfg("pooling=long", "centering=corpus_mean", f"paths.artifacts={artifacts}", *MEAN,
                      "hardware.batch_tokens=512")  # TEXTS in 3 batches
    mean, chunks = corpus_mean(cfg), chunks_from_cfg(cfg.pooling)
    backend = LocalBackend.from_config(cfg)
    _ = backend.lm
    H = mean.mean.shape[1]
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        first = backend.vectors(TEXTS, chunks, mean)
        again = backend.vectors(TEXTS, chunks, mean)
    double = 7  # torch.float64 as the profiler records a dtype (c10::ScalarType::Double)
    to_float64 = [e.input_shapes[0] for e in prof.events() if e.name == "aten::_to_copy" and
                  e.concrete_inputs[1] == double and len(e.input_shapes[0]) == 2 and e.input_shapes[0][1] == H]
    assert to_float64 == [list(mean.mean.shape)]  # the whole mean, once
    assert torch.equal(first.centered, again.centered)
    # The same numbers as centring with the float32 mean converted batch by batch (the conversion is exact).
    lm = backend.lm
    ids, _ = lm.encode(TEXTS)
    for pack, h in stream(lm, ids, backend.batching):
        for which, x, lengths in segments(pack, h):
            _, centered = pool(x, lengths, chunks, (None, (mean.mean, mean.tail)))
            assert torch.equal(first.centered[which], centered)


def test_a_mean_of_another_dtype_is_refused(artifacts):
    [float32] = [p for p in artifacts.glob("means/*/corpus_mean.safetensors") if "-all-nobos-" in p.parent.name]
    for mean_path, expected in (("auto", "the corpus mean of this config .*-bfloat16__.* is not in"),
                                (float32, r'dtype="float32" \(this model has dtype="bfloat16"\)')):
        cfg = compose_cfg("centering=corpus_mean", "hardware.dtype=bfloat16", f"paths.artifacts={artifacts}",
                          f"centering.mean_path={mean_path}", *MEAN)
        with pytest.raises(UserError, match=expected):
            corpus_mean(cfg)


@pytest.mark.slow  # over 10 s: CI (--runslow) runs it; the default run stays under 5 minutes
def test_extract_cli_centred_records_the_mean(artifacts, tmp_path):
    ok, other_dtype, r = run_clis([
        ["centering=corpus_mean", f"paths.artifacts={artifacts}", *MEAN, "text=Hello world",
         f"hydra.run.dir={tmp_path / 'run'}"],
        ["centering=corpus_mean", f"paths.artifacts={artifacts}", *MEAN, "text=hi", "hardware.dtype=bfloat16"],
        ["centering=corpus_mean", f"paths.artifacts={tmp_path / 'empty'}", *MEAN, "model.layers=[1]", "text=hi"]],
        cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    meta = json.loads((tmp_path / "run" / "vector.json").read_text())
    assert meta["centering"]["name"] == "corpus_mean" and meta["centering"]["mean"]["docs"] == 20
    used = load_mean(meta["centering"]["mean"]["path"])
    assert meta["centering"]["mean"]["sha256"] == used.sha256 and len(used.sha256) == 64
    assert other_dtype.returncode == 2 and other_dtype.stderr.count("\n") == 1, other_dtype.stderr
    assert "-bfloat16__" in other_dtype.stderr and "compute it with `python -m actexp.run job=mean" in other_dtype.stderr
    assert r.returncode == 2
    assert (f"compute it with `python -m actexp.run job=mean paths.artifacts={tmp_path / 'empty'} corpus=samples "
            "centering.min_count=4 'model.layers=[1]'`") in r.stderr


def test_csv_records_what_was_done_to_each_variant(artifacts, tmp_path):
    cfg = compose_cfg("job=csv", "centering=corpus_mean", "csv.variants=[raw,centered]", "pooling=short",
                      f"paths.artifacts={artifacts}", *MEAN)
    jobs.run("csv", cfg, tmp_path)
    raw = json.loads((tmp_path / "vectors_short_mode_raw.json").read_text())["centering"]
    centered = json.loads((tmp_path / "vectors_short_mode_centered.json").read_text())["centering"]
    assert raw == {"name": "none", "mean": None}
    assert centered["name"] == "corpus_mean"
    assert centered["mean"]["sha256"] == load_mean(centered["mean"]["path"]).sha256


def test_the_default_store_is_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("ACTEXP_ARTIFACTS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg("job=mean", *MEAN)
    assert cfg.paths.artifacts == str(tmp_path / "cache" / "actexp")
    jobs.run("mean", cfg, tmp_path)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    mean = corpus_mean(compose_cfg("centering=corpus_mean", *MEAN))
    assert mean.path.is_relative_to(tmp_path / "cache" / "actexp" / "means")
    # A relative store counts from the working directory, and outputs record it absolute.
    jobs.run("mean", compose_cfg("job=mean", *MEAN, "paths.artifacts=rel"), tmp_path)
    assert corpus_mean(compose_cfg("centering=corpus_mean", "paths.artifacts=rel", *MEAN)).path.is_absolute()
    assert list((tmp_path / "elsewhere" / "rel" / "means").iterdir())


@pytest.mark.slow  # over 10 s: CI (--runslow) runs it; the default run stays under 5 minutes
def test_compare_on_samples_and_on_csvs(artifacts, tmp_path):
    r = run_cli("job=compare", "pooling=short", f"paths.artifacts={artifacts}", *MEAN, f"hydra.run.dir={tmp_path / 'c1'}",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("PASS")
    lines = (tmp_path / "c1" / "compare_report.csv").read_text().splitlines()
    assert lines[0] == "sample,chunk,n_tokens,pooled_mean_norm,abs_error,rel_error,cosine,stream_rel_error"
    assert len(lines) == 21 and sum(1 for line in lines[1:] if not line.endswith(",")) == 3  # 3 checked on the stream

    # The same check from CSVs of the samples, token counts from the sidecar or recomputed.
    cfg = compose_cfg("pooling=long", "centering=corpus_mean", f"paths.artifacts={artifacts}", *MEAN)
    samples = bundled_samples()
    chunks = chunks_from_cfg(cfg.pooling)
    out = LocalBackend.from_config(cfg).vectors([s.text for s in samples], chunks, corpus_mean(cfg))
    names = [s.name for s in samples]
    write_matrix_csv(tmp_path / "raw.csv", out.raw, names)
    write_json(tmp_path / "raw.json", {"samples": names, "n_tokens": out.n_tokens})
    write_matrix_csv(tmp_path / "centered.csv", out.centered, names)
    common = ["job=compare", f"paths.artifacts={artifacts}", *MEAN, f"compare.raw_csv={tmp_path / 'raw.csv'}"]

    def compare(centered_csv, *extra):
        return jobs.run("compare", compose_cfg(*common, f"compare.centered_csv={tmp_path / centered_csv}", *extra),
                        tmp_path / "c2")

    for extra in ([], ["compare.use_samples=true"]):
        assert compare("centered.csv", *extra)["passed"]

    # A centred CSV that does not fit fails the check (the CLI: one line, exit 2, report written) ...
    tampered = out.centered.clone()
    tampered[3, 5] += 0.01
    write_matrix_csv(tmp_path / "tampered.csv", tampered, names)
    r = run_cli(*common, f"compare.centered_csv={tmp_path / 'tampered.csv'}", f"hydra.run.dir={tmp_path / 'c3'}",
                cwd=tmp_path)
    assert r.returncode == 2 and "FAIL" in r.stdout and "04_tomato_garden / last" in r.stderr
    assert (tmp_path / "c3" / "compare_report.csv").exists()
    # ... a CSV of another size is refused, and so is one whose sidecar names another mean.
    write_matrix_csv(tmp_path / "small.csv", out.centered[:, :100], names)
    with pytest.raises(UserError, match="has 100 rows but pooling=long"):
        compare("small.csv")
    write_json(tmp_path / "centered.json", {"centering": {"name": "corpus_mean",
                                                          "mean": {"path": "/old/mean.safetensors", "sha256": "0" * 64}}})
    with pytest.raises(UserError, match="set centering.mean_path=/old/mean.safetensors"):
        compare("centered.csv")


def test_compare_checks_centred_vectors_against_the_stream_not_only_the_identity(artifacts, tmp_path):
    """raw - centred = W mu holds for any centred vectors made as raw - W mu; compare also pools
    h_t - mu_t from the model's stream for three samples. CSVs whose raw and centred vectors are
    both shifted by one vector keep the identity and fail that check."""
    common = ["job=compare", "pooling=short", "centering=corpus_mean", f"paths.artifacts={artifacts}", *MEAN,
              "hardware.batch_tokens=1024", f"compare.raw_csv={tmp_path / 'raw.csv'}",  # 1024: the check streams 3 texts
              f"compare.centered_csv={tmp_path / 'centered.csv'}"]
    cfg = compose_cfg(*common)
    samples = bundled_samples()
    names = [s.name for s in samples]

    def compare(shift, run_dir):
        for name, vectors in (("raw", out.raw + shift), ("centered", out.centered + shift)):
            write_matrix_csv(tmp_path / f"{name}.csv", vectors, names)
        return jobs.run("compare", cfg, run_dir, backend=backend)

    with open_backend(cfg) as backend:  # one model load
        out = backend.vectors([s.text for s in samples], chunks_from_cfg(cfg.pooling), corpus_mean(cfg))
        write_json(tmp_path / "raw.json", {"samples": names, "n_tokens": out.n_tokens})
        found = compare(0.0, tmp_path / "as-made")
        assert found["passed"] and found["stream_samples"] == 3 and found["worst_stream_rel_error"] < 1e-5
        shift = 0.01 * out.centered.norm(dim=1).mean() / out.centered.shape[1] ** 0.5  # 1 % of a centred vector
        with pytest.raises(CheckFailed, match="the centred vectors are not h_t - mu_t pooled: worst relative error"):
            compare(shift, tmp_path / "shifted")
    rows = [line.split(",") for line in (tmp_path / "shifted" / "compare_report.csv").read_text().splitlines()[1:]]
    assert max(float(r[5]) for r in rows) < 1e-4  # the identity alone passes them
    assert min(float(r[7]) for r in rows if r[7]) > 1e-3


def test_compare_counts_the_tokens_the_model_was_given(neox_dir, tmp_path):
    """A tokenizer without a BOS token: model.prepend_bos takes the config's bos_token_id, and job=compare
    (compare.use_samples, token counts recomputed) must count that BOS as the forward pass did."""
    folder = shutil.copytree(neox_dir, tmp_path / "ckpt")
    PreTrainedTokenizerFast(tokenizer_file=str(BUNDLED_TOKENIZER), eos_token="<|endoftext|>").save_pretrained(folder)
    model = ["model=hf", f"model.name_or_path={folder}", "model.prepend_bos=true", f"paths.artifacts={tmp_path / 'a'}",
             *MEAN]
    jobs.run("mean", compose_cfg("job=mean", *model), tmp_path / "m")
    cfg = compose_cfg("pooling=long", "centering=corpus_mean", *model)
    samples = bundled_samples()
    out = LocalBackend.from_config(cfg).vectors([s.text for s in samples], chunks_from_cfg(cfg.pooling), corpus_mean(cfg))
    for name, vectors in (("raw", out.raw), ("centered", out.centered)):
        write_matrix_csv(tmp_path / f"{name}.csv", vectors, [s.name for s in samples])
    cfg = compose_cfg("job=compare", "pooling=long", *model, f"compare.raw_csv={tmp_path / 'raw.csv'}",
                      f"compare.centered_csv={tmp_path / 'centered.csv'}", "compare.use_samples=true")
    assert jobs.run("compare", cfg, tmp_path / "c")["worst_rel_error"] < 1e-5
