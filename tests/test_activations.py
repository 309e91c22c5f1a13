import logging

import pytest
import torch

from actexp.backends.local import LocalBackend
from actexp.jobs.common import chunks as chunks_from_cfg
from actexp.jobs.common import model_spec
from actexp.models.activations import Batching, LayerMean, packed_packs, segments, stream, token_budget_batches
from actexp.models.loading import load_model
from helpers import LONG, TEXTS, compose_cfg, reference_model, reference_stream, reference_vector, rel_err


def test_token_budget_batches_cover_every_text_once_within_budget_and_padding():
    lengths = [5, 300, 1, 40, 40, 7, 1200, 2, 38, 290, 37]
    batches = token_budget_batches(lengths, 256, max_padding=0.1)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        widths = [lengths[i] for i in b]
        assert widths == sorted(widths, reverse=True)  # longest first: it sets the padded width
        assert len(b) == 1 or len(b) * widths[0] <= 256
        assert all(widths[0] - w <= 0.1 * w for w in widths)
    assert [6] in batches and [1] in batches  # texts over the budget go alone
    assert [3, 4, 8, 10] in batches  # 40, 40, 38, 37: similar lengths share a batch
    # Without the padding bound, the budget alone decides.
    assert token_budget_batches(lengths, 256, max_padding=1000)[-2:] == [[3, 4, 8, 10, 5, 0], [7, 2]]


def _lm(*overrides):
    return load_model(model_spec(compose_cfg(*overrides)))


def test_hook_stream_equals_the_hook_free_reference_for_every_block():
    lm = _lm()
    ids = lm.encode([TEXTS[2]])[0][0]
    per_block = reference_stream(reference_model(lm.model), ids)  # [L, T, H]
    for layer in range(len(lm.blocks)):
        h = LayerMean(lm.blocks, [layer])(lm.body, torch.tensor([ids]))[0]  # [T, H]
        assert torch.equal(h.double(), per_block[layer]), layer
    # The last block's raw output is not what output_hidden_states gives: that is after the final norm.
    with torch.no_grad():
        final = lm.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
    assert not torch.allclose(h, final, atol=1e-3)
    mean = LayerMean(lm.blocks, range(len(lm.blocks)))(lm.body, torch.tensor([ids]))[0]
    assert rel_err(mean, per_block.mean(0)) < 1e-6


def test_layer_subset_stops_early_and_matches_reference():
    lm = _lm("model.layers=[0,-3]")
    assert lm.layer_ids == [0, 1]
    ids = lm.encode([TEXTS[1]])[0][0]
    calls = []
    handle = lm.blocks[-1].register_forward_hook(lambda *a: calls.append(1))
    h = LayerMean(lm.blocks, lm.layer_ids)(lm.body, torch.tensor([ids]))[0]
    handle.remove()
    assert calls == []  # blocks after the deepest selected one never ran
    assert rel_err(h, reference_stream(reference_model(lm.model), ids)[[0, 1]].mean(0)) < 1e-6


# How far a text's vector moves with the batch it shares (relative error; README, "How a vector is
# computed"). Worst measured on this CPU: float32 3.7e-7 (tiny), 6.9e-7 (pythia-70m shape);
# bfloat16 2.2e-3 (tiny), 4.1e-3 (pythia-70m shape): bf16 matmul kernels block by batch shape.
BATCH_TOLERANCE = {"float32": 2e-6, "bfloat16": 1e-2}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_batched_equals_one_text_at_a_time_within_the_dtype_tolerance(dtype):
    cfg = compose_cfg("pooling=long", f"hardware.dtype={dtype}", "hardware.batch_tokens=2048", "hardware.pack_width=256")
    backend = LocalBackend.from_config(cfg)
    chunks = chunks_from_cfg(cfg.pooling)
    batched = backend.vectors(TEXTS, chunks)
    [pack] = backend.batching.packs(batched.n_tokens)  # all in one pack, several texts to a row
    assert len(set(pack.rows)) < len(TEXTS)
    for i, text in enumerate(TEXTS):
        assert rel_err(batched.raw[i], backend.vectors([text], chunks).raw[0]) < BATCH_TOLERANCE[dtype]


def test_vectors_match_the_reference():
    cfg = compose_cfg("pooling=long")
    backend = LocalBackend.from_config(cfg)
    out = backend.vectors(TEXTS, chunks_from_cfg(cfg.pooling))
    ref = reference_model(backend.lm.model)
    for i, text in enumerate(TEXTS):
        ids = backend.lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert out.n_tokens[i] == len(ids)
        assert rel_err(out.raw[i], reference_vector(ref, ids, LONG)) < 1e-5


def test_stream_and_segments_give_every_text_once_with_its_own_tokens():
    lm = _lm()
    ids, _ = lm.encode(TEXTS)
    seen = []
    for pack, h in stream(lm, ids, Batching(batch_tokens=512)):
        assert h.dtype == torch.float32 and h.shape[:2] == (pack.n_rows, pack.width)
        for which, x, lengths in segments(pack, h):
            assert x.shape[:2] == (len(which), max(lengths)) and lengths == [len(ids[i]) for i in which]
            seen += which
    assert sorted(seen) == list(range(len(TEXTS)))


def test_packed_packs_fill_rows_without_overlap_within_the_budget():
    lengths = [5, 300, 1, 40, 40, 7, 1200, 2, 38, 290, 37, 250, 3, 3]
    for width in (None, 128):
        packs = packed_packs(lengths, 1024, width)
        assert sorted(i for p in packs for i in p.texts) == list(range(len(lengths)))
        for p in packs:
            assert p.lengths == [lengths[i] for i in p.texts]
            assert p.width == max([*p.lengths, width or 0]) and (p.n_rows == 1 or p.slots <= 1024)
            for row in range(p.n_rows):  # each row: texts side by side from column 0, pads only at its end
                spans = sorted((s, n) for r, s, n in zip(p.rows, p.starts, p.lengths) if r == row)
                assert not spans or spans[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:]))
                assert not spans or spans[-1][0] + spans[-1][1] <= p.width
    # Rows as wide as the pack's longest text, opened only by texts within max_padding of it: the
    # short ones fill the tails (7 and 3 behind 290, 3 and 2 behind 37 and 38) or wait.
    packs = packed_packs(lengths, 1024)
    assert [(p.n_rows, p.width, p.texts) for p in packs[:2]] == [(1, 1200, [6]), (2, 300, [1, 9, 5, 12])]
    assert sum(p.slots for p in packs) - sum(lengths) <= 0.1 * sum(lengths)
    # A fixed width: every pack but the last has the same shape, full rows; the last keeps the rows it fills.
    fixed = packed_packs([5, 40, 40, 7, 38, 37] * 20, 512, width=128)
    assert {(p.n_rows, p.width) for p in fixed[:-1]} == {(4, 128)} and len(fixed) == 7  # 3,340 tokens, 512-slot packs
    assert fixed[-1].width == 128 and fixed[-1].n_rows == 3  # 301 tokens
    assert sum(p.slots for p in fixed) - 167 * 20 < 128 + 5 * 6  # pads: a few per full row, one row's worth at the end


def test_truncation_keeps_the_head_warns_and_flags(caplog):
    cfg = compose_cfg("model.max_tokens=8")
    backend = LocalBackend.from_config(cfg)
    chunks = chunks_from_cfg(cfg.pooling)
    with caplog.at_level(logging.WARNING):
        out = backend.vectors([TEXTS[0], TEXTS[2]], chunks)
    assert out.truncated == [False, True] and out.n_tokens[1] == 8
    assert "truncated to model.max_tokens=8" in caplog.text
    ids = backend.lm.tokenizer(TEXTS[2], add_special_tokens=False)["input_ids"]
    ref = reference_model(backend.lm.model)
    assert rel_err(out.raw[1], reference_vector(ref, ids[:8], LONG)) < 1e-5  # the first 8 tokens ...
    assert rel_err(out.raw[1], reference_vector(ref, ids[-8:], LONG)) > 0.01  # ... not the last 8
