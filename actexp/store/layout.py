"""Where things live in the artifact store and what they are called: its root, the hash cache, readable
ids built from model identities (means.py: corpus means; vectors.py: corpus vectors; fits.py), and
the comparison of a stored identity with the one a run asks for."""

import hashlib
import json
import re
from pathlib import Path
from typing import Optional


MANIFEST = "manifest.json"
COMMIT = re.compile(r"[0-9a-f]{40}")  # a git commit of a hub repository


def root(artifacts) -> Path:
    """The store's folder as an absolute path (paths.artifacts may be relative or start with ~)."""
    return Path(artifacts).expanduser().resolve()


def hash_cache(artifacts) -> Path:
    """Where the hashes of model files are kept between runs (hashes.file_sha256)."""
    return root(artifacts) / "hashes"


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def model_label(m: dict) -> str:
    """A model identity, readable: model, where its weights come from, layers, BOS, max_tokens, dtype."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(m["model"])).strip("_")[-40:]
    layers = "all" if m["layers"] == "all" else "L" + "_".join(map(str, m["layers"]))
    bos = "bos" if m["prepend_bos"] else "nobos"
    return f"{name}-{_weights_label(m)}-{layers}-{bos}-T{m['max_tokens']}-{m['dtype']}"


def _weights_label(m: dict) -> str:
    """Where a model's weights come from, in a few characters: its hub revision (a commit's first 8 hex
    digits), the seed of random weights, a weights file, a GGUF file or a checkpoint folder by content."""
    if m["revision"]:
        return m["revision"][:8] if COMMIT.fullmatch(m["revision"]) else m["revision"]
    if m["random_init"]:
        return f"seed{m['seed']}"
    if m.get("weights"):
        return f"w{m['weights'][:8]}"
    if m.get("gguf_sha256"):
        return f"{m['quantization']}-g{m['gguf_sha256'][:8]}"
    if m.get("checkpoint"):
        return f"c{m['checkpoint'][:8]}"
    return "main"


def mismatch(meta: dict, model_identity: dict) -> Optional[str]:
    """The first identity field where a mean's metadata differs from the model, described; None if it fits."""
    for key in [*model_identity, *(["prompt"] if "prompt" not in model_identity else [])]:
        value = model_identity.get(key)  # a mean made inside a prompt does not fit the bare text, nor the reverse
        if meta.get(key) != value:
            return f"{key}={json.dumps(meta.get(key))} (this model has {key}={json.dumps(value)})"
    return None


def stream_width(model_id: dict) -> int:
    """Dims of the stream the mean and the pooling see: H, or H per block side by side for model.layers=each."""
    layers = model_id["layers"]
    return model_id["hidden_size"] * (len(layers["each"]) if isinstance(layers, dict) else 1)
