"""The pure parts of job=sts: rank correlation, the post-processing fits and their files, the pairs loader."""

import json

import numpy as np
import pytest
import scipy.stats
import torch

from actexp.data.pairs import from_file, stsb
from actexp.errors import UserError
from actexp.maths import postprocess
from actexp.maths.correlation import average_ranks, pearson, spearman
from actexp.store import fits as fit_store
from actexp.store.layout import digest
from actexp.store.tensors import _tensors_sha256, write_checked


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


def test_a_list_constant_within_rounding_has_no_correlation():
    gold = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert np.mean([0.7] * 7) != 0.7  # the float mean is 1e-16 off: what made Pearson 0.0 instead of undefined
    rng = np.random.default_rng(0)
    v = rng.normal(size=(7, 300))
    self_cosines = (v * v).sum(1) / np.linalg.norm(v, axis=1) ** 2  # 1 within a few ulps, not exactly
    assert len(set(self_cosines)) > 1
    for constant in ([0.7] * 7, self_cosines, [0.0] * 7):
        assert np.isnan(pearson(constant, gold)) and np.isnan(pearson(gold, constant))
        assert np.isnan(spearman(constant, gold)) and np.isnan(spearman(gold, constant))
    barely = [0.7 + 1e-12 * i for i in range(7)]  # differences far above rounding are data
    assert pearson(barely, gold) == pytest.approx(1.0) and spearman(barely, gold) == pytest.approx(1.0)


def test_a_fit_keeps_the_directions_its_texts_span_and_refuses_more():
    x = _fit_set(n=6, h=12)  # 6 texts span 5 of 12 dims
    f = postprocess.fit(x)
    assert f.eigvecs.shape == (12, 5) and f.eigvals.shape == (5,)
    values, vectors = np.linalg.eigh(np.cov(x.T))
    white = postprocess.apply("whitening", x, f, whitening_dims=5)
    reference = (x - x.mean(0)) @ vectors[:, ::-1][:, :5] / np.sqrt(values[::-1][:5])
    assert np.allclose(np.abs(white), np.abs(reference), atol=1e-8)
    assert np.allclose(postprocess.apply("abtt", x, f, abtt_dims=5), 0, atol=1e-9)  # all 5 spanned removed
    with pytest.raises(ValueError, match="whitening keeps 12 dims, but the fit set's 6 texts span 5"):
        postprocess.apply("whitening", x, f)
    with pytest.raises(ValueError, match="ABTT of 6 directions, but the fit set's 6 texts span 5"):
        postprocess.apply("abtt", x, f, abtt_dims=6)
    assert np.array_equal(x, _fit_set(n=6, h=12))  # the caller's vectors are left as they were


def test_checksums_are_those_every_stored_file_already_has():
    """The value of artifacts' tensor checksum, computed once before hashing stopped copying each
    tensor's bytes: means and fits written before keep matching their headers."""
    tensors = {"mean": torch.arange(6, dtype=torch.float64).reshape(2, 3) / 7, "count": torch.tensor([3, 1]),
               "half": torch.arange(4, dtype=torch.float32)[::2]}
    assert _tensors_sha256(tensors) == "529aad56a124c6fcefab92d947d63d8c119ed7754b5cdd4614e16875f89d2b2c"


def test_a_fit_file_of_the_unversioned_format_is_refused_in_one_line(tmp_path):
    """Format 1 kept all H eigenvectors; its files are never looked up (the format is in the identity's
    hash), and one put into a format-2 folder is refused, not read as if it were of format 2."""
    identity = {"model": {"model": "m", "revision": None, "random_init": True, "seed": 0, "layers": "all",
                          "prepend_bos": False, "max_tokens": 8, "dtype": "float32"},
                "pooling": [{"kind": "last"}], "fit_set": {"name": "s", "texts": 6}, "base": "raw", "mean_sha256": None}
    x = _fit_set(n=6, h=12)
    made, path, _ = fit_store.load_or_fit(tmp_path, identity, lambda: x, 1)
    assert path.parent.name.endswith(digest(fit_store.stored_identity(identity)))
    assert not path.parent.name.endswith(digest(identity))  # where format 1 kept the same fit
    old = np.linalg.eigh(np.cov(x.T))
    write_checked(path, {"mean0": torch.from_numpy(x.mean(0)), "eigvals0": torch.from_numpy(old[0][::-1].copy()),
                         "eigvecs0": torch.from_numpy(old[1][:, ::-1].copy())}, identity | {"count": 6})
    with pytest.raises(UserError, match=r"holds another fit than this folder's: it has format=null \(this run asks "
                                        r"for 2\); remove .* and run again"):
        fit_store.load_or_fit(tmp_path, identity, lambda: x, 1)


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
