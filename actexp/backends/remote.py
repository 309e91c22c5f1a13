"""The Modal backend: the Hydra job runs here, every forward pass runs in `modal_app.Extractor`.

Texts go out in token-budget groups (one remote call each, spread over up to max_containers
GPUs); mean shards fan out with `.map(..., return_exceptions=True)`, shards already on the
artifacts volume are skipped, and the merged mean is downloaded into the local artifact store.
"""

import dataclasses
import json
import logging
import os
from types import SimpleNamespace
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from omegaconf import OmegaConf

from ..data.corpus import Document
from ..errors import UserError
from ..maths.centering import CorpusMean
from ..maths.pooling import Chunk
from ..models.activations import Batching
from ..models.architecture import model_config
from ..models.gguf import in_package
from ..models.hub import hub_commit
from ..models.identity import identity
from ..models.spec import ModelSpec, from_hub
from ..models.tokenizing import text_encoder
from ..progress import progress
from ..store import means
from ..store.io import write_bytes
from ..store.layout import MANIFEST, hash_cache
from ..store.shards import check as check_shard
from ..store.tensors import header_of_stream
from ..store.vectors import StoreLayout
from .local import Pooled

log = logging.getLogger(__name__)
DEPLOY = "modal deploy -m actexp.backends.modal_app"
APP_MODULE = None  # tests put a stand-in for Modal's objects here (Modal's servers are out of reach)


class RemoteError(Exception):
    """A remote call failed; the message is the remote error's."""


def has_credentials() -> bool:
    if os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"):
        return True
    import modal.config

    return bool(modal.config.config.get("token_id") and modal.config.config.get("token_secret"))


def token_groups(lengths: Sequence[int], budget: int) -> List[List[int]]:
    """Consecutive groups of texts with at most `budget` tokens each (a longer text goes alone)."""
    groups: List[List[int]] = []
    total = 0
    for i, n in enumerate(lengths):
        if groups and total + n <= budget:
            groups[-1].append(i)
            total += n
        else:
            groups.append([i])
            total = n
    return groups


def _raise_failures(results: list, what: str) -> None:
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise RemoteError(f"{len(failures)} of {len(results)} {what} failed on Modal: {failures[0]}")


def _fan_out(method, requests: List[dict], headers: dict, what: str) -> Iterator[dict]:
    """Run shard requests over the GPUs (.map); the successful ones join `headers` (by index) even
    when others fail, so running the job again resumes; then every header in shard order."""
    results = list(method.map(requests, return_exceptions=True)) if requests else []
    for request, result in zip(requests, results):
        if not isinstance(result, BaseException):
            headers[request["index"]] = result | {"computed": True}
    _raise_failures(results, what)
    return iter([headers[k] for k in sorted(headers)])


class ModalBackend:
    """The model in Modal containers: `hw` holds the hardware group's values (gpu, max_containers ...)."""

    def __init__(self, spec: ModelSpec, hw: SimpleNamespace, hash_cache=None):
        self.spec, self.hw, self.hash_cache = spec, hw, hash_cache
        if spec.gguf and not in_package(spec.gguf):
            raise UserError(f"model.gguf={spec.gguf} is a file on this machine, not in the Modal image: use a GGUF "
                            "shipped in a package the image installs (model=smollm2-135m-q4) or a hub model")
        modal_app = APP_MODULE
        if modal_app is None:
            if not has_credentials():
                raise UserError("hardware=modal needs Modal credentials: run `modal setup`, "
                                "or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET")
            os.environ.update({"ACTEXP_MODAL_APP": self.hw.app_name, "ACTEXP_MODAL_GPU": self.hw.gpu,
                               "ACTEXP_HF_VOLUME": self.hw.hf_volume,
                               "ACTEXP_ARTIFACTS_VOLUME": self.hw.artifacts_volume})
            if self.hw.hf_secret:
                os.environ["ACTEXP_HF_SECRET"] = self.hw.hf_secret
            from . import modal_app
        self.app_module, self._run = modal_app, None
        self.spec = spec = self._pinned(spec)
        self.metadata = identity(spec, hash_cache=hash_cache)
        # The containers compute the identity again from what they load (a GGUF is converted there) and
        # refuse a model that is not this one.
        self.params = {"spec": json.dumps(spec.to_dict(), sort_keys=True),
                       "identity": json.dumps(self.metadata, sort_keys=True)}
        self._extractor = self._text = None
        self._means_sent = set()  # (path on the volume, sha256) of the means checked there in this run

    @staticmethod
    def _pinned(spec: ModelSpec) -> ModelSpec:
        """A hub model with its revision pinned to the commit this machine resolves it to (its Hugging
        Face cache, else the hub), as models/identity.py does: the containers load exactly that commit,
        so the identity the client records, and the mean and store ids, name the model that ran."""
        if not from_hub(spec):
            return spec
        commit = hub_commit(spec.name_or_path, spec.revision)
        if commit is None:
            raise UserError(f"cannot tell which commit of {spec.name_or_path} (revision {spec.revision or 'main'}) "
                            "to run: the hub is unreachable and this machine's Hugging Face cache does not have it; "
                            "set model.revision=<commit>")
        return dataclasses.replace(spec, revision=commit)

    @classmethod
    def from_config(cls, cfg) -> "ModalBackend":
        return cls(ModelSpec.from_config(cfg.model, cfg.hardware, cfg.get("prompt")),
                   SimpleNamespace(**OmegaConf.to_container(cfg.hardware, resolve=True)),
                   hash_cache(cfg.paths.artifacts))

    # -- connection ----------------------------------------------------------------------------
    def _options(self, target):
        import modal

        return target.with_options(gpu=self.hw.gpu, timeout=self.hw.timeout, max_containers=self.hw.max_containers,
                                   retries=modal.Retries(max_retries=self.hw.retries, initial_delay=1.0))

    @property
    def extractor(self):
        if self._extractor is None:
            if self.hw.deployed:
                import modal

                cls = modal.Cls.from_name(self.hw.app_name, "Extractor")
                try:
                    cls.hydrate()
                except modal.exception.NotFoundError:
                    raise UserError(f"the Modal app {self.hw.app_name!r} is not deployed: run `{DEPLOY}`, "
                                    "or set hardware.deployed=false for an ephemeral app") from None
            else:  # one ephemeral app per run: Modal refuses to start an app that is already running
                run = self.app_module.app.run()
                run.__enter__()
                self._run = run
                cls = self.app_module.Extractor
            self._extractor = self._options(cls)(**self.params)
        return self._extractor

    def _function(self, name: str):
        """A deployed or ephemeral Modal function of the app."""
        _ = self.extractor  # connects (ephemeral app started, or the deployment checked)
        if self.hw.deployed:
            import modal

            return modal.Function.from_name(self.hw.app_name, name)
        return getattr(self.app_module, name)

    def close(self) -> None:
        """Leave the ephemeral app (the run is over)."""
        self._extractor = None
        if self._run is not None:
            run, self._run = self._run, None
            run.__exit__(None, None, None)

    # -- vectors -------------------------------------------------------------------------------
    def _remote_mean(self, mean: CorpusMean) -> str:
        """The mean's path on the artifacts volume: the copy there is used only if its checksum is
        the local mean's; otherwise the local file is uploaded over it. Checked once per run (the
        containers check the checksum again when they first read it)."""
        relpath = f"means/{mean.metadata['mean_id']}/{means.MEAN_FILE}"
        if (relpath, mean.sha256) in self._means_sent:
            return relpath
        volume = self.app_module.artifacts_volume
        try:
            remote_sha = header_of_stream(volume.read_file(relpath)).get("sha256")
        except (FileNotFoundError, ValueError):  # missing, or not a safetensors file: replaced below
            remote_sha = None
        if remote_sha != mean.sha256:
            log.info("uploading %s to the Modal volume", mean.path)
            with volume.batch_upload(force=True) as batch:
                batch.put_file(str(mean.path), relpath)
        self._means_sent.add((relpath, mean.sha256))
        return relpath

    def _base_request(self, chunks: Sequence[Chunk], mean: Optional[CorpusMean]) -> dict:
        return {"chunks": [{"kind": c.kind, "alpha": c.alpha} for c in chunks],
                "mean": self._remote_mean(mean) if mean is not None else None,
                "mean_sha256": mean.sha256 if mean is not None else None,
                "batching": dataclasses.asdict(Batching.from_config(self.hw))}

    def vectors(self, texts: Sequence[str], chunks: Sequence[Chunk], mean: Optional[CorpusMean] = None) -> Pooled:
        if self._text is None:  # only to size the groups (the remote side tokenises): loaded once
            self._text = text_encoder(self.spec, self.metadata["max_tokens"], model_config(self.spec, self.hash_cache),
                                      hash_cache=self.hash_cache)
        ids, _ = self._text.encode(texts)
        groups = token_groups([len(x) for x in ids], self.hw.request_tokens)
        base = self._base_request(chunks, mean)
        requests = [base | {"texts": [texts[i] for i in g]} for g in groups]
        results = list(self.extractor.vectors.map(requests, return_exceptions=True))
        _raise_failures(results, "vector requests")
        # token_groups keeps the texts' order, so concatenating the replies restores it.
        raw = torch.cat([torch.from_numpy(r["raw"]) for r in results])  # [N, C*H]
        centered = None if mean is None else torch.cat([torch.from_numpy(r["centered"]) for r in results])
        return Pooled(raw, centered, [n for r in results for n in r["n_tokens"]],
                       [t for r in results for t in r["truncated"]])

    # -- corpus mean ---------------------------------------------------------------------------
    def shard_headers(self, stats: means.Stats) -> List[dict]:
        return self._function("shard_headers").remote(stats.spec())

    def extract_shards(self, shards: Iterable[Tuple[int, List[Document]]], stats: means.Stats) -> Iterator[dict]:
        """Fan the shards not yet on the volume out over the GPUs; the successful ones are kept even
        when others fail, so running the job again resumes."""
        shards = list(shards)
        headers = self._valid_on_volume("stats", stats, shards)
        requests = [{"index": k, "texts": [d.text for d in docs], "doc_ids": [d.id for d in docs], "stats": stats.spec(),
                     "batching": dataclasses.asdict(Batching.from_config(self.hw))}
                    for k, docs in shards if k not in headers]
        return _fan_out(self.extractor.mean_shard, requests, headers, "shards")

    def _valid_on_volume(self, kind: str, files, shards: List[Tuple[int, List[Document]]]) -> dict:
        """{index: header} of the shards on the volume that pass shards.check, run next to the bytes."""
        return self._function("check_shards").remote(
            {"kind": kind, "spec": files.spec(), "doc_ids": {k: [d.id for d in docs] for k, docs in shards}})

    def aggregate(self, stats: means.Stats, n_shards: int, min_count: int, tail_start: int,
                  checkpoint_every: int) -> CorpusMean:
        """Merge on Modal (next to the shards), then download the mean into the local store."""
        try:
            reply = self._function("aggregate").remote({
                "stats": stats.spec(), "n_shards": n_shards, "min_count": min_count, "tail_start": tail_start,
                "checkpoint_every": checkpoint_every})
        except UserError:  # a shard on the volume was bad and removed there: extract must run again here too
            (stats.folder / MANIFEST).unlink(missing_ok=True)
            raise
        data = b"".join(self.app_module.artifacts_volume.read_file(reply["path"]))
        write_bytes(stats.mean_path(min_count, tail_start), data)
        return means.load_mean(stats.mean_path(min_count, tail_start))

    # -- vector store --------------------------------------------------------------------------
    def store_headers(self, layout: StoreLayout) -> List[dict]:
        return self._function("store_headers").remote(layout.spec())

    def store_shards(self, shards: Iterable[Tuple[int, List[Document]]], layout: StoreLayout,
                     chunks: Sequence[Chunk], mean: Optional[CorpusMean]) -> Iterator[dict]:
        """Fan the shards not valid on the volume out over the GPUs, as the mean's shards are."""
        shards = list(shards)
        headers = self._valid_on_volume("store", layout, shards)
        base = self._base_request(chunks, mean) | {"layout": layout.spec()}
        requests = [base | {"index": k, "texts": [d.text for d in docs], "doc_ids": [d.id for d in docs],
                            "names": [d.name for d in docs]} for k, docs in shards if k not in headers]
        return _fan_out(self.extractor.store_shard, requests, headers, "store shards")

    def finish_store(self, layout: StoreLayout, headers: List[dict], download: bool) -> str:
        """Download the shards into the local store (each checked against its checksum), or leave
        them on the volume; where they are, for the manifest."""
        if not download:
            return f"modal volume {self.hw.artifacts_volume}"
        volume = self.app_module.artifacts_volume
        def problem(h: dict) -> Optional[str]:
            """Why the local copy of a shard is not the one the manifest will name (by its checksum)."""
            checked = check_shard(layout, h["shard"])
            if checked.problem is None and checked.header.get("sha256") != h.get("sha256"):
                return "is not the shard the volume reported (another run rewrote it meanwhile)"
            return checked.problem

        for h in progress(headers, desc="downloading shards", unit="shard"):
            path = layout.shard(h["shard"])
            if problem(h) is None:
                continue  # downloaded before
            write_bytes(path, b"".join(volume.read_file(str(path.relative_to(layout.root)))))
            found = problem(h)
            if found:
                path.unlink(missing_ok=True)
                raise RemoteError(f"shard {h['shard']} downloaded from the Modal volume {found}: run the job again")
        return "local"
