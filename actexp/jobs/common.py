"""What several jobs share: pooling chunks from config, the corpus mean to centre with, and the
metadata every output carries."""

import shlex
from pathlib import Path
from typing import List, Optional

from omegaconf import OmegaConf

from .. import __version__
from ..artifacts import find_means, load_mean, mismatch
from ..artifacts import root as store_root
from ..centering import CorpusMean
from ..errors import UserError
from ..io import read_vectors_csv, vectors_csv_path
from ..model import ModelSpec, identity
from ..pooling import Chunk

# Overrides that decide which corpus mean fits: repeated in the command we suggest.
MEAN_GROUPS = ("model", "hardware", "corpus", "paths", "centering.min_count", "centering.tail_start")


def chunks(pooling_cfg) -> List[Chunk]:
    if not pooling_cfg.chunks:
        raise UserError(f"pooling={pooling_cfg.name} has no chunks: give pooling.chunks a list of {{kind, alpha}}")
    try:
        return [Chunk(c.kind, c.get("alpha")) for c in pooling_cfg.chunks]
    except ValueError as e:
        raise UserError(f"pooling={pooling_cfg.name}: {e}") from None


def mean_command() -> str:
    """The command that computes the corpus mean for the current model overrides."""
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    keep = [o for o in overrides if o.lstrip("+~").startswith(MEAN_GROUPS)]
    return " ".join(["python -m actexp.run job=mean", *map(shlex.quote, keep)])


def model_spec(cfg) -> ModelSpec:
    return ModelSpec.from_config(cfg.model, cfg.hardware)


def model_identity(cfg) -> dict:
    """The identity of the configured model (artifacts.mismatch), from config alone."""
    return identity(model_spec(cfg))


def corpus_mean(cfg, required: bool = False) -> Optional[CorpusMean]:
    """The mean named by the centering group (None for centering=none unless required), checked
    against the model before any weights are loaded."""
    if cfg.centering.name == "none" and not required:
        return None
    model_id = model_identity(cfg)
    if cfg.centering.mean_path == "auto":
        found, nearest = find_means(cfg.paths.artifacts, model_id)
        if not found:
            why = f" (the newest mean of {model_id['model']}, {nearest})" if nearest else ""
            raise UserError(f"no corpus mean fits model {model_id['model']} ({model_id['dtype']}, layers "
                            f"{model_id['layers']}, max_tokens {model_id['max_tokens']}) in "
                            f"{store_root(cfg.paths.artifacts) / 'means'}{why}: compute it with `{mean_command()}`")
        path = found[0]
    else:
        path = Path(cfg.centering.mean_path).expanduser()
        if not path.is_file():
            raise UserError(f"centering.mean_path={path} does not exist: compute a mean with `{mean_command()}`")
    mean = load_mean(path)
    diff = mismatch(mean.metadata, model_id)
    if diff is None and tuple(mean.mean.shape) != (model_id["max_tokens"], model_id["hidden_size"]):
        diff = f"shape {tuple(mean.mean.shape)} (this model needs {(model_id['max_tokens'], model_id['hidden_size'])})"
    if diff:
        raise UserError(f"corpus mean {path} does not fit this model: it has {diff}; compute one with `{mean_command()}`")
    return mean


def centering_metadata(mean: Optional[CorpusMean]) -> dict:
    """What centring was done: none, or the corpus mean subtracted, named exactly by its checksum."""
    if mean is None:
        return {"name": "none", "mean": None}
    keys = ("mean_id", "corpus", "docs", "tokens", "min_count", "tail_start", "dtype", "sha256")
    return {"name": "corpus_mean", "mean": {"path": str(mean.path)} | {k: mean.metadata.get(k) for k in keys}}


def metadata(cfg, model: dict, mean: Optional[CorpusMean] = None) -> dict:
    """Model (its identity), pooling and centring: what determines a vector."""
    return {
        "actexp_version": __version__,
        "model": model,
        "pooling": {"name": cfg.pooling.name, "chunks": OmegaConf.to_container(cfg.pooling.chunks),
                    "labels": [c.label for c in chunks(cfg.pooling)]},
        "centering": centering_metadata(mean),
    }


def vector_csvs(paths, out_dir, pooling_name: str, key: str) -> list:
    """One or two vectors CSVs (raw, centred) of the same texts: those given, else this run's, each
    read as (vectors [N, D], names, sidecar)."""
    paths = [Path(p) for p in paths] or [
        p for p in (vectors_csv_path(out_dir, pooling_name, v) for v in ("raw", "centered")) if p.is_file()]
    if not paths or len(paths) > 2:
        raise UserError(f"{key}=[one.csv] or [raw.csv,centered.csv] is needed: vectors CSVs of a csv or pipeline run")
    loaded = [read_vectors_csv(p) for p in paths]
    if any(x[1] != loaded[0][1] for x in loaded):
        raise UserError(f"{paths[0]} and {paths[-1]} hold different texts")
    return list(zip(paths, loaded))
