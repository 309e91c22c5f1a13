"""Shared test helpers: config composition, the CLI in a subprocess, and an independent
reference implementation of docs/math.md (no hooks: output_hidden_states of a copy of the model
whose final norm is the identity, and the pooling weights in closed form)."""

import contextlib
import copy
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from actexp.config.schema import CONF, register

REPO = Path(__file__).resolve().parents[1]
register()  # the dataclass schemas, as the CLI registers them


def run_if(cuda: bool = False):
    """Marks for tests that need hardware (after lightning-hydra-template's RunIf): the `gpu` marker
    and a skip where torch sees no CUDA device."""
    marks = []
    if cuda:
        marks += [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
    return lambda test: functools.reduce(lambda t, mark: mark(t), marks, test)


def compose_cfg(*overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=list(overrides))


def run_cli(*args, cwd, env=None, timeout=300, umask=None):
    """Run `python -m actexp.run ARGS` in cwd (under a umask if given); CompletedProcess with text output."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | (env or {})
    return subprocess.run([sys.executable, "-m", "actexp.run", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def run_clis(arg_lists, cwd, **kwargs):
    """run_cli for each list of args, two at a time (one process per core): [CompletedProcess]."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda args: run_cli(*args, cwd=cwd, **kwargs), arg_lists))


def reference_weights(kind, alpha, n):
    """Closed forms of docs/math.md: exp(alpha) is alpha (1-alpha)^(n-1-t) / (1 - (1-alpha)^n)."""
    t = torch.arange(n, dtype=torch.float64)
    if kind == "last":
        return (t == n - 1).double()
    if kind == "mean":
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    return alpha * (1 - alpha) ** (n - 1 - t) / (1 - (1 - alpha) ** n)


def reference_pooled_mean(mean, chunks, n):
    """pooled_mean(T) of docs/math.md by its definition: sum_t w_t mu_t with the closed-form weights and
    mu_t read position by position (mean[t] below P, the tail from P on): [C*H] float64."""
    P = mean.mean.shape[0]
    mu = torch.stack([(mean.mean[t] if t < P else mean.tail).double() for t in range(n)])  # [n, H]
    return torch.cat([reference_weights(c.kind, c.alpha, n) @ mu for c in chunks])


FINAL_NORMS = ("gpt_neox.final_layer_norm", "model.norm", "transformer.ln_f")


def reference_model(model):
    """A copy of a causal LM whose final norm is the identity, so that output_hidden_states[l + 1]
    is the raw output of block l for every block, the last one included: no hook involved."""
    ref = copy.deepcopy(model).eval()
    for path in FINAL_NORMS:
        parent, _, name = path.rpartition(".")
        owner = getattr(ref, parent, None)
        if isinstance(getattr(owner, name, None), torch.nn.Module):
            setattr(owner, name, torch.nn.Identity())
            return ref
    raise AssertionError(f"no final norm found in {type(model).__name__}")


def reference_stream(ref, ids):
    """Per-block raw outputs [L, T, H] float64 of one text, from a reference_model."""
    with torch.no_grad():
        out = ref(torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    return torch.stack(out.hidden_states[1:])[:, 0].double()


def reference_vector(ref, ids, chunks, layers=None, mu=None):
    """The pooled vector of one text, docs/math.md by hand: concatenation over chunks of
    sum_t w_t (h_t - mu_t), with h_t the mean of the selected blocks' raw outputs."""
    h = reference_stream(ref, ids)[layers if layers is not None else slice(None)].mean(0)  # [T, H]
    if mu is not None:
        h = h - mu[: len(ids)].double()
    return torch.cat([reference_weights(kind, alpha, len(ids)) @ h for kind, alpha in chunks])


def rel_err(a, b):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return ((a - b).norm() / b.norm()).item()


def pooling_spec(mode):
    """[(kind, alpha)] of conf/pooling/<mode>.yaml: the chunk lists live in the YAML only."""
    return [(c.kind, c.get("alpha")) for c in OmegaConf.load(CONF / "pooling" / f"{mode}.yaml").chunks]


SHORT, LONG = pooling_spec("short"), pooling_spec("long")

# Texts of very different lengths: 1-2 tokens, a sentence, and a few hundred tokens.
TEXTS = [
    "Hi",
    "The quick brown fox jumps over the lazy dog while the cat watches from the window.",
    " ".join(["Activation vectors summarise what a language model computes about a text,"
              " position by position, layer by layer."] * 12),
    "Rain.",
]


def wandb_records(run_dir):
    """The records of an offline W&B run (`run-*.wandb`: a LevelDB-style log of protobuf Records)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    [path] = Path(run_dir).glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, payloads, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        space = block - pos % block
        if space < 7:  # a block's tail too short for a header is padding
            pos += space
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += space
            continue
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:  # full
            payloads.append(payload)
        elif kind == 2:  # first
            pending = payload
        elif kind == 3:  # middle
            pending += payload
        else:  # last
            payloads.append(pending + payload)
    records = []
    for payload in payloads:
        record = pb.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def wandb_summary(run_dir):
    """(run record, config dict, set of history keys) of an offline W&B run."""
    import json

    run, config, keys = None, {}, set()
    for r in wandb_records(run_dir):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run = r.run
            config |= {i.key: json.loads(i.value_json) for i in r.run.config.update}
        elif kind == "config":
            config |= {i.key: json.loads(i.value_json) for i in r.config.update}
        elif kind == "history":
            keys |= {i.key or "/".join(i.nested_key) for i in r.history.item}
    return run, config, keys


@contextlib.contextmanager
def read_only(folder):
    """`folder` read-only in place, as a shared mount is. Root ignores permission bits, so as root it
    is bind-mounted read-only onto itself (writes then fail with EROFS, as on read-only media)."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for p, mode in modes.items():
            p.chmod(mode & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount {folder} read-only as root here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def tiny_llama_gguf(path, seed=0, hidden=16, layers=1, heads=2, kv_heads=1, intermediate=32, context=64):
    """A small Llama GGUF file written with the gguf package (float32 tensors, the bundled tiny
    tokenizer's vocabulary and merges): a real GGUF that transformers converts in about a second,
    where SmolLM2's takes 40 s. `seed` draws other weights of the same shapes."""
    import json

    import gguf
    import numpy as np

    from actexp.models.spec import BUNDLED_TOKENIZER

    bpe = json.loads(BUNDLED_TOKENIZER.read_text())["model"]
    tokens = sorted(bpe["vocab"], key=bpe["vocab"].get)
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(intermediate)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * len(tokens))
    writer.add_token_merges([" ".join(m) for m in bpe["merges"]])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)

    def normal(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    kv = kv_heads * (hidden // heads)
    writer.add_tensor("token_embd.weight", normal(len(tokens), hidden))  # [V, H]
    for i in range(layers):
        for name, shape in (("attn_q", (hidden, hidden)), ("attn_k", (kv, hidden)), ("attn_v", (kv, hidden)),
                            ("attn_output", (hidden, hidden)), ("ffn_gate", (intermediate, hidden)),
                            ("ffn_up", (intermediate, hidden)), ("ffn_down", (hidden, intermediate))):
            writer.add_tensor(f"blk.{i}.{name}.weight", normal(*shape))
        for name in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{i}.{name}.weight", 1 + normal(hidden))  # [H]
    writer.add_tensor("output_norm.weight", 1 + normal(hidden))
    writer.add_tensor("output.weight", normal(len(tokens), hidden))  # [V, H]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
