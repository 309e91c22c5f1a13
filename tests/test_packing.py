"""Packed batches: several texts to a row, each text's vector exactly its own.

The reference (tests/helpers.py) runs each text alone through output_hidden_states of a copy of
the model: no packing, no hooks, no position ids of ours.
"""

import logging

import pytest
import torch
from transformers import masking_utils

from actexp.backends import local
from actexp.backends.local import LocalBackend
from actexp.data.corpus import bundled_samples
from actexp.jobs.common import chunks as chunks_from_cfg
from actexp.maths.centering import CorpusMean
from actexp.models.activations import packing_error
from helpers import LONG, TEXTS, compose_cfg, reference_model, reference_vector, rel_err

# Lengths from 1 token to a few hundred, so that packs hold long texts with short ones behind them.
PACKED_TEXTS = TEXTS + [s.text for s in bundled_samples()[:8]] + ["A cat.", "Yes", "Two words", "x"]


def _packed_backend(*overrides, width=512, budget=1024):
    """Rows of 512 slots, two to a pack: long texts share their rows with short ones."""
    cfg = compose_cfg("pooling=long", f"hardware.batch_tokens={budget}", f"hardware.pack_width={width}", *overrides)
    backend = LocalBackend.from_config(cfg)
    return backend, chunks_from_cfg(cfg.pooling)


@pytest.fixture
def trusted(monkeypatch):
    """Packing used without the backend's check on the model (which would fall back to padded
    batches), so that what is tested is the packed forward pass itself."""
    monkeypatch.setattr(local, "packing_error", lambda lm: 0.0)


def _several_to_a_row(backend, n_tokens):
    packs = backend.batching.packs(n_tokens)
    crowded = [p for p in packs if len(p.texts) > p.n_rows and not p.padded]
    assert crowded, "the test needs rows that hold several texts"
    return max(len([r for r in p.rows if r == row]) for p in crowded for row in range(p.n_rows))


@pytest.mark.parametrize("family", ["tiny", "neox_dir", "gpt2_dir", "llama_dir"])
def test_packed_vectors_equal_each_text_alone(request, family):
    overrides = [] if family == "tiny" else ["model=hf", f"model.name_or_path={request.getfixturevalue(family)}"]
    backend, chunks = _packed_backend(*overrides)
    assert packing_error(backend.lm) < 1e-6  # the backend's check passes: these families pack
    request.getfixturevalue("trusted")
    out = backend.vectors(PACKED_TEXTS, chunks)
    assert _several_to_a_row(backend, out.n_tokens) >= 3
    ref = reference_model(backend.lm.model)
    ids, _ = backend.lm.encode(PACKED_TEXTS)
    worst = max(rel_err(out.raw[i], reference_vector(ref, x, LONG)) for i, x in enumerate(ids))
    assert worst < 1e-6, worst  # float32 on the CPU (right-padded batches: the same bound)


def test_packed_centred_vectors_equal_each_text_alone_past_the_means_last_position(trusted):
    backend, chunks = _packed_backend()
    H = backend.lm.hidden_size
    gen = torch.Generator().manual_seed(0)
    mean = CorpusMean(torch.randn(40, H, generator=gen), torch.zeros(40, H, dtype=torch.float64),  # [P, H]
                      torch.ones(40, dtype=torch.int64), torch.randn(H, generator=gen), {"max_tokens": 2048})
    out = backend.vectors(PACKED_TEXTS, chunks, mean)
    ref = reference_model(backend.lm.model)
    ids, _ = backend.lm.encode(PACKED_TEXTS)
    for i, x in enumerate(ids):
        mu = torch.cat([mean.mean, mean.tail.expand(max(len(x) - 40, 0), -1)])  # [max(T, P), H]
        assert rel_err(out.centered[i], reference_vector(ref, x, LONG, mu=mu)) < 1e-6, i


def test_the_mean_of_packed_batches_is_the_mean_of_each_text_alone(trusted):
    packed, _ = _packed_backend()
    padded, _ = _packed_backend("hardware.packing=false")
    texts = [s.text for s in bundled_samples()] + ["A cat.", "Yes"]
    a, b = packed.mean_stats(texts), padded.mean_stats(texts)
    assert _several_to_a_row(packed, [len(x) for x in packed.lm.encode(texts)[0]]) >= 2
    assert torch.equal(a.count, b.count) and (a.docs, a.tokens) == (b.docs, b.tokens)
    assert rel_err(a.sum, b.sum) < 1e-6


def test_a_model_that_lets_packed_texts_see_each_other_runs_padded_batches(monkeypatch, caplog):
    """A family whose masks transformers does not build from position ids (here: the packed-sequence
    detection switched off) would let a text attend to the one before it: packing is refused."""
    backend, chunks = _packed_backend()
    assert packing_error(backend.lm) < 1e-6
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    assert packing_error(backend.lm) > 1e-2
    with caplog.at_level(logging.WARNING):
        out = backend.vectors(PACKED_TEXTS, chunks)
    assert "does not keep packed texts apart" in caplog.text and not backend.checked_batching().packing
    ref = reference_model(backend.lm.model)
    ids, _ = backend.lm.encode(PACKED_TEXTS)
    assert max(rel_err(out.raw[i], reference_vector(ref, x, LONG)) for i, x in enumerate(ids)) < 1e-6


def test_packing_off_gives_right_padded_batches_with_the_same_vectors():
    packed, chunks = _packed_backend()
    padded, _ = _packed_backend("hardware.packing=false")
    a, b = packed.vectors(PACKED_TEXTS, chunks), padded.vectors(PACKED_TEXTS, chunks)
    assert all(p.padded for p in padded.batching.packs(b.n_tokens))
    assert rel_err(a.raw, b.raw) < 1e-6


def test_rows_wider_than_the_models_context_give_their_pads_position_0(gpt2_dir, trusted):
    """GPT-2's learned positions stop at 256: a row of 400 slots holding one short text (or two) must
    not hand its pads positions 200..399."""
    backend, chunks = _packed_backend("model=hf", f"model.name_or_path={gpt2_dir}", width=400, budget=400)
    texts = [PACKED_TEXTS[2], PACKED_TEXTS[1]]
    out = backend.vectors(texts, chunks)
    [pack] = backend.batching.packs(out.n_tokens)
    assert pack.width == 400 > max(out.n_tokens) and not pack.padded
    ref = reference_model(backend.lm.model)
    ids, _ = backend.lm.encode(texts)
    assert max(rel_err(out.raw[i], reference_vector(ref, x, LONG)) for i, x in enumerate(ids)) < 1e-6
