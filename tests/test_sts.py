"""job=sts end to end: the correlations of each variant checked against scipy on vectors computed
apart from the job, a file of pairs, fits stored and reused, W&B read back, and bad input."""

import json

import numpy as np
import pytest
import scipy.stats

from actexp import jobs
from actexp.backends.local import LocalBackend
from actexp.corpus import bundled_samples
from actexp.errors import UserError
from actexp.jobs.common import chunks as chunks_from_cfg
from helpers import compose_cfg, run_cli
from test_analyze import MEAN, summary_values

PAIRS = [("A cat sits on the mat.", "A cat is sitting on a mat.", 4.8),
         ("A man plays the guitar.", "A man is playing a guitar.", 4.6),
         ("A cat sits on the mat.", "The stock market fell sharply.", 0.0),
         ("Children play in the park.", "Kids are playing outside.", 3.9),
         ("The stock market fell sharply.", "Shares dropped today.", 3.5),
         ("A man plays the guitar.", "Children play in the park.", 0.4),
         ("It is raining heavily.", "Heavy rain is falling.", 4.9),
         ("It is raining heavily.", "A cat is sitting on a mat.", 0.2)]


def _pairs_file(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("left\tright\tgold\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in PAIRS))
    return path


def _cosine(x, y):
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


def test_each_variant_on_a_pairs_file_equals_scipy_on_vectors_made_apart(tmp_path):
    """Fit set: the 20 bundled samples (corpus=samples); variants raw and abtt, per chunk and all."""
    overrides = ["job=sts", f"sts.pairs={_pairs_file(tmp_path)}", "sts.columns=[left,right,gold]", "sts.fit=corpus",
                 "corpus=samples", "sts.variants=[raw,abtt]", "sts.abtt_dims=2", f"paths.artifacts={tmp_path}"]
    metrics = jobs.run("sts", compose_cfg(*overrides), tmp_path / "run")
    made = json.loads((tmp_path / "run" / "sts.json").read_text())
    assert made["pairs"]["n_pairs"] == len(PAIRS) and made["pairs"]["split"] == "file"
    got = {(r["metric"], r["variant"], r["chunk"]): r["value"] for r in made["records"]}
    # The reference: vectors of each text computed one at a time, the fit from numpy's own covariance.
    cfg = compose_cfg(*overrides)
    backend, chunks = LocalBackend.from_config(cfg), chunks_from_cfg(cfg.pooling)
    one = {t: backend.vectors([t], chunks).raw[0].double().numpy() for t in {p[0] for p in PAIRS} | {p[1] for p in PAIRS}}
    fit_x = np.stack([backend.vectors([d.text], chunks).raw[0].double().numpy() for d in bundled_samples()])
    h, gold = backend.lm.hidden_size, [s for _, _, s in PAIRS]
    for c, label in enumerate(["last", "exp0.023", "exp0.067", "exp0.159"]):
        part = slice(c * h, (c + 1) * h)
        raw = [_cosine(one[a][part], one[b][part]) for a, b, _ in PAIRS]
        assert got[("spearman", "raw", label)] == pytest.approx(scipy.stats.spearmanr(raw, gold).statistic, abs=1e-6)
        assert got[("pearson", "raw", label)] == pytest.approx(scipy.stats.pearsonr(raw, gold).statistic, abs=1e-6)
        values, vectors = np.linalg.eigh(np.cov(fit_x[:, part].T))
        top = vectors[:, -2:]  # the two largest directions of this chunk's fit

        def abtt(v):
            v = v - fit_x[:, part].mean(0)
            return v - top @ (top.T @ v)

        cos = [_cosine(abtt(one[a][part]), abtt(one[b][part])) for a, b, _ in PAIRS]
        assert got[("spearman", "abtt", label)] == pytest.approx(scipy.stats.spearmanr(cos, gold).statistic, abs=1e-6)
    assert metrics["spearman/raw/all"] == got[("spearman", "raw", "all")]
    assert made["fits"]["raw"]["fit_set"]["name"] == "corpus-samples" and made["fits"]["raw"]["fit_set"]["texts"] == 20
    assert (tmp_path / "run" / "sts_scatter.png").stat().st_size > 10_000


def test_fits_are_stored_reused_and_whitening_on_too_few_texts_is_one_line(tmp_path, caplog):
    base = ["job=sts", f"sts.pairs={_pairs_file(tmp_path)}", "sts.columns=[left,right,gold]", "sts.fit=corpus",
            "corpus=samples", f"paths.artifacts={tmp_path}"]
    jobs.run("sts", compose_cfg(*base, "sts.variants=[global_mean]"), tmp_path / "a")
    [fit_file] = (tmp_path / "fits").glob("*/fit.safetensors")
    before = fit_file.stat().st_mtime_ns
    with caplog.at_level("INFO"):
        jobs.run("sts", compose_cfg(*base, "sts.variants=[abtt]"), tmp_path / "b")
    assert "reusing the raw fit on corpus-samples (20 texts)" in caplog.text and fit_file.stat().st_mtime_ns == before
    recorded = json.loads((tmp_path / "b" / "sts.json").read_text())["fits"]["raw"]
    assert recorded["path"] == str(fit_file)
    # Another layer choice is another model identity: its own fit, never this one.
    jobs.run("sts", compose_cfg(*base, "sts.variants=[abtt]", "model.layers=[0]"), tmp_path / "f")
    assert len(list((tmp_path / "fits").glob("*/fit.safetensors"))) == 2
    # 20 texts span at most 19 dims: whitening all 128 (or 32) is refused before any forward pass, 16 runs.
    for k in ("null", "32"):
        with pytest.raises(UserError, match=f"whitening keeps {128 if k == 'null' else 32} dims but the fit set's "
                                            "20 texts span at most 19"):
            jobs.run("sts", compose_cfg(*base, "sts.variants=[whitening]", f"sts.whitening_dims={k}"), tmp_path / "c")
    assert not (tmp_path / "c").exists()
    jobs.run("sts", compose_cfg(*base, "sts.variants=[whitening]", "sts.whitening_dims=16"), tmp_path / "e")
    white = json.loads((tmp_path / "e" / "sts.json").read_text())["records"]
    assert {r["variant"] for r in white} == {"whitening"} and all(np.isfinite(r["value"]) for r in white)
    with pytest.raises(UserError, match="sts.abtt_dims=128 would remove every direction .* 20 texts span \\(at most 19\\)"):
        jobs.run("sts", compose_cfg(*base, "sts.variants=[abtt]", "sts.abtt_dims=128"), tmp_path / "g")


def test_bad_sts_settings_are_one_line(tmp_path):
    cases = [("sts.variants=[whitned]", "unknown variant 'whitned' \\(did you mean whitening\\?\\)"),
             ("sts.split=validation", "sts.split=validation: use one of train, dev, test"),
             (f"sts.pairs={tmp_path}/absent.tsv", "absent.tsv is not a file"),
             ("sts.fit=test", "sts.fit=test: use stsb .* or corpus"),
             ("sts.abtt_dims=0", "sts.abtt_dims=0 is out of range")]
    for override, message in cases:
        with pytest.raises(UserError, match=message):
            jobs.run("sts", compose_cfg("job=sts", override, f"paths.artifacts={tmp_path}"), tmp_path / "run")
    r = run_cli("job=sts", f"sts.pairs={tmp_path}/absent.tsv", "logger=none", f"paths.artifacts={tmp_path}", cwd=tmp_path)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: sts.pairs="), r.stderr


@pytest.mark.slow
def test_stsb_with_every_variant_from_the_cli_logs_to_wandb(tmp_path):
    args = ["job=sts", MEAN, f"paths.artifacts={tmp_path / 'art'}"]
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Spearman x 100 of cosine vs gold score, 1379 pairs (stsb test)" in r.stdout
    [run_dir] = (tmp_path / "experiments" / "sts").iterdir()
    made = json.loads((run_dir / "sts.json").read_text())
    variants = {r["variant"] for r in made["records"]}
    assert variants == {"raw", "centered", "global_mean", "abtt", "whitening", "centered+global_mean",
                        "centered+abtt", "centered+whitening"}
    assert len(made["records"]) == 8 * 5 * 2 and made["pairs"]["n_pairs"] == 1379
    assert made["centering"]["mean"]["docs"] == 64 and made["fits"]["centered"]["fit_set"]["name"] == "stsb-train"
    [offline] = (run_dir / "wandb").glob("offline-run-*")
    values = summary_values(offline)
    spearman = {(r["variant"], r["chunk"]): r["value"] for r in made["records"] if r["metric"] == "spearman"}
    assert values["sts/spearman/centered+whitening/all"] == spearman[("centered+whitening", "all")]
    # Whitening fitted on STS-B's own sentences beats raw cosines here (tiny: 54.5 vs 39.0 measured).
    assert spearman[("whitening", "all")] > spearman[("raw", "all")] + 0.05
