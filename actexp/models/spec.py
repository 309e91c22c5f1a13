"""Which model a config names (ModelSpec: the `model` group as plain values), its dtype, and the
files it names (a local folder, a weights file, the bundled tiny model), checked before anything loads."""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import UserError
from .prompting import Prompt

BUNDLED_TOKENIZER = Path(__file__).parent.parent / "assets" / "tiny_tokenizer.json"

# The trained weights of model=tiny (scripts/train_tiny.py), named `model.weights=bundled`.
BUNDLED_WEIGHTS = Path(__file__).parent.parent / "assets" / "tiny_model.safetensors"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

HELP_MODELS = "use model=tiny (offline), or model=hf model.name_or_path=/path/to/checkpoint"

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
    prompt: Optional[dict] = None  # the prompt group's values (prompting.Prompt); None: the bare text

    @classmethod
    def from_config(cls, model_cfg, hardware_cfg, prompt_cfg=None) -> "ModelSpec":
        """From the model, hardware and prompt groups: model.dtype, else the hardware's."""
        from omegaconf import OmegaConf

        values = OmegaConf.to_container(model_cfg, resolve=True)
        values["dtype"] = values["dtype"] or hardware_cfg.dtype
        torch_dtype(values["dtype"])  # refuse an unknown name before anything runs
        prompt = Prompt(**OmegaConf.to_container(prompt_cfg, resolve=True)) if prompt_cfg is not None else Prompt()
        return cls(**values, prompt=prompt.record())

    def prompt_of(self) -> Prompt:
        return Prompt(**self.prompt) if self.prompt else Prompt()

    def to_dict(self) -> dict:
        return asdict(self)

def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[name]

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

def check_gguf(spec: ModelSpec) -> None:
    given = [k for k in ("name_or_path", "revision", "weights", "arch", "random_init") if getattr(spec, k)]
    if spec.gguf and given:
        raise UserError(f"model.gguf={spec.gguf} holds the whole model, but model={spec.name} sets "
                        f"{', '.join('model.' + k for k in given)}: use model=hf model.gguf={spec.gguf}")

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
