"""Files: atomic writes (a file appears whole under its final name or not at all) and vector CSVs
with their JSON sidecars (the csv job writes them; compare, plot and visualize read them)."""

import csv
import errno
import functools
import io
import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from safetensors.torch import save as safetensors_bytes

from ..errors import UserError


@functools.lru_cache(maxsize=1)
def umask() -> int:
    """The process's umask (reading it means setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode open() gives a new file: 0o666 less the umask."""
    return 0o666 & ~umask()


# A temp file's name says who writes it: .<name>.<pid>@<host>@<boot>-<pid namespace>.<random>.tmp.
# Writers that take no lock (the hash cache, the corpus scan cache, run outputs) cannot tell a
# killed writer's temp file from a live one's by the lock, so they tell it by its writer: on this
# host, since this boot, in this pid namespace, a writer whose pid is gone is dead, and its file is
# removed. A pid reused by another process keeps a dead writer's file (until that process ends too):
# never the reverse. Another machine's (or container's) process cannot be asked, so its files are
# removed only once they are a day old; one write of bytes already in memory never lasts that long.
# Host names can repeat, and every machine's first pid namespace has the same inode: the boot id
# (random per boot, the same in every container of one host) tells machines apart.
TEMP = re.compile(r"\.(\d+)@([A-Za-z0-9-]+)@([0-9a-f]{8}-\d+|\d+)\.[A-Za-z0-9_]+\.tmp\Z")
FOREIGN_STALE_AFTER = 24 * 3600  # seconds


@functools.lru_cache(maxsize=1)
def _where() -> str:
    """This host, boot and pid namespace, as a temp file's name holds them (the pid is asked each time: forks)."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:8]
    except OSError:
        boot = "0" * 8
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{host}@{boot}-{namespace}"


def temp_prefix(path: Path) -> str:
    """The start of the name of a temp file that this process writes for `path`."""
    return f".{Path(path).name}.{os.getpid()}@{_where()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def remove_dead_writers_files(folder: Path) -> None:
    """Remove the temp files in `folder` whose writer is known to be dead (see TEMP above)."""
    here, now = _where(), time.time()
    with os.scandir(folder) as entries:
        for entry in entries:
            found = TEMP.search(entry.name) if entry.name.startswith(".") else None
            if found is None:
                continue
            pid, where = int(found.group(1)), f"{found.group(2)}@{found.group(3)}"
            try:
                stale = not _alive(pid) if where == here else now - entry.stat().st_mtime > FOREIGN_STALE_AFTER
                if stale:
                    os.unlink(entry.path)
            except OSError:  # gone already (another process swept it), or not ours to remove
                pass


def remove_dead_writers_files_below(folder: Path) -> None:
    """remove_dead_writers_files in each folder directly below `folder`: the run folders beside a new
    run, where a killed run's temp files would otherwise stay (no later run writes into its folder)."""
    try:
        with os.scandir(folder) as entries:
            below = [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for sub in below:
        _sweep_once(sub)


_swept = set()  # (pid, folder): the folders whose dead writers' files this process removed; once is enough


def _sweep_once(folder: Path) -> None:
    key = (os.getpid(), folder)  # a forked child is another process: it sweeps again
    if key not in _swept:
        _swept.add(key)
        try:
            remove_dead_writers_files(folder)
        except OSError:
            pass


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable: without it a crash can lose the new name (ext4, XFS). Some
    file systems cannot sync a folder (EINVAL): the file itself is synced already."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: Path, data) -> Path:
    """Write data (bytes or any buffer) to a temp file in the same folder, fsync it, rename it over
    `path`, and fsync the folder, so the new name survives a crash too. The file gets the permissions
    a plain open() would give (mkstemp's are 0600: teammates could not read outputs). The folder's
    first write in this process also removes the temp files of writers that died (TEMP above)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES):
            space = e.errno not in (errno.EROFS, errno.EACCES)
            raise UserError(f"cannot write {path}: {e.strerror}: {'free some space, or ' if space else ''}write "
                            "elsewhere (paths.artifacts=DIR, hydra.run.dir=DIR)") from None
        raise
    _sweep_once(path.parent.resolve())
    return path


def package_folder(package: str) -> Optional[Path]:
    """The folder of an installed Python package, found without importing it (a data wheel's
    __init__ may import dependencies that were deliberately not installed); None if not installed."""
    import importlib.util

    found = importlib.util.find_spec(package)
    return None if found is None or not found.submodule_search_locations else Path(list(found.submodule_search_locations)[0])


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_safetensors(path: Path, tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> Path:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return write_bytes(path, safetensors_bytes(tensors, metadata=metadata))


def vectors_csv_path(out_dir, mode: str, variant: str) -> Path:
    """The csv job's file name: vectors_<mode>_mode_<raw|centered>.csv (its sidecar: .json)."""
    return Path(out_dir) / f"vectors_{mode}_mode_{variant}.csv"


def write_matrix_csv(path: Path, vectors: torch.Tensor, names: Sequence[str]) -> Path:
    """Vectors [N, D] as a CSV with one column per vector and one row per dim (first column `dim`).

    '%.9g' keeps every float32 exactly: 9 significant digits round-trip any float32.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dim", *names])
    for d, row in enumerate(vectors.to(torch.float32).T.tolist()):
        writer.writerow([d, *("%.9g" % x for x in row)])
    return write_text(path, buf.getvalue())


def read_matrix_csv(path: Path) -> Tuple[torch.Tensor, List[str]]:
    """(vectors [N, D] float32, column names) of a CSV written by write_matrix_csv."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        header, body = rows[0], rows[1:]
        if not header or header[0] != "dim" or len(header) < 2:
            raise ValueError("the first row must be dim,<sample>,...")
        values = torch.tensor([[float(x) for x in r[1:]] for r in body], dtype=torch.float32)  # [D, N]
        if values.shape != (len(body), len(header) - 1):
            raise ValueError("rows have different lengths")
    except (OSError, UnicodeDecodeError, ValueError, IndexError, RuntimeError) as e:
        raise UserError(f"{path} is not a vector CSV of the csv job ({e})") from None
    return values.T.contiguous(), header[1:]


def read_vectors_csv(path: Path):
    """(vectors [N, D] float32 numpy, names, sidecar dict or {}) of a csv job's CSV."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist: run job=csv first or give the path of a vectors CSV")
    vectors, names = read_matrix_csv(path)
    sidecar = path.with_suffix(".json")
    return vectors.numpy(), names, json.loads(sidecar.read_text()) if sidecar.is_file() else {}
