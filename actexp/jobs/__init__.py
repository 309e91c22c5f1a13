"""One module per job, each exposing `run(cfg, out_dir, tracker, backend) -> dict of metrics`; imports
backends and everything below, never run.py or api.py."""

import importlib
from pathlib import Path

from ..backends import open_backend
from ..config import ranges
from ..config.suggest import check_keys
from ..errors import UserError
from ..report.tracking import NULL

PER_BLOCK = ("sts", "mean")  # the jobs that take model.layers=each's one vector per block
NAMES = ("extract", "similarity", "mean", "store", "csv", "compare", "plot", "visualize", "analyze", "neighbors",
         "pipeline", "bench", "sts")


def get(name: str):
    if name not in NAMES:
        raise UserError(f"unknown job {name!r}: use one of {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{name}").run


def check(name: str, cfg):
    """The job, once its name, every key and every number of the config are known to be valid."""
    job = get(name)
    check_keys(cfg)
    ranges.check(cfg)
    if cfg.model.get("layers") == "each" and name not in PER_BLOCK:
        raise UserError(f"model.layers=each gives one vector per block, which job={name} cannot use: use it with "
                        f"{' or '.join('job=' + j for j in PER_BLOCK)}, or give model.layers=all or a list of blocks")
    if cfg.get("prompt") and cfg.prompt.chat:  # before a mean or a sweep's work: the tokenizer alone says
        from ..models.tokenizing import load_tokenizer
        from ..store.layout import hash_cache
        from .common import model_spec

        spec = model_spec(cfg)
        spec.prompt_of().pieces(load_tokenizer(spec, hash_cache(cfg.paths.artifacts)))
    return job


def run(name: str, cfg, out_dir, tracker=NULL, backend=None) -> dict:
    """Run a job; without a backend it opens one for the run and closes it at the end."""
    job = check(name, cfg)
    if backend is not None:
        return job(cfg, Path(out_dir), tracker, backend)
    with open_backend(cfg) as opened:
        return job(cfg, Path(out_dir), tracker, opened)
