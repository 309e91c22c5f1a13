"""Bootstrap intervals and chance levels against independent computations: scipy on each explicit
resample (a plain loop), scipy.stats.bootstrap, and every ordering of a small retrieval."""

import itertools

import numpy as np
import pytest
import scipy.stats

from actexp.maths import bootstrap, correlation, retrieval
from actexp.maths.bootstrap import Bootstrap


def _scores(n, seed=0):
    """Cosine-like values and gold scores with ties, as STS gold scores have (0.2 steps)."""
    rng = np.random.default_rng(seed)
    gold = np.round(rng.uniform(0, 5, n) * 5) / 5
    return gold / 5 + rng.normal(0, 0.3, n), gold


def _loop_interval(stat, idx, level):
    values = np.array([stat(i) for i in idx])
    return tuple(np.quantile(values, [(1 - level) / 2, (1 + level) / 2]))


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_resampled_correlations_equal_scipy_on_each_explicit_resample(level):
    x, y = _scores(60)
    boot = Bootstrap(resamples=300, seed=7, level=level)
    idx = boot.draws(len(x))  # [B, N]: the resamples, unit by unit
    counts = boot.counts(len(x))
    rho = bootstrap.spearman(x, y, counts)
    r = bootstrap.pearson(x, y, counts)
    for b in range(boot.resamples):
        assert rho[b] == pytest.approx(scipy.stats.spearmanr(x[idx[b]], y[idx[b]]).statistic, abs=1e-12)
        assert r[b] == pytest.approx(scipy.stats.pearsonr(x[idx[b]], y[idx[b]]).statistic, abs=1e-12)
    expected = _loop_interval(lambda i: scipy.stats.spearmanr(x[i], y[i]).statistic, idx, level)
    assert boot.interval(rho) == pytest.approx(expected, abs=1e-12)


def test_a_paired_difference_is_the_difference_on_the_same_resamples():
    x, y = _scores(40)
    z = y / 5 + np.random.default_rng(3).normal(0, 0.6, 40)  # a worse predictor of y
    boot = Bootstrap(resamples=200, seed=1)
    idx, counts = boot.draws(40), boot.counts(40)
    diff = bootstrap.spearman(x, y, counts) - bootstrap.spearman(z, y, counts)
    expected = _loop_interval(lambda i: scipy.stats.spearmanr(x[i], y[i]).statistic
                              - scipy.stats.spearmanr(z[i], y[i]).statistic, idx, 0.95)
    assert boot.interval(diff) == pytest.approx(expected, abs=1e-12)


def test_the_interval_agrees_with_scipy_bootstrap():
    """Two Monte Carlo estimates of one percentile interval: they agree to their sampling noise."""
    x, y = _scores(400)
    ours = Bootstrap(resamples=4000, seed=0).interval(bootstrap.spearman(x, y, Bootstrap(4000, 0).counts(400)))
    theirs = scipy.stats.bootstrap((x, y), lambda a, b: scipy.stats.spearmanr(a, b).statistic, paired=True,
                                   vectorized=False, n_resamples=4000, method="percentile",
                                   random_state=np.random.default_rng(1)).confidence_interval
    width = theirs.high - theirs.low
    assert ours[0] == pytest.approx(theirs.low, abs=0.05 * width)
    assert ours[1] == pytest.approx(theirs.high, abs=0.05 * width)


def test_a_mean_over_queries_resamples_the_queries():
    values = np.random.default_rng(0).random(25)
    boot = Bootstrap(resamples=500, seed=3)
    got = boot.interval(bootstrap.mean(values, boot.counts(25)))
    assert got == pytest.approx(_loop_interval(lambda i: values[i].mean(), boot.draws(25), 0.95), abs=1e-12)


def test_the_same_seed_gives_the_same_interval_and_another_seed_another():
    x, y = _scores(50)

    def interval(seed):
        boot = Bootstrap(resamples=200, seed=seed)
        return boot.interval(bootstrap.spearman(x, y, boot.counts(50)))

    assert interval(5) == interval(5) and interval(5) != interval(6)


def test_no_interval_where_the_statistic_is_mostly_undefined():
    """Two units: about half the resamples draw one unit twice, a constant sample with no correlation."""
    boot = Bootstrap(resamples=100)
    assert boot.interval(bootstrap.spearman(np.array([0.1, 0.2]), np.array([1.0, 2.0]), boot.counts(2))) is None


def test_values_a_rounding_apart_are_no_ranking_in_any_resample():
    """As correlation.spearman: cosines that differ by an ulp (a vector with itself) are constant."""
    x = np.full(12, 0.7)
    x[::2] = np.nextafter(0.7, 1.0)  # two values one unit in the last place apart
    y = np.arange(12.0)
    assert np.isnan(correlation.spearman(x, y))
    counts = Bootstrap(resamples=50).counts(12)
    assert np.isnan(bootstrap.spearman(x, y, counts)).all() and np.isnan(bootstrap.pearson(x, y, counts)).all()


@pytest.mark.parametrize("groups, partners", [([0, 1, 2, 0, 1, 2], [3, 4, 5, 0, 1, 2]),  # one right answer each
                                              ([0, 0, 0, 1, 1, 2, 2], None)])  # groups of 3 and of 2
def test_chance_is_the_mean_over_every_ordering_of_the_candidates(groups, partners):
    rel = retrieval.relevance(groups, partners)
    n = len(groups)
    found = {"recall@1": [], "recall@5": [], "mrr": []}
    for order in itertools.permutations(range(n)):  # every ranking of the texts, the same for each query
        sim = np.tile(np.argsort(order).astype(float), (n, 1))  # text j's similarity: its place in `order`
        for metric, value in retrieval.retrieval(sim, rel).items():
            if metric in found:
                found[metric].append(value)
    chance = retrieval.chance(rel)
    for metric, values in found.items():
        assert chance[metric] == pytest.approx(np.mean(values), abs=1e-12), metric


def test_the_resamples_are_made_again_from_the_recorded_seed_alone():
    """What a record says (resamples, seed) is enough: numpy's default_rng(seed) draws B x N unit indices."""
    boot = Bootstrap(resamples=50, seed=11)
    record = boot.record("pairs")
    again = np.random.default_rng(record["seed"]).integers(0, 30, size=(record["resamples"], 30))
    assert (boot.draws(30) == again).all()
    assert (boot.counts(30) == np.stack([np.bincount(row, minlength=30) for row in again])).all()
