"""The analysis metrics against values computed by hand, on small vectors whose answer is known."""

import numpy as np
import pytest

from actexp.data import labelled
from actexp.maths import geometry, retrieval
from actexp.maths.analysis import analyze
from actexp.maths.neighbors import top_k


def test_identical_partners_are_always_found_first():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(5, 16))
    x = np.concatenate([base, base * 3.0])  # text i and i + 5 point the same way
    partners = [i + 5 for i in range(5)] + list(range(5))
    found = retrieval.retrieval(retrieval.cosine_matrix(x), retrieval.relevance(list(range(5)) * 2, partners))
    assert found == {"recall@1": 1.0, "recall@5": 1.0, "mrr": 1.0, "queries": 10}


def test_ranks_recall_and_mrr_of_a_hand_made_similarity_matrix():
    sim = np.array([[1.0, 0.2, 0.9, 0.1],   # partner 1 ranks 2nd (after 2)
                    [0.2, 1.0, 0.3, 0.4],   # partner 0 ranks 3rd
                    [0.9, 0.3, 1.0, 0.5],   # partner 3 ranks 2nd (after 0)
                    [0.1, 0.4, 0.5, 1.0]])  # partner 2 ranks 1st
    rel = retrieval.relevance(["a", "a", "b", "b"], [1, 0, 3, 2])
    assert list(retrieval.ranks(sim, rel)) == [2, 3, 2, 1]
    found = retrieval.retrieval(sim, rel, ks=(1, 2))
    assert found["recall@1"] == 0.25 and found["recall@2"] == 0.75
    assert found["mrr"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2 + 1) / 4)
    m = retrieval.margin(sim, ["a", "a", "b", "b"])
    assert m["same_group"] == pytest.approx((0.2 + 0.5) / 2)
    assert m["different_group"] == pytest.approx((0.9 + 0.1 + 0.3 + 0.4) / 4)


def test_a_tie_counts_against_the_right_answer():
    sim = np.full((3, 3), 0.5)
    rel = retrieval.relevance(["a", "a", "b"], [1, 0, None])
    assert list(retrieval.ranks(sim, rel)) == [2, 2]  # the third text has no partner: not a query


def test_groups_without_partners_accept_any_other_member():
    sim = np.array([[1.0, 0.1, 0.8, 0.9],
                    [0.1, 1.0, 0.2, 0.3],
                    [0.8, 0.2, 1.0, 0.0],
                    [0.9, 0.3, 0.0, 1.0]])
    rel = retrieval.relevance(["a", "b", "a", "a"])
    assert list(retrieval.ranks(sim, rel)) == [1, 1, 1]  # text 1 is alone in its group


def test_a_shared_offset_makes_vectors_anisotropic_and_removing_it_does_not():
    n, offset = 4, 3.0
    e = np.eye(8)
    x = offset * e[0] + e[1:n + 1]  # [4, 8]: |x|^2 = 10, x_i . x_j = 9
    pairs = geometry.pair_mask(n)
    raw = geometry.anisotropy(x, pairs)
    assert raw["anisotropy"] == pytest.approx(0.9) and raw["rogue_dims"][0] == 0
    assert raw["rogue_share"] == pytest.approx(1.0)  # every bit of it sits in dim 0
    centred = geometry.anisotropy(x - offset * e[0], pairs)
    assert centred["anisotropy"] == pytest.approx(0.0) and centred["rogue_share"] == 0.0


def test_cosine_contributions_sum_to_the_mean_cosine_of_the_pairs():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 12)) + 0.5
    groups = ["a", "a", "b", "b", "b", "c", "c"]
    pairs = geometry.pair_mask(7, groups)
    cos = [x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j])
           for i in range(7) for j in range(7) if groups[i] != groups[j]]
    cc = geometry.cosine_contributions(x, pairs)
    assert cc.sum() == pytest.approx(np.mean(cos))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)  # one dimension by hand
    assert cc[3] == pytest.approx(np.mean([u[a, 3] * u[b, 3] for a in range(7) for b in range(7)
                                           if groups[a] != groups[b]]))


def test_principal_components_of_a_line_and_of_a_simplex():
    line = np.outer(np.arange(5.0), [1.0, 2.0, 2.0]) + 7.0
    pcs = geometry.principal_components(line)
    assert pcs["pc1_share"] == pytest.approx(1.0) and pcs["pcs_for_90"] == 1
    assert np.allclose(np.abs(pcs["coords"][:, 0]), 3.0 * np.abs(np.arange(5.0) - 2.0))  # |direction| = 3
    simplex = geometry.principal_components(np.eye(4))  # mean removed: 3 equal components
    assert simplex["pc1_share"] == pytest.approx(1 / 3) and simplex["pcs_for_90"] == 3


def test_analyze_scores_each_chunk_on_its_own_dims():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(6, 4))
    partners = [3, 4, 5, 0, 1, 2]
    chunk0 = np.concatenate([base[:3], base[:3]])  # partners identical here
    chunk1 = rng.normal(size=(6, 4)) * 10.0  # noise that dominates the concatenation
    result = analyze({"raw": np.concatenate([chunk0, chunk1], 1)}, ["last", "exp 0.5"],
                     groups=["a", "b", "c", "a", "b", "c"], partners=partners)
    assert result.value("recall@1", "raw", "last") == 1.0
    assert result.value("mrr", "raw", "exp0.5") < 1.0 and result.value("recall@1", "raw", "all") < 1.0
    metrics = result.metrics()
    assert metrics["eval/recall@1/raw/last"] == 1.0 and "geometry/anisotropy/raw/exp0.5" in metrics
    assert all(r["texts"] == 6 for r in result.records)


def test_analyze_with_groups_averages_anisotropy_over_texts_of_different_groups_only():
    """Two tight topics far apart: across topics the cosine is about 0, over all pairs about 1/3."""
    rng = np.random.default_rng(3)
    topics = np.eye(6)[:2] * 10.0  # two orthogonal topic directions
    x = np.repeat(topics, 3, axis=0) + rng.normal(size=(6, 6)) * 0.1  # [6, 6]: texts 0-2 topic a, 3-5 topic b
    groups = ["a"] * 3 + ["b"] * 3
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    across = np.mean([u[i] @ u[j] for i in range(6) for j in range(6) if groups[i] != groups[j]])
    every = np.mean([u[i] @ u[j] for i in range(6) for j in range(6) if i != j])
    assert abs(across) < 0.1 and every > 0.3  # the two answers differ
    for chunk in ("all", "last"):
        record = next(r for r in analyze({"raw": x}, ["last"], groups=groups).records
                      if (r["metric"], r["chunk"]) == ("anisotropy", chunk))
        assert record["value"] == pytest.approx(across, abs=1e-12) and record["pairs"] == 9
    ungrouped = analyze({"raw": x}, ["last"]).value("anisotropy", "raw")
    assert ungrouped == pytest.approx(every, abs=1e-12)


def test_exact_top_k_equals_a_full_sort_whatever_the_block_size():
    rng = np.random.default_rng(3)
    # Many exact ties (copies scaled by powers of 2): the lower row must come first, as in a stable sort.
    rows = (rng.normal(size=(6, 9))[rng.integers(0, 6, 103)] * 2.0 ** rng.integers(-3, 4, (103, 1))).astype(np.float32)
    rows[50] = rows[7] * 2.0
    queries = rng.normal(size=(4, 9))
    queries[0] = rows[7]
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    full = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T  # [4, 103]
    for block in (1, 3, 10, 103, 1000):  # blocks smaller than k too
        found, cos = top_k(queries, lambda a, b: rows[a:b], len(rows), 5, block_rows=block)
        for q in range(4):
            assert list(found[q]) == list(np.argsort(-full[q], kind="stable")[:5]), block
        assert np.allclose(cos, np.sort(full, 1)[:, ::-1][:, :5], atol=1e-6)
        assert found[0][0] == min(np.flatnonzero(np.all(unit == unit[7], 1)))


def test_the_samples_are_ten_partner_pairs_in_five_topics():
    s = labelled.samples()
    assert len(s.names) == 20 and len(set(s.groups)) == 5
    for i, j in enumerate(s.partners):
        assert s.partners[j] == i and s.groups[i] == s.groups[j] and int(s.names[i][:2]) % 10 == int(s.names[j][:2]) % 10


def test_a_vector_that_is_not_finite_is_never_a_hit():
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    rel = retrieval.relevance(["a", "a", "b", "b"], [1, 0, 3, 2])
    assert list(retrieval.ranks(retrieval.cosine_matrix(x), rel)) == [1, 1, 1, 1]
    x[1] = np.nan  # text 1's vector overflowed: its query and its being found both rank last
    assert list(retrieval.ranks(retrieval.cosine_matrix(x), rel)) == [3, 3, 1, 1]
    assert retrieval.retrieval(retrieval.cosine_matrix(x), rel)["recall@1"] == 0.5
    rows = x.astype(np.float32)
    found, cos = top_k(np.array([[1.0, 0.05]]), lambda a, b: rows[a:b], 4, 4, block_rows=2)
    assert list(found[0]) == [0, 3, 2, 1] and cos[0][-1] == -np.inf  # the NaN row last, whatever the block
    found, cos = top_k(x[1:2], lambda a, b: rows[a:b], 4, 2)  # a NaN query finds nothing better than -inf
    assert np.all(cos == -np.inf)
