"""The Modal backend, offline: the app's definition, the real class run with .local(), and the
backend's dispatch against a stand-in for Modal's servers (the one boundary that cannot run here).

The stand-in refuses what Modal refuses: a second `app.run()` while one is running, calls
outside a running app, overwriting a volume file without `force`, reading a missing file.
"""

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import modal
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from actexp import jobs
from actexp.backends import local, make_backend, modal_app, open_backend, remote
from actexp.backends.remote import RemoteError, token_groups
from actexp.errors import UserError
from actexp.jobs.common import chunks as chunks_from_cfg
from actexp.jobs.common import corpus_mean
from actexp.jobs.common import model_spec
from actexp.models.loading import load_model
from actexp.store import means as store
from actexp.store.reader import VectorStore
from helpers import (LONG, TEXTS, compose_cfg, reference_model, reference_pooled_mean, reference_vector, rel_err, run_cli,
                     tiny_llama_gguf)

# float32 and the CPU's packing, so that the CPU stand-in equals the local backend bit for bit
MODAL = ["hardware=modal", "model.dtype=float32", "hardware.pack_width=null", "hardware.batch_tokens=8192"]


def test_app_definition_imports_offline():
    spec = modal_app.Extractor._get_class_service_function()._spec_
    assert spec.gpus == "H100"
    assert set(spec.volumes) == {modal_app.HF_DIR, modal_app.ARTIFACTS_DIR}
    assert modal_app.CLASS_OPTIONS["enable_memory_snapshot"] is True
    assert modal_app.CLASS_OPTIONS["experimental_options"] == {"enable_gpu_snapshot": True}
    mount = modal_app.image._deps_()[-1]  # added last, after every build step
    files = {str(remote_path) for _, remote_path in mount.entries[0].get_files_to_upload()}
    assert "/root/actexp/backends/local.py" in files and "/root/actexp/assets/tiny_tokenizer.json" in files
    assert "/root/actexp/assets/tiny_model.safetensors" in files  # model=tiny's weights go with the code
    for function in (modal_app.aggregate, modal_app.shard_headers, modal_app.check_shards):  # CPU work next to the shards
        assert function._spec_.gpus is None and modal_app.ARTIFACTS_DIR in function._spec_.volumes
    assert modal_app.HF_DIR in modal_app.download_weights._spec_.volumes


def test_the_real_class_runs_with_local_and_matches_the_reference():
    cfg = compose_cfg()
    extractor = modal_app.Extractor(spec=json.dumps(model_spec(cfg).to_dict()))
    reply = extractor.vectors.local({"texts": TEXTS, "chunks": [{"kind": c, "alpha": a} for c, a in LONG]})
    assert reply["raw"].dtype.name == "float32" and reply["centered"] is None
    lm = load_model(model_spec(cfg))
    ref = reference_model(lm.model)  # output_hidden_states with the final norm an identity; closed-form weights
    for i, text in enumerate(TEXTS):
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert reply["n_tokens"][i] == len(ids)
        assert rel_err(reply["raw"][i], reference_vector(ref, ids, LONG)) < 1e-5


class StandInApp:
    """modal.App: `run()` refuses to start an app that is already running, as Modal does."""

    def __init__(self):
        self.running, self.starts = False, 0

    @contextmanager
    def run(self):
        if self.running:
            raise modal.exception.InvalidError("App is already running and can't be started again.")
        self.running, self.starts = True, self.starts + 1
        try:
            yield self
        finally:
            self.running = False


class StandInVolume:
    """A Modal volume as a folder: read_file streams blocks (FileNotFoundError if missing), and
    batch_upload refuses to overwrite a file unless force=True."""

    def __init__(self, root: Path):
        self.root, self.uploads = root, []

    def reload(self):
        pass

    def commit(self):
        pass

    def read_file(self, path):
        if not (self.root / path).is_file():
            raise FileNotFoundError(path)
        data = (self.root / path).read_bytes()
        for start in range(0, len(data), 65536):
            yield data[start:start + 65536]

    @contextmanager
    def batch_upload(self, force=False):
        def put_file(local_path, remote_path):
            if (self.root / remote_path).exists() and not force:
                raise FileExistsError(remote_path)
            (self.root / remote_path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(local_path, self.root / remote_path)
            self.uploads.append(remote_path)

        yield SimpleNamespace(put_file=put_file)


class StandInMethod:
    """`.map`/`.remote` of a Modal method: recorded, refused outside a running app, run in-process."""

    def __init__(self, name, fn, state):
        self.name, self.fn, self.state = name, fn, state

    def _one(self, request):
        if not self.state.app.running:
            raise modal.exception.ExecutionError(f"{self.name} has not been hydrated: it runs only inside app.run()")
        self.state.calls.append((self.name, request))
        if self.state.fail_index is not None and isinstance(request, dict) and request.get("index") == self.state.fail_index:
            raise RuntimeError(f"CUDA out of memory in shard {self.state.fail_index}")
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
    """modal_app's objects with Modal's servers replaced: the volume is a folder, each set of class
    parameters gets one warm container (the real class, its @enter run once), calls run here."""
    monkeypatch.setattr(modal_app, "ARTIFACTS_DIR", str(tmp_path / "volume"))
    volume = StandInVolume(tmp_path / "volume")
    monkeypatch.setattr(modal_app, "artifacts_volume", volume)
    state = SimpleNamespace(app=StandInApp(), calls=[], options=[], containers={}, fail_index=None, volume=volume,
                            loads=0)
    real_load = local.load_model

    def counting_load(*args, **kwargs):
        state.loads += 1
        return real_load(*args, **kwargs)

    monkeypatch.setattr(local, "load_model", counting_load)

    class Cls:
        def with_options(self, **options):
            state.options.append(options)
            return self

        def __call__(self, **params):
            key = json.dumps(params, sort_keys=True)
            container = state.containers.setdefault(key, modal_app.Extractor(**params))
            return SimpleNamespace(**{name: StandInMethod(name, getattr(container, name).local, state)
                                      for name in ("vectors", "mean_shard", "store_shard")})

    fake = SimpleNamespace(app=state.app, Extractor=Cls(), artifacts_volume=volume,
                           **{name: StandInMethod(name, getattr(modal_app, name).local, state)
                              for name in ("aggregate", "shard_headers", "store_headers", "check_shards")})
    monkeypatch.setattr(remote, "APP_MODULE", fake)
    return state


def test_a_container_whose_model_is_not_the_one_the_client_identified_refuses_to_compute(stand_in, tmp_path,
                                                                                          monkeypatch):
    """A GGUF file is converted in each container, from the image's wheel: a container that started
    later from an image whose file (or transformers) differs must not compute under the client's identity."""
    package = tmp_path / "site" / "tiny_gguf_wheel"  # a package:file GGUF, as the image installs the SmolLM2 wheel
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    tiny_llama_gguf(package / "model.gguf", seed=0)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    cfg = compose_cfg(*MODAL, "model=hf", "model.gguf=tiny_gguf_wheel:model.gguf", f"paths.artifacts={tmp_path / 'a'}")
    chunks = chunks_from_cfg(cfg.pooling)
    with open_backend(cfg) as backend:
        here = hashlib.sha256((package / "model.gguf").read_bytes()).hexdigest()
        assert backend.built.metadata["gguf_sha256"] == here  # identified here, from this machine's file
        tiny_llama_gguf(package / "model.gguf", seed=1)  # the container's is another, of the same shapes
        with pytest.raises(RemoteError, match="failed on Modal: the model in the Modal container is not the one this "
                                              "machine identified .*converted_sha256: .*gguf_sha256: "):
            backend.vectors(["hi"], chunks)
    with open_backend(cfg) as backend:  # both sides have the same file now: computed
        assert backend.vectors(["hi"], chunks).raw.shape == (1, 4 * 16)


def test_a_random_model_built_from_a_config_folder_computes_on_modal(stand_in, tmp_path):
    """The client identifies the model from its config file; the container from the model it built,
    whose config gained load-time keys (dtype): the same architecture must be the same identity."""
    from transformers import GPTNeoXConfig

    GPTNeoXConfig(vocab_size=4096, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64).save_pretrained(tmp_path / "config")  # config.json alone, no dtype in it
    cfg = compose_cfg(*MODAL, "model=hf", f"model.name_or_path={tmp_path / 'config'}", "model.random_init=true",
                      f"paths.artifacts={tmp_path / 'a'}")
    with open_backend(cfg) as backend:
        out = backend.vectors(TEXTS, chunks_from_cfg(cfg.pooling))
    lm = load_model(model_spec(cfg))
    ref = reference_model(lm.model)
    for i, text in enumerate(TEXTS):
        assert rel_err(out.raw[i], reference_vector(ref, lm.encode([text])[0][0], LONG)) < 1e-5


def test_the_stand_in_refuses_a_second_app_run_like_modal(stand_in):
    with stand_in.app.run():
        with pytest.raises(modal.exception.InvalidError, match="already running"):
            with stand_in.app.run():
                pass


def test_vectors_go_out_in_token_groups_and_come_back_in_order(stand_in, tmp_path):
    cfg = compose_cfg(*MODAL, "hardware.request_tokens=64")
    with open_backend(cfg) as backend:
        out = backend.vectors(TEXTS, chunks_from_cfg(cfg.pooling))
    requests = [r for name, r in stand_in.calls if name == "vectors"]
    assert [t for r in requests for t in r["texts"]] == TEXTS  # every text once, in order
    here = compose_cfg("model.dtype=float32")
    lm = load_model(model_spec(here))  # the reference, on this CPU
    lengths = [len(lm.encode([t])[0][0]) for t in TEXTS]
    for r in requests:  # a group holds at most 64 tokens, unless a single text is longer
        assert len(r["texts"]) == 1 or sum(lengths[TEXTS.index(t)] for t in r["texts"]) <= 64
    assert len(requests) == len(token_groups(lengths, 64)) > 1
    assert out.n_tokens == lengths
    ref = reference_model(lm.model)
    for i, text in enumerate(TEXTS):  # row i is text i, whichever request carried it
        assert rel_err(out.raw[i], reference_vector(ref, lm.encode([text])[0][0], LONG)) < 1e-5
    assert stand_in.options[0]["gpu"] == "H100" and stand_in.options[0]["max_containers"] == 8
    assert stand_in.app.starts == 1 and not stand_in.app.running  # the run closed its app
    assert token_groups([5, 70, 3, 3, 60], 64) == [[0], [1], [2, 3], [4]]


@pytest.mark.slow  # two means and two passes: 10 s
def test_a_prompt_and_one_vector_per_block_travel_to_modal_as_the_config_names_them(stand_in, tmp_path):
    """prompt=echo with model.layers=each: the mean made on Modal and the centred per-block vectors
    computed there equal those made on this machine."""
    overrides = ["prompt=echo", "model.layers=each", "corpus=samples", "corpus.shard_size=8", "centering=corpus_mean",
                 "centering.min_count=2", "centering.tail_start=4"]
    out = {}
    for where, more in (("here", ["model.dtype=float32"]), ("modal", MODAL)):
        cfg = compose_cfg(*overrides, *more, f"paths.artifacts={tmp_path / where}")
        jobs.run("mean", cfg, tmp_path / f"mean-{where}")
        with open_backend(cfg) as backend:
            mean = corpus_mean(cfg)
            out[where] = (backend.vectors(TEXTS, chunks_from_cfg(cfg.pooling), mean), mean)
    assert [name for name, _ in stand_in.calls].count("vectors") >= 1
    (here, here_mean), (there, there_mean) = out["here"], out["modal"]
    assert here_mean.metadata["mean_id"] == there_mean.metadata["mean_id"]
    assert there_mean.metadata["prompt"]["template"] == compose_cfg("prompt=echo").prompt.template
    assert here.raw.shape == there.raw.shape == (len(TEXTS), 4 * 4 * 128)
    assert rel_err(there.raw, here.raw) < 1e-5 and rel_err(there.centered, here.centered) < 1e-5


def test_mean_on_modal_fans_out_resumes_after_failures_and_downloads(stand_in, tmp_path):
    overrides = ["job=mean", "corpus=samples", "corpus.shard_size=4", "centering.min_count=4"]
    jobs.run("mean", compose_cfg(*overrides, f"paths.artifacts={tmp_path / 'local'}", "model.dtype=float32"), tmp_path)
    cfg = compose_cfg(*overrides, *MODAL, f"paths.artifacts={tmp_path / 'artifacts'}")
    stand_in.fail_index = 2
    with pytest.raises(RemoteError, match="1 of 5 shards failed on Modal: CUDA out of memory in shard 2"):
        jobs.run("mean", cfg, tmp_path)
    shards = sorted(p.name for p in (tmp_path / "volume").rglob("shards/*.safetensors"))
    assert shards == ["00000.safetensors", "00001.safetensors", "00003.safetensors", "00004.safetensors"]
    stand_in.fail_index, stand_in.calls[:] = None, []
    jobs.run("mean", cfg, tmp_path)
    assert [r["index"] for name, r in stand_in.calls if name == "mean_shard"] == [2]  # only the failed one again
    [here] = (tmp_path / "local").glob(f"means/*/{store.MEAN_FILE}")
    [downloaded] = (tmp_path / "artifacts").glob(f"means/*/{store.MEAN_FILE}")
    assert downloaded.parent.name == here.parent.name  # the same mean id
    a, b = load_file(here), load_file(downloaded)
    assert all(torch.equal(a[k], b[k]) for k in ("sum", "count", "mean"))
    metrics = jobs.run("mean", compose_cfg(*overrides, *MODAL, f"paths.artifacts={tmp_path / 'artifacts'}",
                                           "mean.stage=progress"), tmp_path)
    assert metrics["shards"] == 5 and metrics["docs"] == 20


def test_the_mean_on_the_volume_is_reused_only_with_the_local_checksum(stand_in, tmp_path):
    art = tmp_path / "artifacts"
    for min_count in (4, 3):  # two means of the samples that differ
        jobs.run("mean", compose_cfg("job=mean", "corpus=samples", f"centering.min_count={min_count}",
                                     f"paths.artifacts={art}", "model.dtype=float32"), tmp_path)
    cfg = compose_cfg(*MODAL, "centering=corpus_mean", f"paths.artifacts={art}", "centering.mean_path=auto",
                      "corpus=samples", "centering.min_count=4")
    mean = corpus_mean(cfg)
    chunks = chunks_from_cfg(cfg.pooling)
    with open_backend(cfg) as backend:
        first = backend.vectors(TEXTS, chunks, mean)
        backend.vectors(TEXTS, chunks, mean)
    relpath = f"means/{mean.metadata['mean_id']}/{store.MEAN_FILE}"
    assert stand_in.volume.uploads == [relpath]  # uploaded once, then reused
    assert (tmp_path / "volume" / relpath).read_bytes() == Path(mean.path).read_bytes()
    assert all(r["mean_sha256"] == mean.sha256 for name, r in stand_in.calls if name == "vectors")
    # A different file under the same name on the volume is replaced, not used.
    [other] = [p for p in art.glob(f"means/*/{store.MEAN_FILE}") if p != mean.path]
    shutil.copy(other, tmp_path / "volume" / relpath)
    with open_backend(cfg) as backend:
        again = backend.vectors(TEXTS, chunks, mean)
    assert stand_in.volume.uploads == [relpath, relpath]
    assert torch.equal(first.centered, again.centered)
    for i, n in enumerate(first.n_tokens):
        assert rel_err(first.raw[i].double() - first.centered[i].double(), reference_pooled_mean(mean, chunks, n)) < 1e-5


@pytest.mark.slow  # over 10 s: CI (--runslow) runs it; the default run stays under 5 minutes
def test_pipeline_on_modal_enters_the_app_once_and_loads_the_model_once(stand_in, tmp_path):
    cfg = compose_cfg("+experiment=long_centered", *MODAL, "corpus.max_docs=24", "corpus.shard_size=8",
                      "logger=none", f"paths.artifacts={tmp_path / 'artifacts'}")
    metrics = jobs.run("pipeline", cfg, tmp_path / "run")  # the mean is computed first, then the CSVs
    assert stand_in.app.starts == 1 and not stand_in.app.running
    assert stand_in.loads == 1 and len(stand_in.containers) == 1
    assert {name for name, _ in stand_in.calls} == {"check_shards", "mean_shard", "aggregate", "vectors"}
    assert metrics["compare/passed"] and metrics["mean/shards_computed"] == 3
    assert (tmp_path / "run" / "similarity_long_all.png").is_file()


def test_store_on_modal_fans_out_resumes_and_downloads_or_keeps_the_shards(stand_in, tmp_path):
    overrides = ["job=store", *MODAL, "corpus=samples", "store.shard_size=8", f"paths.artifacts={tmp_path / 'a'}"]
    stand_in.fail_index = 1  # 20 samples: 3 shards
    with pytest.raises(RemoteError, match="1 of 3 store shards failed on Modal: CUDA out of memory in shard 1"):
        jobs.run("store", compose_cfg(*overrides, "store.download=false"), tmp_path)
    stand_in.fail_index, stand_in.calls[:] = None, []
    metrics = jobs.run("store", compose_cfg(*overrides, "store.download=false"), tmp_path)
    assert [r["index"] for name, r in stand_in.calls if name == "store_shard"] == [1]  # only the failed one again
    store = VectorStore.open(tmp_path / "a" / "vectors" / metrics["store_id"])
    assert store.remote and len(store) == 20 and not list(store.folder.glob("shards/*"))
    with pytest.raises(UserError, match="on modal volume actexp-artifacts: download them .*store.download=true"):
        store.vectors()
    stand_in.calls[:] = []
    jobs.run("store", compose_cfg(*overrides), tmp_path)  # store.download=true: nothing is computed again
    assert not [name for name, _ in stand_in.calls if name == "store_shard"]
    here = jobs.run("store", compose_cfg("job=store", "model.dtype=float32", "corpus=samples", "store.shard_size=8",
                                         f"paths.artifacts={tmp_path / 'local'}"), tmp_path)
    assert here["store_id"] == metrics["store_id"]
    downloaded = VectorStore.open(tmp_path / "a" / "vectors" / metrics["store_id"])
    assert not downloaded.remote
    assert np.array_equal(downloaded.vectors(), VectorStore.open(tmp_path / "local" / "vectors" / here["store_id"]).vectors())


def _flip_a_byte_inside_a_vector(shard: Path) -> None:
    """Damage the bytes of the first vector of an Arrow shard, leaving its header as it was."""
    import pyarrow.ipc as ipc

    with ipc.open_file(shard) as reader:
        first = np.asarray(reader.read_all().column("raw")[0].values)[:4].astype(np.float32).tobytes()
    data = bytearray(shard.read_bytes())
    at = data.find(first)
    assert at > 0
    data[at + 1] ^= 0xFF
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("download", ["true", "false"])
def test_a_corrupt_store_shard_on_the_volume_is_recomputed_by_the_next_run(stand_in, tmp_path, download):
    overrides = ["job=store", *MODAL, "corpus=samples", "store.shard_size=8", f"paths.artifacts={tmp_path / 'a'}",
                 f"store.download={download}"]
    metrics = jobs.run("store", compose_cfg(*overrides), tmp_path)
    volume = tmp_path / "volume" / "vectors" / metrics["store_id"]
    _flip_a_byte_inside_a_vector(volume / "shards" / "00001.arrow")
    stand_in.calls[:] = []
    jobs.run("store", compose_cfg(*overrides), tmp_path)  # finished: its manifest is read, nothing else
    assert not stand_in.calls
    jobs.run("store", compose_cfg(*overrides, "store.verify=true"), tmp_path)
    assert [r["index"] for name, r in stand_in.calls if name == "store_shard"] == [1]  # that shard, and only it
    here = jobs.run("store", compose_cfg("job=store", "model.dtype=float32", "corpus=samples", "store.shard_size=8",
                                         f"paths.artifacts={tmp_path / 'local'}"), tmp_path)
    reference = VectorStore.open(tmp_path / "local" / "vectors" / here["store_id"]).vectors()
    if download == "false":  # the volume's copy is whole again: read it where it lies
        shutil.copytree(volume / "shards", tmp_path / "a" / "vectors" / metrics["store_id"] / "shards")
        manifest = tmp_path / "a" / "vectors" / metrics["store_id"] / "manifest.json"
        manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"location": "local"}))
    assert np.array_equal(VectorStore.open(tmp_path / "a" / "vectors" / metrics["store_id"]).vectors(), reference)


def test_a_corrupt_mean_shard_on_the_volume_is_recomputed_by_the_next_run(stand_in, tmp_path):
    overrides = ["job=mean", "corpus=samples", "corpus.shard_size=4"]
    jobs.run("mean", compose_cfg(*overrides, *MODAL, "centering.min_count=4", f"paths.artifacts={tmp_path / 'a'}"),
             tmp_path)
    [shard] = (tmp_path / "volume").glob("stats/*/shards/00002.safetensors")
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # inside the sums, past the header
    shard.write_bytes(bytes(data))
    stand_in.calls[:] = []
    again = jobs.run("mean", compose_cfg(*overrides, *MODAL, "centering.min_count=3", f"paths.artifacts={tmp_path / 'a'}"),
                     tmp_path)
    assert [r["index"] for name, r in stand_in.calls if name == "mean_shard"] == [2]
    here = jobs.run("mean", compose_cfg(*overrides, "model.dtype=float32", "centering.min_count=3",
                                        f"paths.artifacts={tmp_path / 'local'}"), tmp_path)
    a, b = load_file(again["mean"]), load_file(here["mean"])
    assert all(torch.equal(a[k], b[k]) for k in ("sum", "count", "mean"))


def test_bench_refuses_modal_with_one_line(stand_in, tmp_path):
    with pytest.raises(UserError, match="cannot time hardware=modal"):
        jobs.run("bench", compose_cfg("job=bench", *MODAL), tmp_path)
    assert stand_in.app.starts == 0


def test_missing_deployment_names_the_deploy_command(monkeypatch, stand_in):
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


def test_a_python_session_on_modal_keeps_one_app_and_one_model_for_all_its_calls(stand_in):
    import actexp

    with actexp.Session(*MODAL) as s:
        first = s.vectors(TEXTS)
        s.similarity(TEXTS[0], TEXTS[2])
        assert stand_in.app.running  # held open between calls, as a notebook needs
    assert stand_in.app.starts == 1 and not stand_in.app.running and stand_in.loads == 1
    with actexp.Session("model.dtype=float32") as here:
        assert rel_err(torch.from_numpy(first.raw), torch.from_numpy(here.vectors(TEXTS).raw)) < 1e-5


def test_a_container_reads_the_corpus_mean_once_per_run(stand_in, tmp_path):
    art = tmp_path / "artifacts"
    jobs.run("mean", compose_cfg("job=mean", "corpus=samples", "centering.min_count=4", f"paths.artifacts={art}",
                                 "model.dtype=float32"), tmp_path)
    cfg = compose_cfg(*MODAL, "centering=corpus_mean", f"paths.artifacts={art}", "corpus=samples", "centering.min_count=4")
    mean, chunks = corpus_mean(cfg), chunks_from_cfg(cfg.pooling)
    with open_backend(cfg) as backend:
        first = backend.vectors(TEXTS, chunks, mean)
        [on_volume] = (tmp_path / "volume").glob(f"means/*/{store.MEAN_FILE}")
        garbage = on_volume.with_suffix(".new")
        garbage.write_bytes(b"not read again")
        garbage.replace(on_volume)  # replaced as writers replace files; the second request uses the container's copy
        assert torch.equal(backend.vectors(TEXTS, chunks, mean).centered, first.centered)


def test_a_bad_shard_found_by_the_modal_merge_sends_the_next_run_back_to_extraction(stand_in, tmp_path):
    overrides = ["job=mean", "corpus=samples", "corpus.shard_size=4", *MODAL, f"paths.artifacts={tmp_path / 'a'}"]
    jobs.run("mean", compose_cfg(*overrides, "centering.min_count=4"), tmp_path)
    [shard] = (tmp_path / "volume").glob("stats/*/shards/00002.safetensors")
    shard.write_bytes(shard.read_bytes()[:-7])  # truncated on the volume after extraction
    with pytest.raises(UserError, match="shard 2 .* was removed"):
        jobs.run("mean", compose_cfg(*overrides, "centering.min_count=3", "mean.stage=aggregate"), tmp_path)
    with pytest.raises(UserError, match="not all extracted: run job=mean mean.stage=extract"):
        jobs.run("mean", compose_cfg(*overrides, "centering.min_count=3", "mean.stage=aggregate"), tmp_path)
    assert jobs.run("mean", compose_cfg(*overrides, "centering.min_count=3"), tmp_path)["shards_computed"] == 1


def test_a_downloaded_shard_is_the_one_the_volume_reported(stand_in, tmp_path):
    """The manifest is written from the headers the volume reported: a shard another run rewrote in
    between (a retried input) is refused at download, not listed under a checksum it does not have."""
    from actexp.jobs import common
    from actexp.jobs.store import layout_of

    cfg = compose_cfg("job=store", *MODAL, "corpus=samples", "store.shard_size=8", f"paths.artifacts={tmp_path / 'a'}",
                      "store.download=false")
    jobs.run("store", cfg, tmp_path)
    layout = layout_of(cfg, common.corpus_of(cfg), None)
    with open_backend(cfg) as backend:
        headers = [h for h in backend.store_headers(layout) if h]
        reported = [dict(h) for h in headers]
        reported[1]["sha256"] = "0" * 64
        with pytest.raises(RemoteError, match="shard 1 downloaded from the Modal volume is not the shard the volume "
                                              "reported"):
            backend.finish_store(layout, reported, True)
        assert not layout.shard(1).exists()
        assert backend.finish_store(layout, headers, True) == "local"
