"""Post-processing statistics as artifacts: the postprocess.Fit of each chunk over a fit set's
vectors, kept like the corpus mean in the artifact store, fits/<fit-id>/fit.safetensors, with a
checksum of its tensors in the header, written atomically under a lock, and reused by every run
whose fit identity (model, pooling, fit set by content, raw or centred and the mean by checksum)
is the same. The header holds the identity too, and a reused fit must match it field by field:
the hash in the folder's name only finds the file, it proves nothing about what is inside.

Format 2 keeps each chunk's eigenvectors up to the fit set's rank, [H, min(H, N - 1)] (format 1,
unversioned, kept all H); the format is part of the identity, so a fit of format 1 is never
looked up, and one copied into a format-2 folder is refused.
"""

import json
import logging
import re
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from ..errors import UserError
from ..maths import postprocess
from .layout import digest, model_label
from .layout import mismatch
from .layout import root as store_root
from .locks import folder_lock, made_once, remove_temp_files
from .tensors import read_checked, read_header, write_checked

log = logging.getLogger(__name__)
FIT_FILE = "fit.safetensors"
FORMAT = 2


def stored_identity(identity: dict) -> dict:
    """What names and heads a fit file: the identity the run asks for and the file's format, as JSON
    gives it back (tuples as lists)."""
    return json.loads(json.dumps({"format": FORMAT} | identity))


def fit_path(artifacts, identity: dict) -> Path:
    fit_set = re.sub(r"[^A-Za-z0-9._-]+", "_", identity["fit_set"]["name"])
    name = f"{model_label(identity['model'])}__{fit_set}__{identity['base']}__{digest(stored_identity(identity))}"
    return store_root(artifacts) / "fits" / name / FIT_FILE


def foreign(header: dict, identity: dict) -> Optional[str]:
    """The first field of `identity` where a fit's header differs, described; None if it is this fit."""
    for key, value in stored_identity(identity).items():
        found = header.get(key)
        if found != value:
            differs = mismatch(found, value) if key == "model" and isinstance(found, dict) else None
            return f"model {differs}" if differs else f"{key}={json.dumps(found)} (this run asks for {json.dumps(value)})"
    return None


def _fit_and_write(path: Path, identity: dict, x, n_chunks: int):
    """Fit each chunk of x [N, C*H] (or each of a sequence of parts [N, H], maths/parts.py) and write the
    fits; call it holding the folder's lock."""
    fits = [postprocess.fit(part) for part in (postprocess.per_chunk(x, n_chunks) if isinstance(x, np.ndarray) else x)]
    tensors = {f"{k}{c}": torch.from_numpy(getattr(f, k)) for c, f in enumerate(fits) for k in ("mean", "eigvals", "eigvecs")}
    remove_temp_files(path)
    return fits, path, write_checked(path, tensors, stored_identity(identity) | {"count": fits[0].count})


def _read(path: Path, identity: dict, names: Tuple[str, ...]):
    """(tensors, header) of the stored fit, or None if there is none or it is damaged. A file of another
    identity is refused before its tensors are read, so it is never taken for a damaged one and overwritten."""
    if not path.is_file():
        return None
    header = read_header(path)
    differs = foreign(header, identity) if header is not None else None
    if differs:
        raise UserError(f"{path} holds another fit than this folder's: it has {differs}; "
                        f"remove {path.parent} and run again to fit it anew")
    return read_checked(path, names)


def load_or_fit(artifacts, identity: dict, vectors: Callable[[], np.ndarray], n_chunks: int
                ) -> Tuple[List[postprocess.Fit], Path, str]:
    """The fits of `identity` (one per chunk), their file and its tensors' checksum: read if stored,
    else fitted on vectors() [N, C*H] and stored. A stored file of another identity is refused."""
    path = fit_path(artifacts, identity)

    def fit():
        if path.is_file():
            log.warning("%s is unreadable or does not match its checksum: fitting it again", path)
        return _fit_and_write(path, identity, vectors(), n_chunks)

    return made_once(lambda: _stored(path, identity, n_chunks), lambda: folder_lock(path.parent, "fit"), fit)


def _stored(path: Path, identity: dict, n_chunks: int) -> Optional[Tuple[List[postprocess.Fit], Path, str]]:
    """load_or_fit's answer from the stored file, or None if there is none or it is damaged."""
    names = tuple(f"{k}{c}" for c in range(n_chunks) for k in ("mean", "eigvals", "eigvecs"))
    stored = _read(path, identity, names)
    if stored is None:
        return None
    tensors, header = stored
    fits = [postprocess.Fit(*(tensors[f"{k}{c}"].numpy() for k in ("mean", "eigvals", "eigvecs")), header["count"])
            for c in range(n_chunks)]
    log.info("reusing the %s fit on %s (%d texts): %s", identity["base"], identity["fit_set"]["name"],
             header["count"], path)
    return fits, path, header["sha256"]
