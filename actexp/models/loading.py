"""Load a causal LM and its tokenizer: a hub id, a local checkpoint, or seeded random weights.

The LM head is loaded with the checkpoint but never run: activations come from the body.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from safetensors import SafetensorError

from ..errors import UserError
from . import gguf
from .architecture import find_blocks, model_config, select_layers
from .hub import hub_revision, load_pretrained
from .identity import identity
from .spec import HELP_MODELS, ModelSpec, check_gguf, local_source, torch_dtype, weights_file
from .tokenizing import TextEncoder, text_encoder


@dataclass
class LoadedModel:
    model: torch.nn.Module  # the causal LM; its head is never run
    body: torch.nn.Module  # embeddings, decoder blocks, final norm
    blocks: Sequence[torch.nn.Module]
    layer_ids: List[int]  # selected blocks, non-negative, ascending
    text: TextEncoder
    hidden_size: int
    device: torch.device
    metadata: dict  # what determines the vectors: model name, revision, layers, ...

    @property
    def tokenizer(self):
        return self.text.tokenizer

    def encode(self, texts: Sequence[str]) -> Tuple[List[List[int]], List[bool]]:
        return self.text.encode(texts)

    @property
    def per_block(self) -> bool:
        """model.layers=each: one vector per selected block instead of their mean."""
        return isinstance(self.metadata["layers"], dict)


def load_model(spec: ModelSpec, device: str = "cpu", threads: Optional[int] = None,
               hash_cache: Optional[Path] = None) -> LoadedModel:
    """Build the LoadedModel a spec describes, on a device ("cpu", "cuda", "cuda:1")."""
    import transformers

    transformers.logging.set_verbosity_error()  # no "sequence longer than max length" noise
    transformers.logging.disable_progress_bar()  # "Loading weights" takes a second; a GGUF conversion shows its own
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UserError(f"hardware.device={device} is not a device torch knows: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"hardware.device={device} but torch sees no CUDA device: use hardware=cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"hardware.device={device} but torch sees {torch.cuda.device_count()} CUDA device(s): "
                        f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if threads:
        torch.set_num_threads(threads)
    dtype = torch_dtype(spec.dtype)
    check_gguf(spec)
    try:
        if spec.random_init:
            model = _random_model(spec, dtype, device)
        elif spec.weights:
            model = _model_from_weights(spec, dtype, device)
        else:
            model = _pretrained_model(spec, dtype, device, hash_cache)
    except (ValueError, ImportError) as e:
        if "attn_implementation" not in str(e) and "FlashAttention" not in str(e):
            raise
        raise UserError(f"model.attn_implementation={spec.attn_implementation} cannot run here: "
                        f"{str(e).strip().splitlines()[0][:200]}; use sdpa (the default) or eager") from None
    model.eval().requires_grad_(False)
    blocks = find_blocks(model, spec.blocks)
    meta = identity(spec, model.config, hash_cache)
    layer_ids = select_layers(spec.layers, len(blocks))
    text = text_encoder(spec, meta["max_tokens"], model.config, hash_cache=hash_cache)
    return LoadedModel(model, model.base_model, blocks, layer_ids, text, meta["hidden_size"], device, meta)


def seeded_init(model: torch.nn.Module, seed: int) -> None:
    """Overwrite every weight from one CPU generator in float32, in name order, then copy it to the
    parameter's device and dtype: the same numbers on every machine, GPU or not.

    Matrices and biases ~ N(0, 0.02); norm weights ~ 1 + N(0, 0.1), so no layer is an identity.
    """
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in sorted(params):
            p = params[name]
            values = torch.empty(p.shape, dtype=torch.float32)  # one parameter at a time on the host
            if "norm" in name and name.endswith("weight"):
                values.normal_(1.0, 0.1, generator=gen)
            else:
                values.normal_(0.0, 0.02, generator=gen)
            p.copy_(values)


def _architecture(spec: ModelSpec, dtype, device):
    """The model of `arch` (or of name_or_path's config) with weights still to be set."""
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        return AutoModelForCausalLM.from_config(model_config(spec), dtype=dtype, attn_implementation=spec.attn_implementation)


def _random_model(spec: ModelSpec, dtype, device):
    if spec.arch is None and not spec.name_or_path:
        raise UserError("model.random_init=true needs model.arch or model.name_or_path")
    model = _architecture(spec, dtype, device)
    seeded_init(model, spec.seed)
    return model


def _model_from_weights(spec: ModelSpec, dtype, device):
    """The architecture with the weights of model.weights."""
    from safetensors.torch import load_file

    path = weights_file(spec)
    model = _architecture(spec, dtype, device)
    try:
        weights = load_file(path)
    except (SafetensorError, OSError) as e:
        raise UserError(f"model.weights={path} is not a safetensors file ({str(e).strip() or type(e).__name__}): "
                        "give the .safetensors file of the weights") from None
    try:
        model.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, strict=True)
    except RuntimeError as e:
        reason = " ".join(line.strip() for line in str(e).splitlines()[1:3])
        raise UserError(f"model.weights={path} does not fit the architecture of model={spec.name}: {reason[:300]}") from None
    return model


def _pretrained_model(spec: ModelSpec, dtype, device, hash_cache: Optional[Path] = None):
    """Weights read straight onto the device on a GPU (device_map), so the host never holds the whole
    model (24 GB for Pythia-12B in bf16); on the CPU as they are."""
    from transformers import AutoModelForCausalLM

    on_device = {"device_map": str(device)} if device.type == "cuda" else {}
    if spec.gguf:
        folder = gguf.converted(spec.gguf, hash_cache)  # checked against what its conversion wrote
        return load_pretrained(AutoModelForCausalLM, str(folder), True, "converted GGUF model", dtype=dtype,
                     attn_implementation=spec.attn_implementation, **on_device).to(device)
    if not spec.name_or_path:
        raise UserError(f"model.name_or_path is empty: {HELP_MODELS}")
    local = local_source(spec.name_or_path)
    model = load_pretrained(AutoModelForCausalLM, local or spec.name_or_path, bool(local), "checkpoint" if local else "hub model",
                  revision=hub_revision(spec.name_or_path, spec.revision), dtype=dtype, attn_implementation=spec.attn_implementation,
                  trust_remote_code=spec.trust_remote_code, **on_device)
    return model.to(device)
