import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from actexp.config.schema import CONF
from helpers import compose_cfg

GROUPS = ["job", "model", "pooling", "centering", "hardware", "logger"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes(group):
    assert options(group), f"conf/{group} is empty"
    for option in options(group):
        extra = ["model.name_or_path=/some/dir"] if (group, option) == ("model", "hf") else []
        cfg = compose_cfg(f"{group}={option}", *extra)
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        assert container[group]["name"] == (option if (group, option) != ("model", "hf") else "/some/dir")


def test_pythia_configs_carry_their_architecture():
    cfg = compose_cfg("model=pythia-12b")
    assert cfg.model.name_or_path == "EleutherAI/pythia-12b" and not cfg.model.random_init
    a = cfg.model.arch
    assert (a.hidden_size, a.num_hidden_layers, a.num_attention_heads, a.intermediate_size, a.vocab_size) == (
        5120, 36, 40, 20480, 50688)
    assert (a.rotary_pct, a.use_parallel_residual, a.max_position_embeddings) == (0.25, True, 2048)


def test_defaults():
    cfg = compose_cfg()
    assert (cfg.job.name, cfg.model.name, cfg.pooling.name, cfg.centering.name, cfg.hardware.name) == (
        "extract", "tiny", "long", "none", "cpu")
    assert cfg.name == "extract"


def test_typo_in_a_key_fails():
    with pytest.raises(ConfigCompositionException, match="pooling.chunkz"):
        compose_cfg("pooling.chunkz=[]")
    with pytest.raises(ConfigCompositionException):
        compose_cfg("model.max_tokens=lots")


def test_typo_inside_a_yaml_file_fails(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "typo.yaml").write_text("name: typo\nrandom_inti: true\n")
    with pytest.raises(ConfigCompositionException, match="random_inti"):
        compose_cfg(f"hydra.searchpath=[file://{tmp_path}]", "model=typo")


@pytest.mark.parametrize("override,expected", [
    ("model.max_tokens=-3", "model.max_tokens=-3 is out of range: give a whole number of at least 1, or null = the model's context"),
    ("model.max_tokens=0", "model.max_tokens=0 is out of range"),
    ("corpus.max_docs=-1", "corpus.max_docs=-1 is out of range: give a whole number of at least 1, or null = every document"),
    ("corpus.max_docs=0", "corpus.max_docs=0 is out of range"),
    ("hardware.threads=-3", "hardware.threads=-3 is out of range: give a whole number of at least 1, or null"),
    ("store.shard_size=0", "store.shard_size=0 is out of range: give a whole number of at least 1"),
    ("centering.tail_start=-1", "centering.tail_start=-1 is out of range: give a number of 0 or more"),
    ("compare.tolerance=-1", "compare.tolerance=-1.0 is out of range: give a number of 0 or more"),
    ("bench.invariance=-1", "bench.invariance=-1 is out of range: give a number of 0 or more"),
    ("corpus.min_chars=-1", "corpus.min_chars=-1 is out of range: give a number of 0 or more"),
    ("model.seed=-1", "model.seed=-1 is out of range: give a number of 0 or more"),
    ("hardware.pack_width=0", "hardware.pack_width=0 is out of range: give a whole number of at least 1, or null"),
])
def test_numbers_out_of_range_are_refused_when_composed(override, expected):
    from actexp.api import compose_config
    from actexp.errors import UserError

    with pytest.raises(UserError) as e:
        compose_config(override)
    assert str(e.value).startswith(expected)
    compose_config(override.split("=")[0] + "=null" if "max" in override or "threads" in override else "job=extract")


def test_a_number_out_of_range_is_one_line_from_the_cli(tmp_path):
    from helpers import run_cli

    r = run_cli("job=extract", "text=hi", "model.max_tokens=-3", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == ("error: model.max_tokens=-3 is out of range: give a whole number of at "
                                              "least 1, or null = the model's context\n")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no run folder left behind


def test_an_unquoted_text_with_a_comma_says_how_to_quote_it(tmp_path):
    from helpers import run_cli

    r = run_cli("job=extract", "text=Hello,", "world", cwd=tmp_path)  # what a shell passes for text=Hello, world
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: cannot parse an override: a value with commas") and """'text="Hello, world"'""" in r.stderr
    from actexp.api import compose_config
    from actexp.errors import UserError

    with pytest.raises(UserError, match="cannot parse an override: .* needs inner quotes"):
        compose_config('text="a')  # an unbalanced quote: Hydra's lexer, not its parser, refuses it


def test_a_file_this_user_may_not_open_is_not_called_unwritable():
    import errno

    from actexp.config.suggest import message
    from actexp.errors import user_fault

    denied = PermissionError(errno.EACCES, "Permission denied", "/data/a.txt")
    assert user_fault(denied) and message(denied).startswith("cannot use /data/a.txt: Permission denied: give a path")
    read_only = OSError(errno.EROFS, "Read-only file system", "/mnt/run")
    assert message(read_only).startswith("cannot write /mnt/run: Read-only file system") and "hydra.run.dir" in message(read_only)


@pytest.mark.parametrize("override, expected", [
    ("+model.max_tokenz=5", "unknown key 'model.max_tokenz': did you mean model.max_tokens?"),
    ("+txt=Hello", "unknown key 'txt': did you mean text?"),
    ("model.max_tokens=abc", "model.max_tokens=abc is not a whole number of at least 1: give a whole number of at "
                             "least 1, or null = the model's context"),
    ("model.prepend_bos=maybe", "model.prepend_bos=maybe is not true or false: give true or false"),
])
def test_keys_added_with_plus_and_values_of_the_wrong_type_are_one_clear_line(override, expected):
    from actexp.api import compose_config
    from actexp.errors import UserError

    with pytest.raises(UserError) as raised:
        compose_config("job=extract", "text=hi", override)
    assert str(raised.value) == expected
