"""actexp from Python: the command line's config groups, validation and jobs, without the command line.

    import actexp
    with actexp.Session("pooling=short", "centering=corpus_mean") as s:
        v = s.vectors(["The cat sat on the mat.", "Interest rates rose again."])
        v.raw.shape, v.centered.shape                     # (2, 128) each: [N texts, C chunks x H]
        s.similarity("a cat", "a dog").cosine

A Session composes its config from the same overrides as `python -m actexp.run` (Hydra's compose
API over conf/), loads the model on first use, keeps it (and a Modal app, for hardware=modal) for
every call, and releases it on close. Bad overrides raise actexp.UserError with the CLI's one line.
Return values are numpy arrays, dataclasses and plain dicts.
"""

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from . import jobs
from .backends import open_backend
from .config.schema import CONF, register
from .config.suggest import message
from .data.labelled import LabelledTexts, samples  # noqa: F401 (part of the API)
from .errors import UserError, user_fault
from .jobs import common
from .jobs.similarity import cosines
from .maths import analysis
from .maths.bootstrap import Bootstrap
from .store.reader import VectorStore


def compose_config(*overrides: str):
    """The config the CLI would run with these overrides; UserError (the CLI's line) if it refuses them."""
    register()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF), job_name="actexp"):
            cfg = compose("config", overrides=list(overrides))
        jobs.check(cfg.job.name, cfg)
        return cfg
    except Exception as e:
        if user_fault(e):
            raise UserError(message(e)) from None
        raise


@dataclass
class Vectors:
    """Vectors of N texts; chunk k of a row is columns k*H:(k+1)*H, labelled chunks[k]."""

    raw: np.ndarray  # [N, C*H] float32
    centered: Optional[np.ndarray]  # [N, C*H] float32, None without a corpus mean (centering=none)
    n_tokens: List[int]
    truncated: List[bool]  # cut at the model's max_tokens
    chunks: List[str]  # the C chunk labels: "last", "exp 0.067", ...

    def by_variant(self) -> Dict[str, np.ndarray]:
        """{"raw": [N, C*H][, "centered": [N, C*H]]}, as actexp.analyze takes them."""
        return {"raw": self.raw} | ({} if self.centered is None else {"centered": self.centered})

    def chunk(self, k: int, variant: str = "raw") -> np.ndarray:
        """[N, H]: chunk k of every vector."""
        x = getattr(self, variant)
        width = x.shape[1] // len(self.chunks)
        return x[:, k * width:(k + 1) * width]


@dataclass
class Similarity:
    cosine: float  # of the whole vectors
    chunks: Dict[str, float]  # chunk label -> cosine of that chunk
    variant: str  # "centered" with a corpus mean, else "raw"


@dataclass
class Mean:
    """A per-position corpus mean: mean[t] is the average residual stream at position t, for the P
    positions documents reached; every later position up to metadata["max_tokens"] has `tail`."""

    path: str
    sha256: str
    mean: np.ndarray  # [P, H] float32
    metadata: dict
    tail: Optional[np.ndarray] = None  # [H] float32; None when P is max_tokens


class Session:
    """One model, one config, many calls. Use it as a context manager, or call close()."""

    def __init__(self, *overrides: str):
        self.overrides = list(overrides)
        self._cfg = compose_config(*overrides)
        self._stack = contextlib.ExitStack()
        self._backend = self._stack.enter_context(open_backend(self._cfg))  # builds the model on first use
        self._mean = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the model (and the Modal app); the session cannot be used afterwards."""
        self._stack.close()

    @property
    def config(self) -> dict:
        """The composed config, resolved, as plain dicts."""
        return OmegaConf.to_container(self._cfg, resolve=True)

    def _centring(self):
        """The centring mean of the config (None for centering=none), looked up once."""
        if self._mean is None and self._cfg.centering.name != "none":
            self._mean = common.corpus_mean(self._cfg)
        return self._mean

    def vectors(self, texts: Union[str, Sequence[str]]) -> Vectors:
        """Vectors of the texts in one pass: raw, and centred when the config centres."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise UserError("Session.vectors needs at least one text")
        chunk_list = common.chunks(self._cfg.pooling)
        result = self._backend.vectors(texts, chunk_list, self._centring())
        return Vectors(result.raw.numpy(), None if result.centered is None else result.centered.numpy(),
                       list(result.n_tokens), list(result.truncated), [c.label for c in chunk_list])

    def similarity(self, a: str, b: str) -> Similarity:
        """Cosine of two texts' vectors, as job=similarity computes it (centred when the config centres)."""
        chunk_list = common.chunks(self._cfg.pooling)
        mean = self._centring()
        result = self._backend.vectors([a, b], chunk_list, mean)
        overall, per_chunk = cosines(result.raw if mean is None else result.centered, chunk_list)
        return Similarity(overall, per_chunk, "raw" if mean is None else "centered")

    def corpus_mean(self, compute: bool = False) -> Mean:
        """The corpus mean of this config (its model, corpus, min_count and tail_start; or the file
        centering.mean_path names); with compute=True, job=mean computes it first if it is missing
        (resuming any shards)."""
        try:
            found = common.corpus_mean(self._cfg, required=True)
        except UserError:
            if not compute:
                raise
            self.run("mean")
            found = common.corpus_mean(self._cfg, required=True)
        return Mean(str(found.path), found.sha256, found.mean.numpy(), dict(found.metadata),
                    None if found.tail is None else found.tail.numpy())

    def store(self, compute: bool = False) -> VectorStore:
        """The vector store of this config's corpus (job=store); with compute=True it is written first
        if missing or unfinished (resuming its shards)."""
        from .jobs.store import layout_of

        folder = layout_of(self._cfg, common.corpus_of(self._cfg), self._centring()).folder
        if compute and not (folder / "manifest.json").is_file():
            self.run("store")
        if not (folder / "manifest.json").is_file():
            raise UserError(f"no vector store of this config at {folder}: call store(compute=True) or run job=store")
        return VectorStore.open(folder)

    def analyze(self, texts: Sequence[str], groups: Sequence, partners: Optional[Sequence[Optional[int]]] = None
                ) -> analysis.Analysis:
        """Retrieval and geometry of labelled texts, raw and centred, with the config's bootstrap
        intervals (README, "Analysis", "Uncertainty")."""
        return analyze(self.vectors(texts), groups=groups, partners=partners, boot=common.bootstrap_of(self._cfg))

    def run(self, job: str, *overrides: str, out_dir=None) -> dict:
        """Run any CLI job with this session's model (and extra overrides that keep the model), writing
        into out_dir (default experiments/<job>/<time>_<pid>, as the CLI); returns its metrics."""
        cfg = compose_config(*self.overrides, *overrides, f"job={job}")
        if common.model_spec(cfg) != common.model_spec(self._cfg) or cfg.hardware != self._cfg.hardware:
            raise UserError(f"{' '.join(overrides)} changes the model or hardware: open another Session for it")
        out = Path(out_dir) if out_dir else Path("experiments") / job / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{os.getpid()}"
        made = [p for p in (out, *out.parents) if not p.exists()]  # deepest first
        out.mkdir(parents=True, exist_ok=True)
        try:
            with _log_to_stdout():
                return jobs.run(job, cfg, out, backend=self._backend)
        finally:
            with contextlib.suppress(OSError):  # another session may be writing beside us: never hide the result
                for folder in made:  # job=store writes only into the store: no empty run folders left behind
                    if any(folder.iterdir()):
                        break
                    folder.rmdir()


def analyze(vectors: Union[Vectors, Dict[str, np.ndarray]], chunks: Optional[Sequence[str]] = None,
            groups: Optional[Sequence] = None, partners: Optional[Sequence[Optional[int]]] = None,
            boot: Optional[Bootstrap] = Bootstrap()) -> analysis.Analysis:
    """The analysis of job=analyze on arrays: Vectors, or {variant: [N, C*H]} with the C chunk labels;
    retrieval intervals from `boot` (the CLI's defaults; None: none)."""
    if isinstance(vectors, Vectors):
        chunks = vectors.chunks
        vectors = vectors.by_variant()
    return analysis.analyze(vectors, chunks or ["all"], groups, partners, boot)


def open_store(path) -> VectorStore:
    """A vector store written by job=store (actexp.store.reader.VectorStore)."""
    return VectorStore.open(path)


@contextlib.contextmanager
def _log_to_stdout():
    """Jobs report through logging; in a notebook nothing shows that unless a handler is set up."""
    logger = logging.getLogger("actexp")
    if logger.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
