"""What several jobs share: pooling chunks from config and the metadata every output carries."""

from typing import List

from omegaconf import OmegaConf

from .. import __version__
from ..errors import UserError
from ..pooling import Chunk


def chunks(pooling_cfg) -> List[Chunk]:
    if not pooling_cfg.chunks:
        raise UserError(f"pooling={pooling_cfg.name} has no chunks: give pooling.chunks a list of {{kind, alpha}}")
    try:
        return [Chunk(c.kind, c.alpha) for c in pooling_cfg.chunks]
    except ValueError as e:
        raise UserError(f"pooling={pooling_cfg.name}: {e}") from None


def metadata(cfg, backend) -> dict:
    """Model, pooling and centring: what determines a vector."""
    return {
        "actexp_version": __version__,
        "model": backend.metadata,
        "pooling": {"name": cfg.pooling.name, "chunks": OmegaConf.to_container(cfg.pooling.chunks),
                    "labels": [c.label for c in chunks(cfg.pooling)]},
        "centering": {"name": cfg.centering.name, "mean": None},
    }
