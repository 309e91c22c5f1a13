"""Shared test helpers: config composition, the CLI in a subprocess, and an independent
reference implementation of docs/math.md (output_hidden_states + explicit weights)."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from actexp.run import CONF

REPO = Path(__file__).resolve().parents[1]


def compose_cfg(*overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=list(overrides))


def run_cli(*args, cwd, env=None, timeout=300):
    """Run `python -m actexp.run ARGS` in cwd; returns CompletedProcess with text output."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | (env or {})
    return subprocess.run([sys.executable, "-m", "actexp.run", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def reference_weights(kind, alpha, n):
    if kind == "last":
        w = [0.0] * (n - 1) + [1.0]
    elif kind == "mean":
        w = [1.0 / n] * n
    else:
        raw = [(1.0 - alpha) ** (n - 1 - t) for t in range(n)]
        w = [r / sum(raw) for r in raw]
    return torch.tensor(w, dtype=torch.float64)


def reference_stream(model, blocks, ids):
    """Per-block raw outputs [L, T, H] float64 of one text, the docs/math.md way: hidden_states[l+1]
    for every block but the last, and the last block's raw output through a hook."""
    captured = {}

    def hook(module, args, output):
        captured["last"] = output[0] if isinstance(output, tuple) else output

    handle = blocks[-1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    finally:
        handle.remove()
    per_block = [out.hidden_states[l + 1][0] for l in range(len(blocks) - 1)] + [captured["last"][0]]
    return torch.stack(per_block).double(), out.hidden_states


def reference_vector(model, blocks, ids, chunks, layers=None):
    """The pooled vector of one text: concatenation over chunks of sum_t w_t h_t."""
    stream, _ = reference_stream(model, blocks, ids)
    h = stream[layers if layers is not None else slice(None)].mean(0)  # [T, H]
    return torch.cat([reference_weights(kind, alpha, len(ids)) @ h for kind, alpha in chunks])


def rel_err(a, b):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return ((a - b).norm() / b.norm()).item()


SHORT = [("exp", 0.067)]
LONG = [("last", None), ("exp", 0.023), ("exp", 0.067), ("exp", 0.159)]

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
