import logging

import torch

from actexp.activations import LayerMean, stream, token_budget_batches
from actexp.backends.local import LocalBackend
from actexp.jobs.common import chunks as chunks_from_cfg
from actexp.model import load_model
from helpers import LONG, TEXTS, compose_cfg, reference_stream, reference_vector, rel_err


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
    cfg = compose_cfg(*overrides)
    return load_model(cfg.model, cfg.hardware)


def test_hook_stream_is_hidden_states_and_raw_last_block():
    lm = _lm()
    ids = lm.encode([TEXTS[2]])[0][0]
    per_block, hidden_states = reference_stream(lm.model, lm.blocks, ids)
    n = len(lm.blocks)
    for layer in range(n):
        h = LayerMean(lm.blocks, [layer])(lm.body, torch.tensor([ids]))[0]  # [T, H]
        if layer < n - 1:
            assert torch.equal(h, hidden_states[layer + 1][0])
    # The last block's hook output is the raw stream: hidden_states[-1] is it after the final norm.
    assert not torch.allclose(h, hidden_states[-1][0])
    assert torch.allclose(lm.body.final_layer_norm(h), hidden_states[-1][0], atol=1e-5)
    assert torch.equal(h.double(), per_block[-1])
    mean = LayerMean(lm.blocks, range(n))(lm.body, torch.tensor([ids]))[0]
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
    per_block, _ = reference_stream(lm.model, lm.blocks, ids)
    assert rel_err(h, per_block[[0, 1]].mean(0)) < 1e-6


def test_batched_equals_one_text_at_a_time():
    for pooling in ("short", "long"):
        cfg = compose_cfg(f"pooling={pooling}", "hardware.batch_tokens=2048", "hardware.max_padding=1000")
        backend = LocalBackend(cfg.model, cfg.hardware)
        chunks = chunks_from_cfg(cfg.pooling)
        batched = backend.vectors(TEXTS, chunks)
        assert len(token_budget_batches(batched.n_tokens, 2048, 1000)) == 1  # all in one padded batch
        for i, text in enumerate(TEXTS):
            alone = backend.vectors([text], chunks).raw[0]
            assert rel_err(batched.raw[i], alone) < 1e-5


def test_vectors_match_the_design_math():
    cfg = compose_cfg("pooling=long")
    backend = LocalBackend(cfg.model, cfg.hardware)
    out = backend.vectors(TEXTS, chunks_from_cfg(cfg.pooling))
    for i, text in enumerate(TEXTS):
        ids = backend.lm.encode([text])[0][0]
        assert out.n_tokens[i] == len(ids)
        ref = reference_vector(backend.lm.model, backend.lm.blocks, ids, LONG)
        assert rel_err(out.raw[i], ref) < 1e-5


def test_stream_yields_every_text_once_with_lengths():
    lm = _lm()
    ids, _ = lm.encode(TEXTS)
    seen = []
    for batch, h, lengths in stream(lm, ids, batch_tokens=512):
        assert h.dtype == torch.float32 and h.shape[:2] == (len(batch), max(lengths))
        assert lengths == [len(ids[i]) for i in batch]
        seen += batch
    assert sorted(seen) == list(range(len(TEXTS)))


def test_truncation_warns_and_flags(caplog):
    cfg = compose_cfg("model.max_tokens=8")
    backend = LocalBackend(cfg.model, cfg.hardware)
    with caplog.at_level(logging.WARNING):
        out = backend.vectors([TEXTS[0], TEXTS[2]], chunks_from_cfg(cfg.pooling))
    assert out.truncated == [False, True] and out.n_tokens[1] == 8
    assert "truncated to model.max_tokens=8" in caplog.text
    full = backend.vectors([TEXTS[2][:200]], chunks_from_cfg(cfg.pooling))
    assert full.n_tokens == [8]
