"""Where the forward pass runs (this machine or Modal); imports data, report, models, store and below,
never jobs. A run opens one backend with `open_backend(cfg)`; jobs never import a backend directly."""

import contextlib

from ..errors import UserError
from ..models.identity import model_identity


def make_backend(cfg):
    if cfg.hardware.backend == "local":
        from .local import LocalBackend

        return LocalBackend.from_config(cfg)
    if cfg.hardware.backend == "modal":
        from .remote import ModalBackend

        return ModalBackend.from_config(cfg)
    raise UserError(f"unknown hardware.backend {cfg.hardware.backend!r}: use local or modal")


class LazyBackend:
    """The backend of one run, built by the first call below that needs it, so a job that computes
    nothing (plot, analyze from CSVs) needs no Modal credentials; every stage of the run shares it.
    `metadata` builds nothing. A local backend then loads its model at the first forward pass
    (LocalBackend.lm), a Modal one connects at its first remote call. These methods are the
    backend interface that jobs use; nothing else is forwarded."""

    def __init__(self, cfg):
        self._cfg, self._backend = cfg, None

    @property
    def built(self):
        """The real backend, built now if it was not yet."""
        if self._backend is None:
            self._backend = make_backend(self._cfg)
        return self._backend

    @property
    def metadata(self) -> dict:
        """The model identity, from config (models/identity.py)."""
        if self._backend is not None:
            return self._backend.metadata
        return model_identity(self._cfg)

    def vectors(self, texts, chunks, mean=None):
        return self.built.vectors(texts, chunks, mean)

    def centred_by_definition(self, texts, chunks, mean, which):
        """None where the model runs elsewhere (Modal): its stream is not here to pool."""
        method = getattr(self.built, "centred_by_definition", None)
        return None if method is None else method(texts, chunks, mean, which)

    def extract_shards(self, shards, stats):
        return self.built.extract_shards(shards, stats)

    def shard_headers(self, stats):
        return self.built.shard_headers(stats)

    def aggregate(self, stats, n_shards, min_count, tail_start, checkpoint_every):
        return self.built.aggregate(stats, n_shards, min_count, tail_start, checkpoint_every)

    def store_shards(self, shards, layout, chunks, mean):
        return self.built.store_shards(shards, layout, chunks, mean)

    def store_headers(self, layout):
        return self.built.store_headers(layout)

    def finish_store(self, layout, headers, download):
        return self.built.finish_store(layout, headers, download)

    def saved_shards(self, layout):
        """How many shards of `layout` (means.Stats or StoreLayout) are saved now, or None where they
        are saved elsewhere (a Modal volume) or nothing was built yet: what an interrupted job says it kept."""
        method = getattr(self._backend, "saved_shards", None)
        return None if method is None else method(layout)

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
