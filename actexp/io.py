"""Files: atomic writes (a file appears whole under its final name or not at all) and vector CSVs
with their JSON sidecars (the csv job writes them; compare, plot and visualize read them)."""

import csv
import errno
import functools
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from safetensors.torch import save as safetensors_bytes

from .errors import UserError


@functools.lru_cache(maxsize=1)
def umask() -> int:
    """The process's umask (reading it means setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode open() gives a new file: 0o666 less the umask."""
    return 0o666 & ~umask()


def write_bytes(path: Path, data) -> Path:
    """Write data (bytes or any buffer) to a temp file in the same folder, fsync it, then rename it
    over `path`. The file gets the permissions a plain open() would give (mkstemp's are 0600:
    teammates could not read outputs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES):
            space = e.errno not in (errno.EROFS, errno.EACCES)
            raise UserError(f"cannot write {path}: {e.strerror}: {'free some space, or ' if space else ''}write "
                            "elsewhere (paths.artifacts=DIR, hydra.run.dir=DIR)") from None
        raise
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
