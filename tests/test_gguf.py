"""GGUF models, on a small Llama GGUF file written here (helpers.tiny_llama_gguf; converted in about a
second, where SmolLM2's takes 40 s): what the conversion writes, checks and names, and how it behaves
as `model=hf model.gguf=FILE` from the command line."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from actexp.errors import UserError
from actexp.jobs.common import model_spec
from actexp.models.gguf import converted
from actexp.models.identity import identity
from actexp.models.loading import load_model
from actexp.models.spec import BUNDLED_TOKENIZER, ModelSpec
from actexp.store.layout import hash_cache
from helpers import compose_cfg, run_cli, tiny_llama_gguf


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    return tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def test_a_tokenizer_folder_given_with_a_gguf_file_is_the_one_the_identity_names(gguf, tmp_path):
    """model.tokenizer=DIR replaces the GGUF's own tokenizer: the identity must follow that folder."""
    folder = tmp_path / "tokenizer"
    PreTrainedTokenizerFast(tokenizer_file=str(BUNDLED_TOKENIZER), bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>").save_pretrained(folder)
    store = tmp_path / "store"
    spec = model_spec(compose_cfg("model=hf", f"model.gguf={gguf}", f"model.tokenizer={folder}"))
    assert spec.name == str(gguf)  # model=hf is named by its GGUF file when it has no name_or_path
    text = "The quick brown fox jumps over the lazy dog."
    before, ids_before = identity(spec, hash_cache=hash_cache(store)), load_model(spec, hash_cache=hash_cache(store)).encode([text])[0]
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["model"]["merges"] = tokenizer["model"]["merges"][:200]  # most merges gone: other token ids
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    after, ids_after = identity(spec, hash_cache=hash_cache(store)), load_model(spec, hash_cache=hash_cache(store)).encode([text])[0]
    assert ids_after != ids_before  # what is loaded changed ...
    assert after["tokenizer_sha256"] != before["tokenizer_sha256"]  # ... and so did the identity
    assert {k for k in before if before[k] != after[k]} == {"tokenizer_sha256"}


def test_every_file_of_the_conversion_is_checked_at_each_use_and_named_by_the_identity(gguf, tmp_path):
    folder = converted(str(gguf), tmp_path / "a" / "hashes")
    made = json.loads((folder / "gguf.json").read_text())
    on_disk = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.name != "gguf.json"}
    assert made["files"] == on_disk and {"config.json", "model.safetensors", "tokenizer.json"} <= set(on_disk)
    spec = ModelSpec(name="tiny-gguf", gguf=str(gguf))
    meta = identity(spec, hash_cache=tmp_path / "a" / "hashes")
    hashes = tmp_path / "b" / "hashes"  # a copy of the converted folder in another store, edited there
    copy = tmp_path / "b" / "models" / folder.name
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(config | {"rms_norm_eps": 0.1}))
    with pytest.raises(UserError, match="config.json is not the file its conversion wrote .*delete"):
        load_model(spec, hash_cache=hashes)
    (copy / "config.json").write_text((folder / "config.json").read_text())
    (copy / "special_tokens_map.json").write_text(json.dumps({"bos_token": "the"}))  # AutoTokenizer would read it
    with pytest.raises(UserError, match="special_tokens_map.json was not written by the GGUF conversion"):
        identity(spec, hash_cache=hashes)
    (copy / "special_tokens_map.json").unlink()
    (copy / "tokenizer_config.json").unlink()
    with pytest.raises(UserError, match="tokenizer_config.json, written by the GGUF conversion, is missing"):
        load_model(spec, hash_cache=hashes)
    # A conversion that wrote another config (as another transformers may) is another model.
    shutil.rmtree(copy)
    shutil.copytree(folder, copy)
    (copy / "config.json").write_text(json.dumps(config | {"rms_norm_eps": 0.1}))
    (copy / "gguf.json").write_text(json.dumps(made | {"files": made["files"] | {
        "config.json": hashlib.sha256((copy / "config.json").read_bytes()).hexdigest()}}))
    other = identity(spec, hash_cache=hashes)
    assert {k for k in meta if meta[k] != other[k]} == {"converted_sha256"}


def test_the_conversion_is_on_disk_before_its_folder_is_renamed_into_place(gguf, tmp_path, monkeypatch):
    """fsync of every file and of the folder before the rename, of the parent after it: else a power
    cut can leave a finished-looking folder of empty files (os.fsync and os.rename watched, not replaced)."""
    events, fsync, rename = [], os.fsync, os.rename

    def watched_fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def watched_rename(src, dst, *args, **kwargs):
        events.append(("rename", os.path.realpath(src), os.path.realpath(dst)))
        return rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", watched_fsync)
    monkeypatch.setattr(os, "rename", watched_rename)
    folder = Path(os.path.realpath(converted(str(gguf), tmp_path / "a" / "hashes")))
    [(at, tmp)] = [(i, e[1]) for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(folder)]
    synced = {path for kind, path, *_ in events[:at] if kind == "fsync"}
    assert {os.path.join(tmp, p.name) for p in folder.iterdir()} | {tmp} <= synced
    assert ("fsync", str(folder.parent)) in events[at + 1:]


def test_the_conversion_draws_no_progress_bar_off_a_terminal(gguf, tmp_path, capfd):
    """stderr here is pytest's capture file, not a terminal, as `... 2> log` gives."""
    converted(str(gguf), tmp_path / "a" / "hashes")
    err = capfd.readouterr().err
    assert "GGUF tensors" not in err and "it/s" not in err, err


def test_model_hf_needs_a_checkpoint_or_a_gguf_file_and_says_so():
    with pytest.raises(Exception) as refused:  # not an interpolation error about model.name
        identity(model_spec(compose_cfg("model=hf")))
    assert isinstance(refused.value, UserError) and "model.name_or_path is empty" in str(refused.value), refused.value


def test_a_file_that_is_not_gguf_is_one_error_line_and_leaves_no_run_folder(tmp_path):
    (tmp_path / "story.txt").write_text("Once upon a time there was a GGUF file that was not one.\n")
    r = run_cli("model=hf", "model.gguf=story.txt", "text=hi", "logger=none", f"paths.artifacts={tmp_path / 'a'}",
                cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == ["error: model.gguf=story.txt is not a GGUF file (it does not start with GGUF): "
                                     "give a .gguf file, or model.name_or_path=DIR for a checkpoint folder"]
    assert not any((tmp_path / "experiments").rglob("*")) and not (tmp_path / "a" / "models").exists()
