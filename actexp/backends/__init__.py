"""Where the forward pass runs. A run opens one backend with `open_backend(cfg)`; jobs never
import a backend directly."""

import contextlib

from ..errors import UserError


def make_backend(cfg):
    if cfg.hardware.backend == "local":
        from .local import LocalBackend

        return LocalBackend.from_config(cfg)
    if cfg.hardware.backend == "modal":
        from .remote import ModalBackend

        return ModalBackend.from_config(cfg)
    raise UserError(f"unknown hardware.backend {cfg.hardware.backend!r}: use local or modal")


class LazyBackend:
    """The backend of one run, built on first use: a job that needs no model (plot, a progress
    report) loads none and needs no Modal credentials. Every stage of the run shares it."""

    def __init__(self, cfg):
        self._cfg, self._backend = cfg, None

    @property
    def built(self):
        """The real backend, built now if it was not yet."""
        if self._backend is None:
            self._backend = make_backend(self._cfg)
        return self._backend

    def __getattr__(self, name):
        return getattr(self.built, name)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None


@contextlib.contextmanager
def open_backend(cfg):
    """One model load and one Modal app context per run, released however the run ends."""
    backend = LazyBackend(cfg)
    try:
        yield backend
    finally:
        backend.close()
