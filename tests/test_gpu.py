"""Checks that need a CUDA device (skipped without one; `pytest -m gpu` runs only these)."""

import pytest
import torch
from safetensors.torch import load_file

from actexp import jobs
from actexp.backends.local import LocalBackend
from actexp.jobs.common import chunks as chunks_from_cfg
from actexp.jobs.common import model_spec
from actexp.models.loading import load_model
from helpers import LONG, TEXTS, compose_cfg, reference_model, reference_vector, rel_err, run_if


@run_if(cuda=True)
def test_seeded_weights_are_the_same_on_the_gpu():  # random weights: the seeded init is what is checked
    cpu = load_model(model_spec(compose_cfg("model.random_init=true"))).model.state_dict()
    gpu = load_model(model_spec(compose_cfg("hardware=cuda", "model.dtype=float32", "model.random_init=true")),
                     "cuda").model.state_dict()
    assert all(torch.equal(v, gpu[k].cpu()) for k, v in cpu.items())


@run_if(cuda=True)
@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-4), ("bfloat16", 5e-2)])
def test_cuda_vectors_match_the_cpu_reference(dtype, tolerance):
    cfg = compose_cfg("hardware=cuda", f"hardware.dtype={dtype}")
    out = LocalBackend.from_config(cfg).vectors(TEXTS, chunks_from_cfg(cfg.pooling))
    lm = load_model(model_spec(compose_cfg()))  # float32 on the CPU
    ref = reference_model(lm.model)
    for i, text in enumerate(TEXTS):
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert rel_err(out.raw[i], reference_vector(ref, ids, LONG)) < tolerance


@run_if(cuda=True)
def test_mean_on_the_gpu_matches_the_cpu(tmp_path):
    common = ["job=mean", "corpus=samples", "centering.min_count=4", "model.dtype=float32"]
    means = {}
    for hardware in ("cpu", "cuda"):
        jobs.run("mean", compose_cfg(*common, f"hardware={hardware}", f"paths.artifacts={tmp_path / hardware}"),
                 tmp_path)
        [path] = (tmp_path / hardware).glob("means/*/corpus_mean.safetensors")
        means[hardware] = load_file(path)
    assert torch.equal(means["cpu"]["count"], means["cuda"]["count"])
    assert rel_err(means["cuda"]["sum"], means["cpu"]["sum"]) < 1e-5
