"""A model's architecture without its weights: the transformers config (from `arch`, a checkpoint or a
converted GGUF file), where its decoder blocks live, and which of them model.layers selects."""

from pathlib import Path
from typing import List, Optional, Sequence

import torch

from ..errors import UserError
from . import gguf
from .hub import hub_revision, load_pretrained
from .spec import HELP_MODELS, ModelSpec, local_source


# Where the decoder blocks live, for GPT-NeoX, Llama-style and GPT-2-style causal LMs.
BLOCK_PATHS = ("gpt_neox.layers", "model.layers", "transformer.h", "model.decoder.layers")


def model_config(spec: ModelSpec, hash_cache: Optional[Path] = None):
    """The transformers config of the model, without its weights: from `arch`, a checkpoint's config,
    or a GGUF file's (converted once, gguf.py)."""
    from transformers import AutoConfig, GPTNeoXConfig

    if spec.gguf:
        return AutoConfig.from_pretrained(gguf.converted(spec.gguf, hash_cache))

    if spec.arch is not None:
        a = spec.arch
        return GPTNeoXConfig(
            vocab_size=a["vocab_size"], hidden_size=a["hidden_size"], num_hidden_layers=a["num_hidden_layers"],
            num_attention_heads=a["num_attention_heads"], intermediate_size=a["intermediate_size"],
            max_position_embeddings=a["max_position_embeddings"], layer_norm_eps=a["layer_norm_eps"],
            use_parallel_residual=a["use_parallel_residual"], tie_word_embeddings=a["tie_word_embeddings"],
            rope_parameters={"rope_type": "default", "rope_theta": a["rotary_emb_base"],
                             "partial_rotary_factor": a["rotary_pct"]},
            bos_token_id=0, eos_token_id=0,
        )
    if not spec.name_or_path:
        raise UserError(f"model.name_or_path is empty: {HELP_MODELS}")
    local = local_source(spec.name_or_path)
    return load_pretrained(AutoConfig, local or spec.name_or_path, bool(local), "checkpoint" if local else "hub model",
                 revision=hub_revision(spec.name_or_path, spec.revision), trust_remote_code=spec.trust_remote_code)


def find_blocks(model: torch.nn.Module, path: Optional[str] = None) -> Sequence[torch.nn.Module]:
    """The decoder block list: `path` (dotted) if given, else the first known location."""
    for candidate in [path] if path else BLOCK_PATHS:
        obj = model
        for part in candidate.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.nn.ModuleList) and len(obj) > 0:
            return obj
        if path:
            raise UserError(f"model.blocks={path!r} is not a list of modules in {type(model).__name__}")
    raise UserError(
        f"cannot find the decoder blocks of {type(model).__name__} (looked for {', '.join(BLOCK_PATHS)}): "
        "set model.blocks to the dotted path of its block list"
    )


def select_layers(layers, n_blocks: int) -> List[int]:
    """`all` or a list of block indices (negative counts from the end) -> sorted unique indices."""
    if layers in ("all", "each"):  # each: every block, one vector apiece
        return list(range(n_blocks))
    if isinstance(layers, int):
        layers = [layers]
    if isinstance(layers, str) or not all(isinstance(i, int) for i in layers) or len(layers) == 0:
        raise UserError(f"model.layers must be all, each or a list of block indices, got {layers!r}")
    bad = [i for i in layers if not -n_blocks <= i < n_blocks]
    if bad:
        raise UserError(f"model.layers {bad} out of range: the model has {n_blocks} blocks (0..{n_blocks - 1})")
    return sorted({i % n_blocks for i in layers})
