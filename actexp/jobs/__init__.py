"""One module per job, each exposing `run(cfg, out_dir) -> dict of metrics`."""

import importlib

from ..errors import UserError

NAMES = ("extract", "similarity", "mean", "csv", "compare", "plot", "visualize", "pipeline", "bench")


def get(name: str):
    if name not in NAMES:
        raise UserError(f"unknown job {name!r}: use one of {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{name}").run
