import math

import pytest
import torch

from actexp.maths.pooling import Chunk, chunk_weights, pool
from helpers import compose_cfg, reference_weights
from actexp.jobs.common import chunks as chunks_from_cfg


def test_last_weights():
    assert chunk_weights(Chunk("last"), 4).tolist() == [0.0, 0.0, 0.0, 1.0]


def test_mean_weights():
    assert chunk_weights(Chunk("mean"), 4).tolist() == [0.25] * 4


def test_exp_weights_by_hand():
    # alpha 0.5, T 3: (0.5^2, 0.5^1, 0.5^0) / 1.75
    w = chunk_weights(Chunk("exp", 0.5), 3)
    assert w.dtype == torch.float64
    assert w.tolist() == pytest.approx([0.25 / 1.75, 0.5 / 1.75, 1 / 1.75], abs=1e-15)


def test_exp_weights_long_text_sum_to_one_and_favour_the_end():
    w = chunk_weights(Chunk("exp", 0.159), 2048)
    assert math.isclose(w.sum().item(), 1.0, rel_tol=1e-12)
    assert w[-1].item() == pytest.approx(0.159, rel=1e-9)  # 1 / sum of the geometric series
    assert torch.all(w[1:] > w[:-1])


def test_one_token_gives_weight_one_for_every_kind():
    for chunk in (Chunk("last"), Chunk("mean"), Chunk("exp", 0.067)):
        assert chunk_weights(chunk, 1).tolist() == [1.0]


def test_bad_chunks_are_refused():
    with pytest.raises(ValueError, match="unknown pooling chunk kind"):
        Chunk("max")
    with pytest.raises(ValueError, match="alpha"):
        Chunk("exp")
    with pytest.raises(ValueError, match="alpha"):
        Chunk("exp", 1.5)


def test_modes_from_config_give_h_and_4h_dims():
    h = torch.randn(2, 7, 16)  # [B, T, H]
    short = chunks_from_cfg(compose_cfg("pooling=short").pooling)
    long = chunks_from_cfg(compose_cfg("pooling=long").pooling)
    assert [c.label for c in long] == ["last", "exp 0.023", "exp 0.067", "exp 0.159"]
    assert pool(h, [7, 3], short)[0].shape == (2, 16)
    assert pool(h, [7, 3], long)[0].shape == (2, 64)


def test_pool_is_weighted_sum_and_ignores_pads():
    torch.manual_seed(0)
    h = torch.randn(2, 5, 3)  # [B, T, H]
    h[1, 2:] = float("nan")  # pads of the second text: must not leak in
    chunks = [Chunk("last"), Chunk("mean"), Chunk("exp", 0.3)]
    [out] = pool(h, [5, 2], chunks)  # [B, 3*H]
    assert torch.isfinite(out).all()
    for b, n in enumerate([5, 2]):
        expected = torch.cat([reference_weights(c.kind, c.alpha, n) @ h[b, :n].double() for c in chunks]).float()
        assert torch.allclose(out[b], expected, atol=1e-6)
    assert torch.allclose(out[1, :3], h[1, 1])  # last
    assert torch.allclose(out[1, 3:6], h[1, :2].mean(0))  # mean


def test_pool_with_a_mean_pools_the_difference_in_the_same_pass():
    torch.manual_seed(1)
    h, mu = torch.randn(2, 6, 4), torch.randn(10, 4)  # [B, T, H], [P, H]
    chunks = [Chunk("last"), Chunk("exp", 0.2)]
    raw, centered = pool(h, [6, 3], chunks, (None, (mu, None)))
    [expected] = pool(h - mu[:6], [6, 3], chunks)
    assert torch.allclose(centered, expected, atol=1e-6) and torch.equal(raw, pool(h, [6, 3], chunks)[0])
    # A mean stored for 4 positions and one tail value for the rest: positions 4 and 5 take the tail.
    tail = torch.randn(4)  # [H]
    [centered] = pool(h, [6, 3], chunks, ((mu[:4], tail),))
    [expected] = pool(h - torch.cat([mu[:4], tail.expand(2, 4)]), [6, 3], chunks)
    assert torch.allclose(centered, expected, atol=1e-6)


def test_pool_leaves_a_float64_h_as_it_was_and_takes_a_float64_mean_as_is():
    torch.manual_seed(2)
    h = torch.randn(2, 6, 4, dtype=torch.float64)  # [B, T, H]
    h[1, 3:] = 1e30  # pads: pool zeroes them in its own copy
    before = h.clone()
    mu, tail = torch.randn(4, 4), torch.randn(4)  # [P, H] float32, [H]: positions 4 and 5 take the tail
    chunks = [Chunk("last"), Chunk("exp", 0.2)]
    raw, centered = pool(h, [6, 3], chunks, (None, (mu, tail)))
    assert torch.equal(h, before)
    # The float64 mean of CorpusMean.to gives the same numbers as the float32 one (the conversion is exact).
    raw64, centered64 = pool(h, [6, 3], chunks, (None, (mu.double(), tail.double())))
    assert torch.equal(raw64, raw) and torch.equal(centered64, centered)
