"""What both artifact stores (artifacts.py: corpus means; vector_store.py: corpus vectors) are built
from: the store's root, readable ids, cross-process locks, temp-file cleanup, and manifests that are
rewritten only when they change, so finished files stay usable on read-only media.

Files are written whole (io.write_bytes), so a reader needs no lock: only a writer takes one.
"""

import contextlib
import errno
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Optional

from filelock import FileLock

from .errors import UserError
from .fingerprint import COMMIT
from .io import write_json

MANIFEST = "manifest.json"


def root(artifacts) -> Path:
    """The store's folder as an absolute path (paths.artifacts may be relative or start with ~)."""
    return Path(artifacts).expanduser().resolve()


def hash_cache(artifacts) -> Path:
    """Where the hashes of model files are kept between runs (fingerprint.file_sha256)."""
    return root(artifacts) / "hashes"


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def model_label(m: dict) -> str:
    """A model identity, readable: model, revision or seed, layers, BOS, max_tokens, dtype."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(m["model"])).strip("_")[-40:]
    revision = (m["revision"][:8] if COMMIT.fullmatch(m["revision"] or "") else m["revision"]) or (
        f"seed{m['seed']}" if m["random_init"] else f"w{m['weights'][:8]}" if m.get("weights") else
        f"{m['quantization']}-g{m['gguf_sha256'][:8]}" if m.get("gguf_sha256") else
        f"c{m['checkpoint'][:8]}" if m.get("checkpoint") else "main")
    layers = "all" if m["layers"] == "all" else "L" + "_".join(map(str, m["layers"]))
    bos = "bos" if m["prepend_bos"] else "nobos"
    return f"{name}-{revision}-{layers}-{bos}-T{m['max_tokens']}-{m['dtype']}"


def folder_lock(folder: Path, name: str, locking: bool = True):
    """A cross-process lock named `name` in folder/.locks (FileLock), or a no-op where files cannot be
    locked. A folder this process cannot write to is one UserError: it needs no lock to be read."""
    if not locking:
        return _NoLock()
    locks = folder / ".locks"
    try:
        locks.mkdir(parents=True, exist_ok=True)
        writable = os.access(locks, os.W_OK)
        reason = os.strerror(errno.EROFS if os.statvfs(locks).f_flag & os.ST_RDONLY else errno.EACCES)
    except OSError as e:
        writable, reason = False, e.strerror
    if not writable:
        raise UserError(f"cannot write to {folder} ({reason}): this run must add a file there; the finished files "
                        "of a read-only store are used as they are, so write new ones elsewhere with paths.artifacts=DIR")
    return FileLock(locks / f"{name}.lock")


class _NoLock(contextlib.nullcontext):
    def acquire(self, blocking: bool = True) -> bool:
        return True

    def release(self) -> None:
        pass


def remove_temp_files(path: Path) -> None:
    """Remove the temp files a killed write of `path` left behind; call it holding path's lock."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def write_manifest(folder: Path, content: dict, lock, same=lambda old, new: old == new) -> Optional[Path]:
    """folder/manifest.json holding `content`, written under lock() unless the one there is the
    same(old, new) already (by default: equal); the path if it was written, else None."""
    path = folder / MANIFEST
    with contextlib.suppress(OSError, ValueError):
        if same(json.loads(path.read_text()), json.loads(json.dumps(content))):
            return None
    with lock():
        remove_temp_files(path)
        return write_json(path, content)
