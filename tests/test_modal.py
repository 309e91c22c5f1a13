"""The Modal backend, offline: the app's definition, its methods run with .local(), and the
backend's dispatch against a stand-in for Modal's servers (the one boundary that cannot run here)."""

import json
import os
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from actexp import artifacts as store
from actexp import jobs
from actexp.backends import make_backend, modal_app, remote
from actexp.backends.local import LocalBackend
from actexp.backends.remote import RemoteError, token_groups
from actexp.errors import UserError
from actexp.jobs.common import chunks as chunks_from_cfg
from helpers import TEXTS, compose_cfg, run_cli

MODAL = ["hardware=modal", "model.dtype=float32"]  # float32 so the CPU stand-in equals the local backend


def test_app_definition_imports_offline():
    spec = modal_app.Extractor._get_class_service_function()._spec_
    assert spec.gpus == "H100"
    assert set(spec.volumes) == {modal_app.HF_DIR, modal_app.ARTIFACTS_DIR}
    assert modal_app.CLASS_OPTIONS["enable_memory_snapshot"] is True
    assert modal_app.CLASS_OPTIONS["experimental_options"] == {"enable_gpu_snapshot": True}
    mount = modal_app.image._deps_()[-1]  # added last, after every build step
    files = {str(remote_path) for _, remote_path in mount.entries[0].get_files_to_upload()}
    assert "/root/actexp/backends/local.py" in files and "/root/actexp/assets/tiny_tokenizer.json" in files
    for function in (modal_app.aggregate, modal_app.shard_headers):  # CPU work next to the shards
        assert function._spec_.gpus is None and modal_app.ARTIFACTS_DIR in function._spec_.volumes
    assert modal_app.HF_DIR in modal_app.download_weights._spec_.volumes


class FakeVolume:
    """A Modal volume as a local folder."""

    def __init__(self, root: Path):
        self.root = root

    def reload(self):
        pass

    def commit(self):
        pass

    def listdir(self, path):
        if not (self.root / path).exists():
            raise FileNotFoundError(path)
        return [SimpleNamespace(path=str(p.relative_to(self.root))) for p in (self.root / path).iterdir()]

    def read_file(self, path):
        yield (self.root / path).read_bytes()

    @contextmanager
    def batch_upload(self, force=False):
        def put_file(local, remote_path):
            (self.root / remote_path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(local, self.root / remote_path)

        yield SimpleNamespace(put_file=put_file)


class FakeMethod:
    """Modal's .map/.remote, running the real method in-process."""

    def __init__(self, fn, calls, fail_index=None):
        self.fn, self.calls, self.fail_index = fn, calls, fail_index

    def _one(self, request):
        self.calls.append(request)
        if self.fail_index is not None and request.get("index") == self.fail_index:
            raise RuntimeError(f"CUDA out of memory in shard {self.fail_index}")
        return self.fn(request)

    def map(self, requests, return_exceptions=False):
        for request in requests:
            try:
                yield self._one(request)
            except Exception as e:
                if not return_exceptions:
                    raise
                yield e

    def remote(self, request):
        return self._one(request)


@pytest.fixture()
def stand_in(tmp_path, monkeypatch):
    """modal_app's objects, with Modal's servers replaced: the volume is a folder, calls run here."""
    monkeypatch.setattr(modal_app, "ARTIFACTS_DIR", str(tmp_path / "volume"))
    volume = FakeVolume(tmp_path / "volume")
    monkeypatch.setattr(modal_app, "artifacts_volume", volume)
    state = SimpleNamespace(calls=[], options=[], fail_index=None)

    class Cls:
        def with_options(self, **options):
            state.options.append(options)
            return self

        def __call__(self, **params):
            real = modal_app.Extractor(**params)
            return SimpleNamespace(vectors=FakeMethod(real.vectors.local, state.calls),
                                   mean_shard=FakeMethod(real.mean_shard.local, state.calls, state.fail_index))

    fake = SimpleNamespace(app=SimpleNamespace(run=nullcontext), Extractor=Cls(), artifacts_volume=volume,
                           aggregate=FakeMethod(modal_app.aggregate.local, state.calls),
                           shard_headers=FakeMethod(modal_app.shard_headers.local, state.calls))
    monkeypatch.setattr(remote, "APP_MODULE", fake)
    return state


def test_extractor_methods_run_locally_and_match_the_local_backend():
    cfg = compose_cfg("pooling=long")
    options = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items()
               if k not in ("name_or_path", "revision", "dtype")}
    extractor = modal_app.Extractor(dtype="float32", options=json.dumps(options))
    reply = extractor.vectors.local({"texts": TEXTS, "chunks": [{"kind": "last"}, {"kind": "exp", "alpha": 0.067}]})
    chunks = chunks_from_cfg(compose_cfg("pooling.chunks=[{kind:last},{kind:exp,alpha:0.067}]").pooling)
    local = LocalBackend(cfg.model, cfg.hardware).vectors(TEXTS, chunks)
    assert reply["raw"].dtype.name == "float32" and reply["centered"] is None
    assert torch.equal(torch.from_numpy(reply["raw"]), local.raw)
    assert reply["n_tokens"] == local.n_tokens


def test_vectors_go_out_in_token_groups_and_come_back_in_order(stand_in, tmp_path):
    cfg = compose_cfg(*MODAL, "hardware.request_tokens=64", f"paths.artifacts={tmp_path / 'a'}")
    backend = make_backend(cfg)
    chunks = chunks_from_cfg(cfg.pooling)
    out = backend.vectors(TEXTS, chunks)
    assert len(stand_in.calls) > 1 and all(len(c["texts"]) >= 1 for c in stand_in.calls)
    assert stand_in.options[0]["gpu"] == "H100" and stand_in.options[0]["max_containers"] == 8
    here = compose_cfg("model.dtype=float32")
    local = LocalBackend(here.model, here.hardware).vectors(TEXTS, chunks)
    assert torch.equal(out.raw, local.raw) and out.n_tokens == local.n_tokens
    assert token_groups([5, 70, 3, 3, 60], 64) == [[0], [1], [2, 3], [4]]


def test_mean_on_modal_fans_out_resumes_after_failures_and_downloads(stand_in, tmp_path):
    overrides = ["job=mean", "corpus=samples", "corpus.shard_size=4", "centering.min_count=4"]
    local_cfg = compose_cfg(*overrides, f"paths.artifacts={tmp_path / 'local'}", "model.dtype=float32")
    jobs.get("mean")(local_cfg, tmp_path)
    cfg = compose_cfg(*overrides, *MODAL, f"paths.artifacts={tmp_path / 'artifacts'}")
    stand_in.fail_index = 2
    with pytest.raises(RemoteError, match="1 of 5 shards failed on Modal: CUDA out of memory in shard 2"):
        jobs.get("mean")(cfg, tmp_path)
    shards = sorted(p.name for p in (tmp_path / "volume").rglob("shards/*.safetensors"))
    assert shards == ["00000.safetensors", "00001.safetensors", "00003.safetensors", "00004.safetensors"]
    stand_in.fail_index, stand_in.calls[:] = None, []
    jobs.get("mean")(cfg, tmp_path)
    assert [c["index"] for c in stand_in.calls if "index" in c] == [2]  # only the failed shard ran again
    [local] = (tmp_path / "local").glob("means/*/corpus_mean.safetensors")
    [downloaded] = (tmp_path / "artifacts").glob("means/*/corpus_mean.safetensors")
    assert downloaded.parent.name == local.parent.name  # the same mean id
    a, b = load_file(local), load_file(downloaded)
    assert all(torch.equal(a[k], b[k]) for k in ("sum", "count", "mean"))
    metrics = jobs.get("mean")(compose_cfg(*overrides, *MODAL, f"paths.artifacts={tmp_path / 'artifacts'}",
                                           "mean.stage=progress"), tmp_path)
    assert metrics["shards"] == 5 and metrics["docs"] == 20


def test_centred_vectors_on_modal_upload_the_local_mean(stand_in, tmp_path):
    art = tmp_path / "artifacts"
    jobs.get("mean")(compose_cfg("job=mean", "corpus=samples", "centering.min_count=4", f"paths.artifacts={art}"),
                     tmp_path)
    cfg = compose_cfg(*MODAL, "centering=corpus_mean", f"paths.artifacts={art}")
    from actexp.jobs.common import corpus_mean

    mean = corpus_mean(cfg)
    out = make_backend(cfg).vectors(TEXTS, chunks_from_cfg(cfg.pooling), mean)
    uploaded = tmp_path / "volume" / "means" / mean.metadata["mean_id"] / store.MEAN_FILE
    assert uploaded.read_bytes() == Path(mean.path).read_bytes()
    here = compose_cfg("model.dtype=float32")
    local = LocalBackend(here.model, here.hardware).vectors(TEXTS, chunks_from_cfg(cfg.pooling), mean)
    assert torch.equal(out.centered, local.centered)


def test_missing_deployment_names_the_deploy_command(monkeypatch, stand_in):
    import modal

    class Missing:
        def hydrate(self):
            raise modal.exception.NotFoundError("App 'actexp' not found")

    monkeypatch.setattr(modal.Cls, "from_name", staticmethod(lambda *a, **k: Missing()))
    backend = make_backend(compose_cfg(*MODAL, "hardware.deployed=true"))
    with pytest.raises(UserError, match="modal deploy -m actexp.backends.modal_app"):
        backend.vectors(["hi"], chunks_from_cfg(compose_cfg().pooling))


def test_no_credentials_fails_fast_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")} | {"HOME": str(tmp_path)}
    r = run_cli("job=extract", "hardware=modal", "text=hi", cwd=tmp_path, env=env, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "Modal credentials" in r.stderr and "modal setup" in r.stderr
