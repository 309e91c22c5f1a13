"""Cross-process locks of the store and what is done under them: removing the temp files a killed
writer left, computing a file once when several processes want it, and rewriting a manifest only
when it changes (so finished files stay usable on read-only media).

Files are written whole (io.write_bytes), so a reader needs no lock: only a writer takes one."""

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Callable, ContextManager, Optional, TypeVar

from filelock import FileLock

from ..errors import UserError
from .io import write_json
from .layout import MANIFEST


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


T = TypeVar("T")


def made_once(read: Callable[[], Optional[T]], lock: Callable[[], ContextManager], make: Callable[[], T]) -> T:
    """What read() finds; else, holding lock(), what read() finds now (another process may have made
    it while this one waited); else what make() makes. A finished file is read without a lock, as on
    read-only media, and several processes that want the same file compute it once."""
    found = read()
    if found is not None:
        return found
    with lock():
        found = read()
        return found if found is not None else make()


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
