"""Content identities of what a model is made of: files, checkpoint folders, tokenizers, hub commits.

A file is identified by the sha256 of its bytes, never by its name, size or modification time
(`os.utime` sets a modification time back; retrained weights of the same shapes have the same
size and safetensors header). Hashing gigabytes of weights on every run would cost seconds per
gigabyte, so a file's hash is cached under a key that every write changes: its device, inode,
size, mtime_ns and ctime_ns (the change time, which no user call can set back). The cache is one
small file per key in `<cache>/` (the artifact store's `hashes/`), so it survives processes.

A hub model is identified by the commit its revision points to (`main` moves): the commit of the
snapshot in the local Hugging Face cache, else the hub's answer when it is reachable.
"""

import functools
import hashlib
import re
from pathlib import Path
from typing import Iterable, Optional

from ..errors import UserError
from .io import write_text


CACHE_FROM = 1 << 20  # smaller files are hashed each time: that is as quick as looking them up


@functools.lru_cache(maxsize=256)
def _sha256(path: str, key: tuple) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path, cache: Optional[Path] = None) -> str:
    """The sha256 of a file's bytes, computed once per version of the file (see the module's doc)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if cache is None or st.st_size < CACHE_FROM:
        return _sha256(str(path), key)
    entry = Path(cache) / hashlib.sha256(repr(key).encode()).hexdigest()[:32]
    try:
        cached = entry.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{64}", cached):
            return cached
    except OSError:
        pass
    digest = _sha256(str(path), key)
    st = path.stat()
    if key != (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
        return digest  # written while we read it: the hash may mix two versions, so keep it for no one
    try:
        write_text(entry, digest + "\n")  # atomic: two processes write the same bytes
    except (OSError, UserError):
        pass  # a read-only or full store: hash again next time
    return digest


def folder_sha256(folder: Path, suffixes: Iterable[str], cache: Optional[Path] = None) -> str:
    """A hash of the relative paths and contents of a folder's files with these suffixes, subfolders
    included, except hidden ones (a .cache of downloads) and a trainer's checkpoint-N folders (the
    folder's own files are what loads)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in tuple(suffixes)
                   and not any(part.startswith((".", "checkpoint-")) for part in p.relative_to(folder).parts[:-1])
                   and not p.name.startswith("."))
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(folder).as_posix()}\0{file_sha256(f, cache)}\0".encode())
    return h.hexdigest()
