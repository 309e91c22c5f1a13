"""Post-processing statistics as artifacts: the postprocess.Fit of each chunk over a fit set's
vectors, kept like the corpus mean in the artifact store, fits/<fit-id>/fit.safetensors, with a
checksum of its tensors in the header, written atomically under a lock, and reused by every run
whose fit identity (model, pooling, fit set by content, raw or centred and the mean by checksum)
is the same.
"""

import logging
import re
from pathlib import Path
from typing import Callable, List, Tuple

import numpy as np
import torch

from . import postprocess
from .artifacts import read_checked, write_checked
from .storage import digest, folder_lock, model_label, remove_temp_files
from .storage import root as store_root

log = logging.getLogger(__name__)
FIT_FILE = "fit.safetensors"


def fit_path(artifacts, identity: dict) -> Path:
    fit_set = re.sub(r"[^A-Za-z0-9._-]+", "_", identity["fit_set"]["name"])
    name = f"{model_label(identity['model'])}__{fit_set}__{identity['base']}__{digest(identity)}"
    return store_root(artifacts) / "fits" / name / FIT_FILE


def _fit_and_write(path: Path, identity: dict, x: np.ndarray, n_chunks: int):
    """Fit each chunk of x [N, C*H] and write the fits; call it holding the folder's lock."""
    h = x.shape[1] // n_chunks
    fits = [postprocess.fit(x[:, c * h:(c + 1) * h]) for c in range(n_chunks)]
    tensors = {f"{k}{c}": torch.from_numpy(getattr(f, k)) for c, f in enumerate(fits) for k in ("mean", "eigvals", "eigvecs")}
    remove_temp_files(path)
    return fits, path, write_checked(path, tensors, identity | {"count": len(x)})


def load_or_fit(artifacts, identity: dict, vectors: Callable[[], np.ndarray], n_chunks: int
                ) -> Tuple[List[postprocess.Fit], Path, str]:
    """The fits of `identity` (one per chunk), their file and its tensors' checksum: read if stored,
    else fitted on vectors() [N, C*H] and stored."""
    path = fit_path(artifacts, identity)
    names = tuple(f"{k}{c}" for c in range(n_chunks) for k in ("mean", "eigvals", "eigvecs"))
    stored = read_checked(path, names) if path.is_file() else None  # a finished fit is read without a lock
    if stored is None:
        # Fitted under the lock: a second run with the same identity waits, then reuses this one.
        with folder_lock(path.parent, "fit"):
            stored = read_checked(path, names) if path.is_file() else None
            if stored is None:
                if path.is_file():
                    log.warning("%s is unreadable or does not match its checksum: fitting it again", path)
                return _fit_and_write(path, identity, vectors(), n_chunks)
    tensors, header = stored
    fits = [postprocess.Fit(*(tensors[f"{k}{c}"].numpy() for k in ("mean", "eigvals", "eigvecs")), header["count"])
            for c in range(n_chunks)]
    log.info("reusing the %s fit on %s (%d texts): %s", identity["base"], identity["fit_set"]["name"],
             header["count"], path)
    return fits, path, header["sha256"]
