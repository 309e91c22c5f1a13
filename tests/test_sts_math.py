"""The pure parts of job=sts: rank correlation, the post-processing fits, the pairs loader."""

import json

import numpy as np
import pytest
import scipy.stats

from actexp import postprocess
from actexp.correlation import average_ranks, pearson, spearman
from actexp.errors import UserError
from actexp.pairs import from_file, stsb


def test_spearman_and_pearson_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 6, 300).astype(float)  # scores 0..5: many ties, as STS-B's
    x = gold + rng.normal(0, 2, 300)
    x[:40] = np.round(x[:40])  # ties in the predictions too
    assert spearman(x, gold) == pytest.approx(scipy.stats.spearmanr(x, gold).statistic, abs=1e-12)
    assert pearson(x, gold) == pytest.approx(scipy.stats.pearsonr(x, gold).statistic, abs=1e-12)
    assert np.array_equal(average_ranks([10, 20, 20, 5]), [2, 3.5, 3.5, 1])
    # Spearman is about ranks: a monotone map of x leaves it unchanged while Pearson moves.
    assert spearman(np.exp(x), gold) == pytest.approx(spearman(x, gold), abs=1e-12)
    assert abs(pearson(np.exp(x), gold) - pearson(x, gold)) > 0.05


def _fit_set(n=500, h=12, seed=1):
    rng = np.random.default_rng(seed)
    scales = np.linspace(5, 0.5, h)
    return rng.normal(3.0, 1.0, (n, h)) * scales @ np.linalg.qr(rng.normal(size=(h, h)))[0]  # [n, h], offset mean


def test_whitening_makes_the_fit_sets_covariance_the_identity_and_keeps_the_top_k():
    x = _fit_set()
    f = postprocess.fit(x)
    white = postprocess.apply("whitening", x, f)
    assert np.allclose(np.cov(white.T), np.eye(x.shape[1]), atol=1e-10)
    assert np.allclose(white.mean(0), 0, atol=1e-10)
    top3 = postprocess.apply("whitening", x, f, whitening_dims=3)
    assert top3.shape == (len(x), 3) and np.allclose(top3, white[:, :3])
    # The kept dims are the directions of largest variance: numpy's own eigendecomposition of np.cov.
    values, vectors = np.linalg.eigh(np.cov(x.T))
    for i in range(3):
        projection = (x - x.mean(0)) @ vectors[:, -1 - i] / np.sqrt(values[-1 - i])
        assert np.allclose(np.abs(top3[:, i]), np.abs(projection), atol=1e-8)


def test_abtt_removes_the_top_directions_and_global_mean_centres_the_fit_set():
    x = _fit_set()
    f = postprocess.fit(x)
    assert np.allclose(postprocess.apply("global_mean", x, f).mean(0), 0, atol=1e-10)
    out = postprocess.apply("abtt", x, f, abtt_dims=2)
    values, vectors = np.linalg.eigh(np.cov(x.T))
    assert np.allclose(out @ vectors[:, -2:], 0, atol=1e-9)  # no projection on the top 2 left
    assert not np.allclose(out @ vectors[:, -3], 0, atol=1e-3)  # the third is kept
    # A new vector is processed with the fit set's statistics, not its own.
    y = _fit_set(n=5, seed=7)
    assert np.allclose(postprocess.apply("global_mean", y, f), y - x.mean(0))


def test_each_chunk_is_processed_with_its_own_fit():
    a, b = _fit_set(seed=2), _fit_set(seed=3) * 10 + 4
    x = np.concatenate([a, b], 1)  # [n, 2H]: two chunks of very different scales
    fits = [postprocess.fit(a), postprocess.fit(b)]
    parts = postprocess.apply_per_chunk("whitening", x, fits)
    for part in parts:
        assert np.allclose(np.cov(part.T), np.eye(a.shape[1]), atol=1e-10)
    swapped = postprocess.apply_per_chunk("whitening", x, fits[::-1])
    assert not np.allclose(np.cov(swapped[0].T), np.eye(a.shape[1]), atol=0.1)


def test_stsb_test_split_is_the_published_one():
    pairs = stsb("test")
    assert len(pairs) == 1379 and len(pairs.texts()) == 2552  # 2,758 sentences, 2,552 distinct
    # The gold scores of the test split: mean 2.6079 (measured once from the wheel's file), range 0-5.
    assert pairs.scores.mean() == pytest.approx(2.607917, abs=1e-6)
    assert pairs.scores.min() == 0 and pairs.scores.max() == 5
    assert pairs.a[0] == "A girl is styling her hair." and pairs.scores[0] == 2.5
    assert [len(stsb(s)) for s in ("train", "dev")] == [5749, 1500]


def test_pair_files_load_and_bad_ones_are_one_line_naming_file_and_line(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("left\tright\tsim\nA cat.\tA dog.\t1.5\nRain.\tSnow.\t2\n")
    p = from_file(tsv, ["left", "right", "sim"])
    assert p.a == ["A cat.", "Rain."] and p.b == ["A dog.", "Snow."] and list(p.scores) == [1.5, 2.0]
    csv_file = tmp_path / "p.csv"
    csv_file.write_text('sentence1,sentence2,score\n"A cat, sitting.",A cat.,4\nA cat.,A dog.,1\n')
    p = from_file(csv_file, ["sentence1", "sentence2", "score"])
    assert p.a == ["A cat, sitting.", "A cat."] and p.texts() == ["A cat, sitting.", "A cat.", "A dog."]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [{"text_a": "x", "text_b": "y", "score": 3},
                                                        {"text_a": "y", "text_b": "z", "score": 0.5}]) + "\n")
    assert list(from_file(jsonl, []).scores) == [3.0, 0.5]
    bad = {
        "missing.tsv": ("left\tother\tsim\nA\tB\t1\n", "missing.tsv line 1: no column 'right'"),
        "score.tsv": ("left\tright\tsim\nA\tB\t1\nC\tD\thigh\n", "score.tsv line 3: the score 'high' is not a number"),
        "empty.tsv": ("", "empty.tsv is empty"),
        "header_only.tsv": ("left\tright\tsim\n", "header_only.tsv holds 0 pairs"),
        "one.tsv": ("left\tright\tsim\nA\tB\t1\n", "one.tsv holds 1 pair: a correlation needs"),
        "constant.tsv": ("left\tright\tsim\nA\tB\t3\nC\tD\t3\n", "every pair has the score 3: a correlation needs"),
        "blank.tsv": ("left\tright\tsim\nA\t \t1\n", "blank.tsv line 2: text b is empty"),
        "bad.jsonl": ('{"text_a": "x", "text_b": "y", "score": 1}\n{"text_a": "x", "score": 1}\n',
                      "bad.jsonl line 2: no 'text_b'"),
    }
    with pytest.raises(UserError, match=r"sts.columns=\['left', 'right'\]: give three header names"):
        from_file(tsv, ["left", "right"])
    for name, (content, message) in bad.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(UserError, match=message):
            from_file(tmp_path / name, ["left", "right", "sim"])
