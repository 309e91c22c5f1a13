"""Checked tensor files: safetensors written atomically with the sha256 of their tensors and a JSON
header, read back only if the checksum matches (corpus means, their shards, post-processing fits)."""

import hashlib
import json
import struct
from pathlib import Path
from typing import Iterable, Optional, Tuple

import torch
from safetensors import SafetensorError, safe_open

from .io import write_safetensors


def _tensors_sha256(tensors: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(torch.uint8).numpy())  # the buffer itself: no copy of a GB fit
    return h.hexdigest()


def write_checked(path: Path, tensors: dict, meta: dict) -> str:
    """Write tensors atomically with their checksum in the header; the checksum."""
    tensors = {k: v.cpu() for k, v in tensors.items()}
    digest = _tensors_sha256(tensors)
    write_safetensors(path, tensors, {k: json.dumps(v) for k, v in meta.items()} | {"sha256": digest})
    return digest


def _decode(metadata: Optional[dict]) -> dict:
    """A header as written by write_checked: JSON values, and the checksum as a plain string."""
    return {k: v if k == "sha256" else json.loads(v) for k, v in (metadata or {}).items()}


def read_checked(path: Path, names: Tuple[str, ...], optional: Tuple[str, ...] = ()) -> Optional[Tuple[dict, dict]]:
    """(tensors, header) of a file written by write_checked, or None if missing, truncated or corrupt."""
    try:
        with safe_open(str(path), "pt") as f:
            header = _decode(f.metadata())
            tensors = {k: f.get_tensor(k) for k in names + tuple(k for k in optional if k in f.keys())}
        return (tensors, header) if header.get("sha256") == _tensors_sha256(tensors) else None
    except (SafetensorError, OSError, KeyError, ValueError):
        return None


def read_header(path: Path) -> Optional[dict]:
    """The metadata of a safetensors file without reading its tensors, or None if unreadable."""
    try:
        with safe_open(str(path), "pt") as f:
            return _decode(f.metadata())
    except (SafetensorError, OSError, ValueError):
        return None


def header_of_stream(chunks: Iterable[bytes]) -> dict:
    """The metadata of a safetensors file from the first chunks of its bytes (the rest is not read)."""
    data, need = b"", None
    for chunk in chunks:
        data += chunk
        if need is None and len(data) >= 8:
            need = 8 + struct.unpack("<Q", data[:8])[0]
        if need is not None and len(data) >= need:
            return _decode(json.loads(data[8:need]).get("__metadata__"))
    raise ValueError("truncated safetensors header")
