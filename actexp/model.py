"""Load a causal LM and its tokenizer: a hub id, a local checkpoint, or seeded random weights.

The LM head is loaded with the checkpoint but never run: activations come from the body.
"""

import hashlib
import json
import os
import socket
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError

from . import gguf_model
from .errors import UserError
from .fingerprint import checkpoint_sha256, file_sha256, hub_commit

BUNDLED_TOKENIZER = Path(__file__).parent / "assets" / "tiny_tokenizer.json"
# The trained weights of model=tiny (scripts/train_tiny.py), named `model.weights=bundled`.
BUNDLED_WEIGHTS = Path(__file__).parent / "assets" / "tiny_model.safetensors"
# Where the decoder blocks live, for GPT-NeoX, Llama-style and GPT-2-style causal LMs.
BLOCK_PATHS = ("gpt_neox.layers", "model.layers", "transformer.h", "model.decoder.layers")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HELP_MODELS = "use model=tiny (offline), or model=hf model.name_or_path=/path/to/checkpoint"


@dataclass
class TextEncoder:
    """A model's tokenizer with its BOS and truncation rule: exactly the ids the forward pass gets."""

    tokenizer: object
    max_tokens: int
    bos_id: Optional[int]  # prepended to every text; None: model.prepend_bos=false

    def encode(self, texts: Sequence[str]) -> Tuple[List[List[int]], List[bool]]:
        return encode(self.tokenizer, texts, self.max_tokens, self.bos_id)


def text_encoder(spec: "ModelSpec", max_tokens: int, config, tokenizer=None,
                 hash_cache: Optional[Path] = None) -> TextEncoder:
    """The TextEncoder of a spec; the BOS id is the tokenizer's, else the model config's."""
    tokenizer = tokenizer or load_tokenizer(spec, hash_cache)
    if not spec.prepend_bos:
        return TextEncoder(tokenizer, max_tokens, None)
    bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else getattr(config, "bos_token_id", None)
    if bos_id is None:
        raise UserError("model.prepend_bos=true but the tokenizer has no BOS token: set model.prepend_bos=false")
    return TextEncoder(tokenizer, max_tokens, bos_id)


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


@dataclass
class ModelSpec:
    """Which model to load and how it runs, as plain values: the `model` config group with the dtype
    resolved. Jobs build it with from_config; a Modal container rebuilds it from to_dict()."""

    name: str = "tiny"
    name_or_path: Optional[str] = None
    revision: Optional[str] = None
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    random_init: bool = False
    seed: int = 0
    layers: Any = "all"  # "all" or a list of block indices
    max_tokens: Optional[int] = None
    prepend_bos: bool = False
    blocks: Optional[str] = None
    tokenizer: Optional[str] = None
    arch: Optional[dict] = None  # GPT-NeoX numbers (schema.ArchConfig's fields), to build the model
    weights: Optional[str] = None  # a safetensors file of the whole model for `arch`; "bundled": model=tiny's
    gguf: Optional[str] = None  # a GGUF file (model and tokenizer), or package:file inside an installed package

    @classmethod
    def from_config(cls, model_cfg, hardware_cfg) -> "ModelSpec":
        """From the model and hardware groups: model.dtype, else the hardware's."""
        from omegaconf import OmegaConf

        values = OmegaConf.to_container(model_cfg, resolve=True)
        values["dtype"] = values["dtype"] or hardware_cfg.dtype
        torch_dtype(values["dtype"])  # refuse an unknown name before anything runs
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


def encode(tokenizer, texts: Sequence[str], max_tokens: int, bos_id: Optional[int] = None
           ) -> Tuple[List[List[int]], List[bool]]:
    """Token ids per text (with bos_id first if given), truncated to max_tokens, and whether each was."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    if bos_id is not None:
        ids = [[bos_id] + x for x in ids]
    truncated = [len(x) > max_tokens for x in ids]
    return [x[:max_tokens] for x in ids], truncated


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def model_config(spec: ModelSpec, hash_cache: Optional[Path] = None):
    """The transformers config of the model, without its weights: from `arch`, a checkpoint's config,
    or a GGUF file's (converted once, gguf_model.py)."""
    from transformers import AutoConfig, GPTNeoXConfig

    if spec.gguf:
        return AutoConfig.from_pretrained(gguf_model.converted(spec.gguf, hash_cache))

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
    return _load(AutoConfig, local or spec.name_or_path, bool(local), "checkpoint" if local else "hub model",
                 revision=hub_revision(spec.name_or_path, spec.revision), trust_remote_code=spec.trust_remote_code)


def weights_file(spec: ModelSpec) -> Optional[Path]:
    """The weights file of an `arch` model (None for hub or folder checkpoints and random weights)."""
    if spec.random_init or not spec.weights:
        return None
    path = BUNDLED_WEIGHTS if spec.weights == "bundled" else Path(spec.weights).expanduser()
    if not path.is_file():
        raise UserError(f"model.weights={spec.weights} is not a file: give a .safetensors file of the model's "
                        "weights, or model.random_init=true for seeded random weights")
    return path


def from_hub(spec: ModelSpec) -> bool:
    """Whether the spec's weights come from the Hugging Face hub (not random, a file or a local folder)."""
    return not (spec.random_init or spec.weights) and bool(spec.name_or_path) and not local_source(spec.name_or_path)


def hub_revision(source: Optional[str], revision: Optional[str], key: str = "model.name_or_path") -> Optional[str]:
    """The commit to load a hub model or tokenizer from: its revision resolved (None = main, which
    moves), so that what is loaded is what the identity names; `revision` as given for local
    folders, or when nobody can tell (loading then says why)."""
    if not source or local_source(source, key):
        return revision
    return hub_commit(source, revision) or revision


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


def identity(spec: ModelSpec, config=None, hash_cache: Optional[Path] = None) -> dict:
    """Everything that determines a model's activations, from config alone (no weights loaded):
    a corpus mean fits a model only if every field is equal. Files count by content (fingerprint.py;
    their hashes cached in `hash_cache`), hub models by the commit their revision points to."""
    _check_gguf(spec)
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
        "layers": "all" if layer_ids == list(range(n_blocks)) else layer_ids,
        "prepend_bos": spec.prepend_bos,
        "max_tokens": max_tokens,
        "hidden_size": config.hidden_size,
    } | (_gguf_identity(spec, hash_cache) if spec.gguf else {})


def _check_gguf(spec: ModelSpec) -> None:
    given = [k for k in ("name_or_path", "revision", "weights", "arch", "random_init") if getattr(spec, k)]
    if spec.gguf and given:
        raise UserError(f"model.gguf={spec.gguf} holds the whole model, but model={spec.name} sets "
                        f"{', '.join('model.' + k for k in given)}: use model=hf model.gguf={spec.gguf}")


def _gguf_identity(spec: ModelSpec, hash_cache: Optional[Path]) -> dict:
    """The GGUF file by content, and its quantisation: the activations are the quantised model's."""
    made_from = gguf_model.info(gguf_model.converted(spec.gguf, hash_cache))
    return {"gguf": gguf_model.source_name(spec.gguf), "gguf_sha256": made_from["gguf_sha256"],
            "quantization": made_from["quantization"],
            # What is loaded: every file of the converted folder, its own tokenizer's included (a newer
            # transformers may convert differently). A model.tokenizer folder is in tokenizer_sha256.
            "converted_sha256": gguf_model.content_sha256(made_from)[:16]}


# Keys a loaded model's config gains or changes at load time: the identity names dtype itself, and a
# config read from its file (the client, before loading) must name the same architecture as the
# loaded model's (a Modal container, a run after its first forward pass).
LOAD_TIME_KEYS = {"transformers_version", "dtype", "torch_dtype", "_attn_implementation_autoset", "attn_implementation"}


def _config_sha256(config) -> str:
    values = {k: v for k, v in config.to_dict().items() if k not in LOAD_TIME_KEYS}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
    _check_gguf(spec)
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
    if layers == "all":
        return list(range(n_blocks))
    if isinstance(layers, int):
        layers = [layers]
    if isinstance(layers, str) or not all(isinstance(i, int) for i in layers) or len(layers) == 0:
        raise UserError(f"model.layers must be all or a list of block indices, got {layers!r}")
    bad = [i for i in layers if not -n_blocks <= i < n_blocks]
    if bad:
        raise UserError(f"model.layers {bad} out of range: the model has {n_blocks} blocks (0..{n_blocks - 1})")
    return sorted({i % n_blocks for i in layers})


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


def local_source(name_or_path: str, key: str = "model.name_or_path") -> Optional[str]:
    """The local directory meant by name_or_path (the setting `key`), or None for a hub id."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{key}={name_or_path} is a file: give the folder that holds it")
        return str(path)
    looks_like_path = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path
    if looks_like_path:
        help_ = "give a tokenizer folder or hub id" if key == "model.tokenizer" else HELP_MODELS
        raise UserError(f"{key}={name_or_path} does not exist: {help_}")
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load(loader, source: str, local: bool, what: str, **kwargs):
    """loader.from_pretrained(source): a local dir, else the hub cache, else the hub if reachable."""
    try:
        if local:
            return loader.from_pretrained(source, **kwargs)
        try:  # a cached hub checkpoint needs no network
            return loader.from_pretrained(source, local_files_only=True, **kwargs)
        except OSError:
            if not hub_reachable():  # fail in seconds instead of minutes of retries
                raise UserError(f"cannot download {what} {source!r}: the Hugging Face hub is unreachable "
                                f"and it is not cached; {HELP_MODELS}") from None
            return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError, SafetensorError) as e:  # SafetensorError: a damaged weight file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load {what} {source}: {reason}; {HELP_MODELS}") from None


def _pretrained_model(spec: ModelSpec, dtype, device, hash_cache: Optional[Path] = None):
    """Weights read straight onto the device on a GPU (device_map), so the host never holds the whole
    model (24 GB for Pythia-12B in bf16); on the CPU as they are."""
    from transformers import AutoModelForCausalLM

    on_device = {"device_map": str(device)} if device.type == "cuda" else {}
    if spec.gguf:
        folder = gguf_model.converted(spec.gguf, hash_cache)  # checked against what its conversion wrote
        return _load(AutoModelForCausalLM, str(folder), True, "converted GGUF model", dtype=dtype,
                     attn_implementation=spec.attn_implementation, **on_device).to(device)
    if not spec.name_or_path:
        raise UserError(f"model.name_or_path is empty: {HELP_MODELS}")
    local = local_source(spec.name_or_path)
    model = _load(AutoModelForCausalLM, local or spec.name_or_path, bool(local), "checkpoint" if local else "hub model",
                  revision=hub_revision(spec.name_or_path, spec.revision), dtype=dtype, attn_implementation=spec.attn_implementation,
                  trust_remote_code=spec.trust_remote_code, **on_device)
    return model.to(device)


def load_tokenizer(spec: ModelSpec, hash_cache: Optional[Path] = None):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if spec.tokenizer:
        source, key, revision = spec.tokenizer, "model.tokenizer", None
    elif spec.gguf:  # the GGUF file's own tokenizer, converted with its weights
        return _load(AutoTokenizer, str(gguf_model.converted(spec.gguf, hash_cache)), True, "converted GGUF tokenizer")
    elif not (spec.random_init or spec.weights):
        source, key, revision = spec.name_or_path, "model.name_or_path", spec.revision
    else:  # random or bundled weights: the bundled tokenizer, so the vectors depend on nothing downloaded
        return PreTrainedTokenizerFast(tokenizer_file=str(BUNDLED_TOKENIZER),
                                       bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    revision = hub_revision(source, revision, key)
    local = local_source(source, key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _load(AutoTokenizer, local or source, bool(local), "tokenizer", revision=revision,
                     trust_remote_code=spec.trust_remote_code)
