"""Where the forward pass runs. Jobs call `make_backend(cfg)` and never import a backend directly."""

from ..errors import UserError


def make_backend(cfg):
    if cfg.hardware.backend == "local":
        from .local import LocalBackend

        return LocalBackend(cfg.model, cfg.hardware)
    if cfg.hardware.backend == "modal":
        from .remote import ModalBackend

        return ModalBackend(cfg)
    raise UserError(f"unknown hardware.backend {cfg.hardware.backend!r}: use local or modal")
