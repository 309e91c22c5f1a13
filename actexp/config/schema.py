"""Dataclass schemas of every config group, registered in Hydra's ConfigStore.

The root schema `base_config` types every group, so a misspelt key or a wrong type in a YAML
file or on the command line fails at compose time instead of being ignored.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

# The config groups: a checkout keeps conf/ beside the package; an installed wheel carries it inside.
PACKAGE = Path(__file__).resolve().parents[1]
CONF = PACKAGE.parent / "conf"
if not CONF.is_dir():
    CONF = PACKAGE / "conf"


@dataclass
class JobConfig:
    name: str = "extract"


@dataclass
class ArchConfig:
    """GPT-NeoX architecture numbers, enough to build the model with `random_init=true`."""

    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 512
    vocab_size: int = 4096
    max_position_embeddings: int = 2048
    rotary_pct: float = 0.25
    rotary_emb_base: float = 10000.0
    use_parallel_residual: bool = True
    layer_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False


@dataclass
class ModelConfig:
    name: str = "tiny"
    name_or_path: Optional[str] = None
    revision: Optional[str] = None
    dtype: Optional[str] = None
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    random_init: bool = False
    seed: int = 0
    layers: Any = "all"
    max_tokens: Optional[int] = None
    prepend_bos: bool = False
    blocks: Optional[str] = None
    tokenizer: Optional[str] = None
    arch: Optional[ArchConfig] = None
    weights: Optional[str] = None
    gguf: Optional[str] = None


@dataclass
class ChunkConfig:
    kind: str = "exp"
    alpha: Optional[float] = None


@dataclass
class PoolingConfig:
    name: str = "long"
    chunks: List[ChunkConfig] = field(default_factory=list)


@dataclass
class CenteringConfig:
    name: str = "none"
    mean_path: str = "auto"
    min_count: int = 8
    tail_start: int = 32


@dataclass
class PromptConfig:
    name: str = "none"
    template: Optional[str] = None
    chat: bool = False
    span: str = "text"


@dataclass
class HardwareConfig:
    name: str = "cpu"
    backend: str = "local"
    device: str = "cpu"
    dtype: str = "float32"
    batch_tokens: int = 8192
    packing: bool = True
    pack_width: Optional[int] = None
    max_padding: float = 0.1
    threads: Optional[int] = None
    # Modal (hardware=modal)
    gpu: str = "H100"
    timeout: int = 3600
    max_containers: int = 8
    retries: int = 2
    deployed: bool = False
    app_name: str = "actexp"
    hf_volume: str = "actexp-hf-cache"
    artifacts_volume: str = "actexp-artifacts"
    hf_secret: Optional[str] = None
    request_tokens: int = 262144


@dataclass
class CorpusConfig:
    name: str = "stdlib_docs"
    source: str = "stdlib_docs"
    path: Optional[str] = None
    dataset: Optional[str] = None
    split: str = "train"
    text_field: str = "text"
    min_chars: int = 0
    max_docs: Optional[int] = None
    shard_size: int = 64


@dataclass
class MeanConfig:
    stage: str = "all"
    checkpoint_every: int = 8


@dataclass
class StoreConfig:
    stage: str = "all"
    shard_size: int = 1024
    storage_dtype: str = "float32"
    download: bool = True
    verify: bool = False
    batch_kb: int = 1024


@dataclass
class AnalyzeConfig:
    source: str = "samples"
    path: Optional[str] = None
    csvs: List[str] = field(default_factory=list)
    max_rows: int = 2000
    seed: int = 0
    log_vectors: bool = True


@dataclass
class NeighborsConfig:
    queries: List[str] = field(default_factory=list)
    ids: List[str] = field(default_factory=list)
    store: Optional[str] = None
    k: int = 10
    block_rows: int = 8192


@dataclass
class CsvConfig:
    source: str = "samples"
    variants: Optional[List[str]] = None


@dataclass
class PlotConfig:
    csv: Optional[str] = None
    vmin: Optional[float] = None
    vmax: Optional[float] = None
    center: Optional[float] = None


@dataclass
class VisualizeConfig:
    csvs: List[str] = field(default_factory=list)
    top_dims: int = 10


@dataclass
class BenchConfig:
    docs: int = 40
    doc_tokens: int = 256
    min_tokens: Optional[int] = None
    mean_docs: int = 256
    repeats: int = 3
    warmup: int = 1
    warmup_docs: Optional[int] = None
    seed_docs: Optional[int] = None
    measure: Optional[List[str]] = None
    invariance: int = 0
    peak_tflops: Optional[float] = None


@dataclass
class StsConfig:
    pairs: str = "stsb"
    split: str = "test"
    columns: List[str] = field(default_factory=lambda: ["sentence1", "sentence2", "score"])
    fit: str = "stsb"
    variants: List[str] = field(default_factory=list)
    abtt_dims: int = 3
    whitening_dims: Optional[int] = None
    select_on: Optional[str] = None


@dataclass
class BootstrapConfig:
    resamples: int = 1000
    seed: int = 0
    level: float = 0.95


@dataclass
class CompareConfig:
    raw_csv: Optional[str] = None
    centered_csv: Optional[str] = None
    use_samples: bool = False
    tolerance: float = 1e-4


@dataclass
class LoggerConfig:
    name: str = "wandb"
    project: str = "actexp"
    entity: Optional[str] = None
    mode: str = "offline"
    log_artifacts: bool = False
    log_texts: bool = False
    tags: List[str] = field(default_factory=list)


@dataclass
class PathsConfig:
    artifacts: str = "~/.cache/actexp"  # conf/config.yaml reads $ACTEXP_ARTIFACTS and $XDG_CACHE_HOME first


@dataclass
class Config:
    job: JobConfig = field(default_factory=JobConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    centering: CenteringConfig = field(default_factory=CenteringConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    mean: MeanConfig = field(default_factory=MeanConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    neighbors: NeighborsConfig = field(default_factory=NeighborsConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    csv: CsvConfig = field(default_factory=CsvConfig)
    plot: PlotConfig = field(default_factory=PlotConfig)
    visualize: VisualizeConfig = field(default_factory=VisualizeConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    sts: StsConfig = field(default_factory=StsConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    name: str = "default"
    text: Optional[str] = None
    file: Optional[str] = None
    text_a: Optional[str] = None
    text_b: Optional[str] = None
    file_a: Optional[str] = None
    file_b: Optional[str] = None


def register() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)
    # ${pid:} in run folder names: two runs started in the same second never share a folder. Cached,
    # so a joblib worker resolves the sweep folder to the launching process's value (Hydra copies the cache).
    OmegaConf.register_new_resolver("pid", os.getpid, use_cache=True, replace=True)
    # ${first:a,b,...}: the first argument that is set; model=hf is named by its checkpoint, else its GGUF file.
    OmegaConf.register_new_resolver("first", lambda *values: next((v for v in values if v is not None), None),
                                    replace=True)
