"""The Hugging Face hub, only when needed: whether it is reachable, the commit a revision points to
(`main` moves, so a hub model is identified by its commit), and loading from a local folder, the hub's
cache, or the hub itself, in that order."""

import functools
import os
import socket
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from safetensors import SafetensorError

from ..errors import UserError
from ..store.io import write_text
from ..store.layout import COMMIT
from .spec import HELP_MODELS, local_source


def hub_revision(source: Optional[str], revision: Optional[str], key: str = "model.name_or_path") -> Optional[str]:
    """The commit to load a hub model or tokenizer from: its revision resolved (None = main, which
    moves), so that what is loaded is what the identity names; `revision` as given for local
    folders, or when nobody can tell (loading then says why)."""
    if not source or local_source(source, key):
        return revision
    return hub_commit(source, revision) or revision


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_pretrained(loader, source: str, local: bool, what: str, **kwargs):
    """loader.from_pretrained(source): a local dir, else the hub cache, else the hub if reachable."""
    try:
        if local:
            return loader.from_pretrained(source, **kwargs)
        try:  # a cached hub checkpoint needs no network
            return loader.from_pretrained(source, local_files_only=True, **kwargs)
        except OSError:
            if not hub_reachable():  # fail in seconds instead of minutes of retries
                raise UserError(f"cannot download {what} {source!r}: the Hugging Face hub is unreachable "
                                f"and it is not cached; {HELP_MODELS}") from None
            return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError, SafetensorError) as e:  # SafetensorError: a damaged weight file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load {what} {source}: {reason}; {HELP_MODELS}") from None


@functools.lru_cache(maxsize=32)
def hub_commit(repo_id: str, revision: Optional[str]) -> Optional[str]:
    """The commit a hub revision (None = main) points to: a commit as it is, the local cache's
    ref, else the hub's answer if reachable; None if nobody can tell."""
    if revision and COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / (revision or "main")
    if ref.is_file():
        return ref.read_text().strip()
    if not hub_reachable():
        return None
    from huggingface_hub import HfApi

    try:
        commit = HfApi().model_info(repo_id, revision=revision).sha
    except Exception:  # a wrong id or revision: loading says so in one line
        return None
    try:  # as the hub client does for a branch: the next offline run finds the same commit
        write_text(ref, commit)
    except (OSError, UserError):
        pass
    return commit
