import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from actexp.backends import open_backend
from actexp.backends.local import LocalBackend
from actexp.data.corpus import python_docs
from actexp.errors import UserError
from actexp.jobs.common import chunks as chunks_from_cfg
from actexp.jobs.common import model_identity, model_spec
from actexp.models.architecture import find_blocks, select_layers
from actexp.models.loading import load_model
from actexp.models.spec import BUNDLED_WEIGHTS
from helpers import LONG, SHORT, TEXTS, compose_cfg, reference_model, reference_vector, rel_err


def _backend(*overrides):
    cfg = compose_cfg(*overrides)
    return LocalBackend.from_config(cfg), chunks_from_cfg(cfg.pooling)


@pytest.mark.parametrize("pooling,spec", [("short", SHORT), ("long", LONG)])
def test_hf_checkpoint_loads_through_from_pretrained_and_matches_the_math(neox_dir, pooling, spec):
    backend, chunks = _backend("model=hf", f"model.name_or_path={neox_dir}", f"pooling={pooling}")
    assert backend.lm.metadata["name_or_path"] == str(neox_dir) and backend.lm.text.max_tokens == 512
    out = backend.vectors(TEXTS, chunks)
    reference = reference_model(AutoModelForCausalLM.from_pretrained(neox_dir))  # loaded independently
    for i, text in enumerate(TEXTS):
        ids = backend.lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert out.raw[i].shape == (len(spec) * 64,)
        assert rel_err(out.raw[i], reference_vector(reference, ids, spec)) < 1e-5


def test_layers_and_prepend_bos_follow_the_config(neox_dir):
    backend, chunks = _backend("model=hf", f"model.name_or_path={neox_dir}", "model.layers=[-1]",
                               "model.prepend_bos=true", "pooling=short")
    ids = backend.lm.encode([TEXTS[1]])[0][0]
    assert ids[0] == 0 and backend.lm.metadata["layers"] == [2]
    reference = reference_model(AutoModelForCausalLM.from_pretrained(neox_dir))
    ref = reference_vector(reference, ids, SHORT, layers=[2])
    assert rel_err(backend.vectors([TEXTS[1]], chunks).raw[0], ref) < 1e-5


@pytest.mark.parametrize("fixture,attr", [("gpt2_dir", "transformer.h"), ("llama_dir", "model.layers")])
def test_other_families_find_their_blocks_and_match_the_reference(request, fixture, attr):
    path = request.getfixturevalue(fixture)
    backend, chunks = _backend("model=hf", f"model.name_or_path={path}")
    assert backend.lm.blocks is backend.lm.model.get_submodule(attr)
    out = backend.vectors(TEXTS, chunks)
    assert out.raw.shape == (len(TEXTS), 4 * 48)
    reference = reference_model(AutoModelForCausalLM.from_pretrained(path))  # loaded independently
    for i, text in enumerate(TEXTS):
        ids = backend.lm.tokenizer(text, add_special_tokens=False)["input_ids"][:256]  # the context: 256
        assert rel_err(out.raw[i], reference_vector(reference, ids, LONG)) < 1e-5


def test_unknown_architecture_names_the_setting():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stack = torch.nn.ModuleList([torch.nn.Linear(2, 2)])

    with pytest.raises(UserError, match="set model.blocks"):
        find_blocks(Odd())
    assert len(find_blocks(Odd(), "stack")) == 1
    with pytest.raises(UserError, match="model.blocks='nope'"):
        find_blocks(Odd(), "nope")


def test_random_tiny_is_seeded_and_offline():  # needs random weights: model.random_init=true
    a = load_model(model_spec(compose_cfg("model.random_init=true")))
    b = load_model(model_spec(compose_cfg("model.random_init=true")))
    c = load_model(model_spec(compose_cfg("model.random_init=true", "model.seed=1")))
    wa, wb, wc = (m.model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    # The numbers do not depend on the dtype they land in (nor on the device: tests/test_gpu.py).
    bf16 = load_model(model_spec(compose_cfg("model.random_init=true", "hardware.dtype=bfloat16"))).model.state_dict()
    assert all(torch.equal(v.to(torch.bfloat16), bf16[k]) for k, v in a.model.state_dict().items())
    assert a.model.config.rope_parameters["partial_rotary_factor"] == 0.25
    assert a.model.config.use_parallel_residual and a.hidden_size == 128 and len(a.blocks) == 4


def test_pythia_random_init_builds_the_architecture_offline():
    cfg = compose_cfg("model=pythia-70m", "model.random_init=true")
    lm = load_model(model_spec(cfg))
    assert (lm.hidden_size, len(lm.blocks), lm.text.max_tokens) == (512, 6, 2048)
    assert lm.model.config.vocab_size == 50304 and lm.model.config.num_attention_heads == 8
    assert lm.tokenizer.vocab_size == 4096  # the bundled tokenizer


def test_missing_directory_and_file_paths(tmp_path):
    cfg = compose_cfg("model=hf", f"model.name_or_path={tmp_path / 'absent'}")
    with pytest.raises(UserError, match="does not exist.*model=tiny"):
        load_model(model_spec(cfg))
    (tmp_path / "weights.bin").write_bytes(b"x")
    cfg = compose_cfg("model=hf", f"model.name_or_path={tmp_path / 'weights.bin'}")
    with pytest.raises(UserError, match="is a file"):
        load_model(model_spec(cfg))
    cfg = compose_cfg("model=hf", f"model.name_or_path={tmp_path}")
    with pytest.raises(UserError, match="cannot load checkpoint"):
        load_model(model_spec(cfg))


def test_unknown_hub_id_fails_fast_with_one_line():
    cfg = compose_cfg("model=hf", "model.name_or_path=actexp-tests/no-such-model")
    with pytest.raises(UserError, match="model=tiny") as err:
        load_model(model_spec(cfg))
    assert "\n" not in str(err.value)


def test_select_layers():
    assert select_layers("all", 4) == [0, 1, 2, 3]
    assert select_layers([-1, 0, 3], 4) == [0, 3]
    for bad in ([4], [-5], [], "some", ["a"]):
        with pytest.raises(UserError, match="model.layers"):
            select_layers(bad, 4)


HELD_OUT_MARGIN = 3.0  # nats per token: the shipped weights reach ~4.2 on unseen docstrings, random ones ~8.3


def held_out_loss(lm, n_tokens=4096, seq=1024):
    """Next-token loss on docstrings the training never saw (every one whose id is 0 modulo 20, as
    scripts/train_tiny.py holds out), on the first n_tokens of them."""
    eos = lm.tokenizer.eos_token_id
    stream = [t for d in python_docs(0) if int(d.id, 16) % 20 == 0
              for t in lm.tokenizer(d.text, add_special_tokens=False)["input_ids"] + [eos]][: n_tokens + 1]
    rows = torch.tensor(stream[: (len(stream) - 1) // seq * seq + 1])
    x, y = rows[:-1].view(-1, seq), rows[1:].view(-1, seq)
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(lm.model(x).logits.flatten(0, 1), y.flatten()).item()


def test_the_shipped_tiny_weights_load_offline_and_predict_unseen_text():
    trained = load_model(model_spec(compose_cfg()))
    random = load_model(model_spec(compose_cfg("model.random_init=true")))
    assert trained.metadata["weights"] and trained.metadata["weights"] != random.metadata.get("weights")
    assert trained.metadata["random_init"] is False and random.metadata["weights"] is None
    shipped = load_file(BUNDLED_WEIGHTS)
    assert all(torch.equal(v.float(), trained.model.state_dict()[k]) for k, v in shipped.items())
    assert held_out_loss(trained) < held_out_loss(random) - HELD_OUT_MARGIN


def test_weights_that_do_not_fit_are_one_line(tmp_path):
    small = tmp_path / "small.safetensors"
    save_file({"gpt_neox.embed_in.weight": torch.zeros(4096, 64)}, small)
    for weights, expected in ((small, "does not fit"), (tmp_path / "absent.safetensors", "is not a file")):
        with pytest.raises(UserError, match=expected):
            load_model(model_spec(compose_cfg(f"model.weights={weights}")))


def test_a_missing_tokenizer_folder_names_its_own_setting(tmp_path):
    for path, expected in ((tmp_path / "absent", "model.tokenizer=.*absent does not exist"),
                           (BUNDLED_WEIGHTS, "model.tokenizer=.* is a file")):
        with pytest.raises(UserError, match=expected):
            load_model(model_spec(compose_cfg(f"model.tokenizer={path}")))


@pytest.mark.slow  # over 7 s (a CLI run and a mean): the default pytest run stays under 5 minutes
def test_vectors_that_overflow_are_refused_with_the_dtype_to_use(tmp_path):
    """float16 is allowed and a model can overflow in it: the MLPs of the tiny model scaled up by 200
    overflow in float16 (not in float32); the refusal names the texts and the dtype to use."""
    import actexp
    from helpers import run_cli

    weights = tmp_path / "loud.safetensors"
    save_file({k: (v.float() * (200.0 if "mlp.dense" in k and k.endswith("weight") else 1.0)).to(v.dtype)
               for k, v in load_file(BUNDLED_WEIGHTS).items()}, weights)
    texts = ["The quick brown fox jumps over the lazy dog.", "hi"]
    with actexp.Session(f"model.weights={weights}", "model.dtype=float32") as s:
        assert np.isfinite(s.vectors(texts).raw).all()
    with pytest.raises(actexp.UserError, match=r"the vectors of 2 of 2 texts \(text 0: 'The quick brown fox jumps over'"
                                               r", \.\.\.\) are not finite in model.dtype=float16: .* use "
                                               r"model.dtype=bfloat16 or float32"):
        with actexp.Session(f"model.weights={weights}", "model.dtype=float16") as s:
            s.vectors(texts)
    r = run_cli("job=extract", "text=hi", f"model.weights={weights}", "model.dtype=float16", "logger=none",
                f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "model.dtype=float16" in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="activations of these documents are not finite in model.dtype=float16"):
        from actexp import jobs
        jobs.run("mean", compose_cfg("job=mean", "corpus=samples", f"model.weights={weights}", "model.dtype=float16",
                                     f"paths.artifacts={tmp_path / 'art'}"), tmp_path)


def test_the_model_loads_at_the_first_forward_pass_not_when_its_identity_is_read(neox_dir, tmp_path):
    """Weights that cannot be loaded: the identity (hashed from the files) is still there; the forward
    pass is what fails. A run's backend builds nothing for its metadata."""
    folder = shutil.copytree(neox_dir, tmp_path / "ckpt")
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    cfg = compose_cfg("model=hf", f"model.name_or_path={folder}", f"paths.artifacts={tmp_path / 'a'}")
    backend = LocalBackend.from_config(cfg)
    assert backend.metadata == model_identity(cfg) and backend.metadata["checkpoint"]
    with pytest.raises(UserError, match="cannot load checkpoint .*header"):
        backend.vectors(TEXTS, chunks_from_cfg(cfg.pooling))
    with open_backend(compose_cfg("model=hf", "hardware=modal", f"model.name_or_path={folder}")) as lazy:
        assert lazy.metadata["checkpoint"] == backend.metadata["checkpoint"]  # no Modal credentials needed


@pytest.mark.parametrize("source", ["checkpoint", "random_init", "arch"])
def test_the_identity_is_the_same_before_and_after_the_model_is_loaded(neox_dir, source):
    """Means, stores and fits are named before the model loads (from its files) and checked after it
    (a Modal container compares the identity of the model it built): one model, one identity."""
    overrides = {"checkpoint": ["model=hf", f"model.name_or_path={neox_dir}"],
                 "random_init": ["model=hf", f"model.name_or_path={neox_dir}", "model.random_init=true"],
                 "arch": ["model.random_init=true"]}[source]
    for dtype in ("float32", "bfloat16"):
        cfg = compose_cfg(*overrides, f"model.dtype={dtype}")
        assert load_model(model_spec(cfg)).metadata == model_identity(cfg), dtype


@pytest.mark.parametrize("overrides,expected", [
    (["hardware.device=tpu"], "hardware.device=tpu is not a device torch knows: use cpu, cuda or cuda:N"),
    (["model.attn_implementation=bogus"], "model.attn_implementation=bogus cannot run here: .*; use sdpa"),
    (["model.weights=README.md"], "model.weights=.*README.md is not a safetensors file .*: give the .safetensors"),
    (["model.gguf=README.md"], "model.gguf=README.md holds the whole model, but model=tiny sets model.weights, "
                               "model.arch: use model=hf model.gguf=README.md"),
])
def test_a_model_setting_that_cannot_load_is_one_line(overrides, expected):
    cfg = compose_cfg(*overrides)
    with pytest.raises(UserError, match=expected):
        LocalBackend.from_config(cfg).vectors(["hi"], chunks_from_cfg(cfg.pooling))
