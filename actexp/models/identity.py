"""A model's identity: everything that determines its activations, from config alone (no weights
loaded). A corpus mean, fit or store fits a model only if every field is equal. Files count by
content (store/hashes.py), hub models by the commit their revision points to (hub.py)."""

import hashlib
import json
from pathlib import Path
from typing import Optional

from ..errors import UserError
from ..store.hashes import file_sha256, folder_sha256
from ..store.layout import hash_cache
from . import gguf
from .architecture import model_config, select_layers
from .hub import hub_revision
from .prompting import Prompt
from .spec import BUNDLED_TOKENIZER, ModelSpec, check_gguf, local_source, weights_file


def tokenizer_sha256(spec: ModelSpec, cache: Optional[Path] = None) -> Optional[str]:
    """The tokenizer's content: the bundled file's hash, a model.tokenizer folder's, or the commit of a
    hub tokenizer; None where the checkpoint's own tokenizer is already in its identity."""
    if spec.tokenizer:
        local = local_source(spec.tokenizer, "model.tokenizer")
        return (checkpoint_sha256(Path(local), spec.trust_remote_code, cache) if local
                else hub_revision(spec.tokenizer, None, "model.tokenizer"))
    if spec.random_init or spec.weights:
        return file_sha256(BUNDLED_TOKENIZER, cache)[:16]
    return None  # a checkpoint's or GGUF file's own tokenizer


def model_identity(cfg) -> dict:
    """The identity of the model a run's config names (its model and hardware groups), from config
    alone; file hashes are cached in the run's store."""
    return identity(ModelSpec.from_config(cfg.model, cfg.hardware, cfg.get("prompt")),
                    hash_cache=hash_cache(cfg.paths.artifacts))


def identity(spec: ModelSpec, config=None, hash_cache: Optional[Path] = None) -> dict:
    """Everything that determines a model's activations, from config alone (no weights loaded):
    a corpus mean fits a model only if every field is equal. Files count by content (store/hashes.py;
    their hashes cached in `hash_cache`), hub models by the commit their revision points to."""
    check_gguf(spec)
    config = config or model_config(spec, hash_cache)
    local = local_source(spec.name_or_path) if spec.name_or_path and not spec.random_init else None
    weights = weights_file(spec)
    n_blocks = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")
    layer_ids = select_layers(spec.layers, n_blocks)
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    max_tokens = spec.max_tokens or context
    if context and max_tokens > context:
        raise UserError(f"model.max_tokens={max_tokens} exceeds the model's context of {context} tokens")
    return {
        "model": spec.name,
        "name_or_path": spec.name_or_path,
        "revision": None if spec.random_init or spec.weights else hub_revision(spec.name_or_path, spec.revision),
        "checkpoint": None if local is None else checkpoint_sha256(Path(local), spec.trust_remote_code, hash_cache),
        "random_init": spec.random_init,
        "seed": spec.seed if spec.random_init else None,
        "arch": dict(sorted(spec.arch.items())) if spec.arch and (spec.random_init or spec.weights) else None,
        # Built from name_or_path's config (random or file weights, no arch): that config is the architecture.
        "config_sha256": _config_sha256(config) if spec.arch is None and (spec.random_init or spec.weights) else None,
        "weights": None if weights is None else file_sha256(weights, hash_cache)[:16],
        "tokenizer": spec.tokenizer,
        "tokenizer_sha256": tokenizer_sha256(spec, hash_cache),
        "blocks": spec.blocks,
        "attn_implementation": spec.attn_implementation,
        "dtype": spec.dtype,
        "layers": {"each": layer_ids} if spec.layers == "each" else "all" if layer_ids == list(range(n_blocks)) else layer_ids,
        "prepend_bos": spec.prepend_bos,
        "max_tokens": max_tokens,
        "hidden_size": config.hidden_size,
    } | (_gguf_identity(spec, hash_cache) if spec.gguf else {}) | ({"prompt": spec.prompt} if spec.prompt else {})


def mean_identity(model_id: dict) -> dict:
    """The identity a corpus mean is made for: the span a vector pools is not in it (the mean covers
    every position of the templated sequence); the template is."""
    if not model_id.get("prompt"):
        return model_id
    made = Prompt(**model_id["prompt"]).mean_record()
    return {k: v for k, v in model_id.items() if k != "prompt"} | ({"prompt": made} if made else {})


def _gguf_identity(spec: ModelSpec, hash_cache: Optional[Path]) -> dict:
    """The GGUF file by content, and its quantisation: the activations are the quantised model's."""
    made_from = gguf.info(gguf.converted(spec.gguf, hash_cache))
    return {"gguf": gguf.source_name(spec.gguf), "gguf_sha256": made_from["gguf_sha256"],
            "quantization": made_from["quantization"],
            # What is loaded: every file of the converted folder, its own tokenizer's included (a newer
            # transformers may convert differently). A model.tokenizer folder is in tokenizer_sha256.
            "converted_sha256": gguf.content_sha256(made_from)[:16]}


# Keys a loaded model's config gains or changes at load time: the identity names dtype itself, and a
# config read from its file (the client, before loading) must name the same architecture as the
# loaded model's (a Modal container, a run after its first forward pass).
LOAD_TIME_KEYS = {"transformers_version", "dtype", "torch_dtype", "_attn_implementation_autoset", "attn_implementation"}


def _config_sha256(config) -> str:
    values = {k: v for k, v in config.to_dict().items() if k not in LOAD_TIME_KEYS}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Files of a checkpoint or tokenizer folder that change what the model computes.
MODEL_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".txt", ".model", ".tiktoken", ".gguf")


def checkpoint_sha256(folder: Path, trust_remote_code: bool, cache: Optional[Path] = None) -> str:
    """The content of a checkpoint (or tokenizer) folder: config, tokenizer and weight files, and
    its Python files when trust_remote_code runs them."""
    return folder_sha256(folder, MODEL_SUFFIXES + ((".py",) if trust_remote_code else ()), cache)[:16]
