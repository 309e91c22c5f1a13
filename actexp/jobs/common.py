"""What several jobs share: pooling chunks from config, the corpus mean to centre with, and the
metadata every output carries."""

import json
import logging
import os
import shlex
from pathlib import Path
from typing import List, Optional

from omegaconf import OmegaConf

from ..errors import UserError
from ..maths.bootstrap import Bootstrap
from ..maths.centering import CorpusMean
from ..maths.pooling import Chunk
from ..models.identity import mean_identity, model_identity
from ..models.spec import ModelSpec
from ..store.io import read_vectors_csv, vectors_csv_path
from ..store.layout import hash_cache, mismatch, stream_width
from ..store.layout import root as store_root
from ..store.means import Stats, load_mean
from ..version import __version__

log = logging.getLogger(__name__)

# Overrides that decide which corpus mean fits: repeated in the command we suggest.
MEAN_GROUPS = ("experiment", "model", "prompt", "hardware", "corpus", "paths", "centering.min_count",
               "centering.tail_start")


def chunks(pooling_cfg) -> List[Chunk]:
    if not pooling_cfg.chunks:
        raise UserError(f"pooling={pooling_cfg.name} has no chunks: give pooling.chunks a list of {{kind, alpha}}")
    try:
        return [Chunk(c.kind, c.get("alpha")) for c in pooling_cfg.chunks]
    except ValueError as e:
        raise UserError(f"pooling={pooling_cfg.name}: {e}") from None


def bootstrap_of(cfg) -> Bootstrap:
    return Bootstrap(cfg.bootstrap.resamples, cfg.bootstrap.seed, cfg.bootstrap.level)


def pooling_record(pooling_cfg) -> dict:
    """The pooling as every record names it (store ids, fit identities, sidecars, manifests): its name
    and its chunks, each {kind, alpha}."""
    return {"name": pooling_cfg.name, "chunks": [{"kind": c.kind, "alpha": c.alpha} for c in chunks(pooling_cfg)]}


def mean_command(artifacts: Optional[str] = None) -> str:
    """The command that computes the corpus mean for the current model overrides (in the store
    `artifacts` instead of the configured one, when given)."""
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    keep = [o for o in overrides if o.lstrip("+~").startswith(MEAN_GROUPS)
            and not (artifacts and o.lstrip("+~").startswith("paths.artifacts="))]
    keep += [f"paths.artifacts={artifacts}"] if artifacts else []
    return " ".join(["python -m actexp.run job=mean", *map(shlex.quote, keep)])


def _can_write(folder: Path) -> bool:
    """Whether this user could create files in folder (or, if it does not exist yet, in its nearest
    existing parent): permission bits, and read-only mounts, which even root cannot write to."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return os.access(folder, os.W_OK) and not os.statvfs(folder).f_flag & os.ST_RDONLY
    except OSError:
        return False


def _own_store(shared: Path) -> str:
    """A store to make new files in when `shared` is read-only: the user's default one ($ACTEXP_ARTIFACTS,
    else $XDG_CACHE_HOME/actexp, else ~/.cache/actexp, as conf/config.yaml reads them) if it is another
    folder and writable, else a placeholder."""
    for candidate in (os.environ.get("ACTEXP_ARTIFACTS"), f"{os.environ.get('XDG_CACHE_HOME') or '~/.cache'}/actexp"):
        if candidate and store_root(candidate) != shared and _can_write(store_root(candidate)):
            return str(store_root(candidate))
    return "DIR"


def model_spec(cfg) -> ModelSpec:
    return ModelSpec.from_config(cfg.model, cfg.hardware, cfg.get("prompt"))


def corpus_of(cfg):
    """The corpus group's documents, their scan kept in the artifact store (Corpus.id)."""
    from ..data.corpus import Corpus

    return Corpus(cfg.corpus, hash_cache(cfg.paths.artifacts))


def stats_of(cfg, corpus=None, model_id: Optional[dict] = None) -> Stats:
    """The mean's sums of this config: model identity, the corpus's content and its shard size."""
    corpus = corpus or corpus_of(cfg)
    return Stats(store_root(cfg.paths.artifacts), mean_identity(model_id or model_identity(cfg)), corpus.id,
                 cfg.corpus.shard_size)


def configured_mean_path(cfg, model_id: Optional[dict] = None) -> Path:
    """Where the mean of this config lives: model identity, corpus content, min_count, tail_start."""
    return stats_of(cfg, model_id=model_id).mean_path(cfg.centering.min_count, cfg.centering.tail_start)


def _made_from(meta: dict) -> str:
    return (f"corpus {meta.get('corpus')}, {meta.get('docs')} documents, min_count {meta.get('min_count')}, "
            f"tail_start {meta.get('tail_start')}")


def corpus_mean(cfg, required: bool = False, tracker=None) -> Optional[CorpusMean]:
    """The mean named by the centering group (None for centering=none unless required), checked
    against the model before any weights are loaded; the tracker's run config then names it.

    `auto` is the mean of this config and nothing else: a missing one is refused with the job=mean
    command that makes it. A path is used as given; if it was made from another corpus or other
    settings than the config's, that is said (and every output records what it was made from).
    """
    if cfg.centering.name == "none" and not required:
        return None
    model_id = mean_identity(model_identity(cfg))
    if cfg.centering.mean_path == "auto":
        path = configured = configured_mean_path(cfg, model_id)
        if not path.is_file():
            missing = f"the corpus mean of this config ({path.parent.name}) is not in {path.parent.parent}"
            stats = stats_of(cfg, model_id=model_id).folder
            if _can_write(path.parent) and _can_write(stats):
                raise UserError(f"{missing}: compute it with `{mean_command()}`")
            # job=mean would stop on the same read-only store: make it in one of the user's own.
            own = _own_store(store_root(cfg.paths.artifacts))
            raise UserError(f"{missing}, which this user cannot write to: compute it in a store of your own with "
                            f"`{mean_command(own)}`{' (DIR: a folder you can write to)' if own == 'DIR' else ''}, "
                            f"then give this command paths.artifacts={own} too")
    else:
        path = Path(cfg.centering.mean_path).expanduser()
        if not path.is_file():
            raise UserError(f"centering.mean_path={path} {'is a folder' if path.is_dir() else 'does not exist'}: "
                            f"give a corpus_mean.safetensors, or compute a mean with `{mean_command()}`")
        try:  # only to say whether it is this config's own mean: a corpus that cannot be read is no error here
            configured = configured_mean_path(cfg, model_id)
        except UserError:
            configured = None
    mean = load_mean(path)
    diff = mismatch(mean.metadata, model_id)
    if diff is None and (mean.positions, mean.mean.shape[1]) != (model_id["max_tokens"], stream_width(model_id)):
        diff = (f"{mean.positions} positions of {mean.mean.shape[1]} dims (this model needs "
                f"{model_id['max_tokens']} of {stream_width(model_id)})")
    if diff:
        raise UserError(f"corpus mean {path} does not fit this model: it has {diff}; compute one with `{mean_command()}`")
    if configured is None or mean.metadata.get("mean_id") != configured.parent.name:
        if cfg.centering.mean_path == "auto":
            raise UserError(f"{path} holds the mean {mean.metadata.get('mean_id')}, not this config's: "
                            f"remove it and compute it with `{mean_command()}`")
        log.warning(f"centring with the mean at {path} ({_made_from(mean.metadata)}) as centering.mean_path says; "
                    f"this config's own mean would be {configured.parent.name if configured else 'unknown'}")
    if tracker is not None:
        tracker.centering(centering_metadata(mean))
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
        "pooling": pooling_record(cfg.pooling) | {"labels": [c.label for c in chunks(cfg.pooling)]},
        # The prompt group as configured, its name included (the model identity names what it computes).
        "prompt": OmegaConf.to_container(cfg.prompt, resolve=True) if cfg.get("prompt") else None,
        "centering": centering_metadata(mean),
    }


def sidecar_difference(a: dict, b: dict) -> Optional[str]:
    """The first thing two vectors CSVs' sidecars say differently of how their vectors were made
    (model identity, pooling, then the mean of two centred CSVs), described; None if nothing does."""
    for key, value in (a.get("model") or {}).items():
        if (b.get("model") or {}).get(key) != value:
            return f"model.{key} ({json.dumps(value)} vs {json.dumps((b.get('model') or {}).get(key))})"
    if (a.get("pooling") or {}).get("chunks") != (b.get("pooling") or {}).get("chunks"):
        return f"pooling ({(a.get('pooling') or {}).get('name')} vs {(b.get('pooling') or {}).get('name')})"
    means = [((x.get("centering") or {}).get("mean") or {}).get("sha256") for x in (a, b)]
    if all(means) and means[0] != means[1]:
        return f"the centring mean (sha256 {means[0][:12]} vs {means[1][:12]})"
    return None


def vector_csvs(paths, out_dir, pooling_name: str, key: str, same_model: bool = True) -> list:
    """One or two vectors CSVs (raw, centred) of the same texts: those given, else this run's, each
    read as (vectors [N, D], names, sidecar). CSVs made by different models, poolings or means are
    refused (same_model) or, for figures side by side, warned about."""
    paths = [Path(p) for p in paths] or [
        p for p in (vectors_csv_path(out_dir, pooling_name, v) for v in ("raw", "centered")) if p.is_file()]
    if not paths or len(paths) > 2:
        raise UserError(f"{key}=[one.csv] or [raw.csv,centered.csv] is needed: vectors CSVs of a csv or pipeline run")
    loaded = [read_vectors_csv(p) for p in paths]
    if any(x[1] != loaded[0][1] for x in loaded):
        raise UserError(f"{paths[0]} and {paths[-1]} hold different texts")
    differs = sidecar_difference(loaded[0][2], loaded[-1][2]) if len(loaded) == 2 else None
    if differs and same_model:
        raise UserError(f"{paths[0]} and {paths[1]} were made differently: {differs}; give two CSVs of "
                        f"one csv or pipeline run")
    if differs:
        log.warning(f"{paths[0]} and {paths[1]} were made differently: {differs}")
    return list(zip(paths, loaded))
