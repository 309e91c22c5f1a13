"""Atomic writes: a file appears whole under its final name or not at all."""

import json
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional

import torch
from safetensors.torch import save as safetensors_bytes


def write_bytes(path: Path, data: bytes) -> Path:
    """Write to a temp file in the same folder, fsync it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_safetensors(path: Path, tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> Path:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return write_bytes(path, safetensors_bytes(tensors, metadata=metadata))
