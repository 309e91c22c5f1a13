"""job=bench: what actexp costs beyond the model's own forward pass, and against the seed's way.

On the same documents and token-budget batches, after a warm-up, the median of several repeats of:
  bare_forward            the model body alone (no hooks, no LM head, no cache): the floor
  extract_short           actexp's short vectors
  extract_long_centered   actexp's long vectors, raw and centred from one pass
  seed_style              one text at a time, output_hidden_states=True, mean over layers, pool
  corpus_mean             actexp's sharded mean (shard files written and merged)
  seed_style_mean         every document's per-layer activations written to disk, read back, averaged
Peak memory: one child process per measurement on the CPU (resident set), or
torch.cuda.max_memory_allocated on a GPU; the corpus mean at N and 4N documents.
Load time: the model and tokenizer built from what the store holds, first thing (a GGUF model
converted on its first use: that one-time conversion is not part of it), and the host memory it took.
"""

import json
import logging
import math
import multiprocessing
import random
import resource
import shutil
import statistics
import tempfile
import time
from itertools import islice
from pathlib import Path
from types import SimpleNamespace
from typing import List, Optional, Tuple

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from ..backends import open_backend
from ..config.schema import CONF
from ..data.corpus import Corpus, Document
from ..errors import UserError
from ..maths.centering import MeanAccumulator
from ..maths.pooling import pool, weights
from ..models.activations import batch_ids, segments, stream
from ..report.console import wrote
from ..store import vectors as vector_store
from ..store.io import write_json
from ..store.layout import MANIFEST
from ..store.means import Stats, load_mean
from ..store.reader import VectorStore
from ..store.vectors import StoreLayout
from .common import chunks

log = logging.getLogger(__name__)
SHORT, LONG = (chunks(OmegaConf.load(CONF / "pooling" / f"{mode}.yaml")) for mode in ("short", "long"))
# What actexp promises against the model's own cost (README, "Performance"): ratio -> (op, bound).
TARGETS = {"extract_vs_bare": (">=", 0.95), "mem_extract_vs_bare": ("<=", 1.10), "mean_vs_seed_style": (">=", 2.0),
           "mean_vs_bare": (">=", 0.95),
           "mean_mem_growth": ("<=", 1.10), "padding_waste": ("<=", 0.10), "store_vs_bare": (">=", 0.95),
           "store_mem_growth": ("<=", 1.10), "pool_fraction": ("<=", 0.05)}
OPS = {">=": lambda value, bound: value >= bound, "<=": lambda value, bound: value <= bound}
TIMED = ("bare_forward", "extract_short", "extract_long_centered", "seed_style", "corpus_mean", "seed_style_mean",
         "store")


class Workload:
    """The model, the documents cut to bench.doc_tokens, and scratch space for the mean files."""

    def __init__(self, cfg, docs: List[Document], backend, scratch_in: Path):
        self.cfg, self.backend = cfg, backend
        self.lm = backend.built.lm  # the model in this process: the bench measures it (hardware=local)
        self.docs = [_cut(self.lm, d, cfg.bench.doc_tokens) for d in docs]
        self.texts = [d.text for d in self.docs]
        self.ids, _ = self.lm.encode(self.texts)
        self.tokens = sum(len(x) for x in self.ids)
        # The seed's way runs one text at a time (and dumps every layer): on a large workload, on the first few only.
        self.seed_ids = self.ids[:cfg.bench.seed_docs or len(self.ids)]
        self.packs = backend.built.checked_batching().packs([len(x) for x in self.ids])  # what extraction runs
        self.scratch = Path(tempfile.mkdtemp(prefix="bench-", dir=scratch_in))  # removed with scratch_in
        self.mean = None

    def sync(self):
        if self.lm.device.type == "cuda":
            torch.cuda.synchronize()

    @torch.inference_mode()
    def bare_forward(self):
        for pack in self.packs:
            input_ids, position_ids = batch_ids(self.lm, self.ids, pack)
            self.lm.body(input_ids=input_ids, position_ids=position_ids, use_cache=False)

    def extract_short(self):
        self.backend.vectors(self.texts, SHORT)

    def extract_long_centered(self):
        self.backend.vectors(self.texts, LONG, self.mean)

    def tokens_of(self, name: str) -> int:
        """The tokens a measurement runs."""
        return sum(len(x) for x in self.seed_ids) if name.startswith("seed_style") else self.tokens

    @torch.inference_mode()
    def seed_style(self):
        for ids in self.seed_ids:
            out = self.lm.model(input_ids=torch.tensor([ids], device=self.lm.device), output_hidden_states=True)
            h = torch.stack(out.hidden_states[1:]).float().mean(0)[0]  # [T, H]
            torch.cat([weights((c,), len(ids))[0].float().to(h.device) @ h for c in LONG])

    def corpus_mean(self, docs=None):
        size = self.cfg.corpus.shard_size
        stats = Stats(Path(tempfile.mkdtemp(dir=self.scratch)), self.lm.metadata, "bench", size)
        docs = docs or self.docs
        shards = ((k, docs[k * size:(k + 1) * size]) for k in range(-(-len(docs) // size)))
        n = sum(1 for _ in self.backend.extract_shards(shards, stats))
        self.mean = self.backend.aggregate(stats, n, 1, 0, 8)

    def store(self, docs=None):
        """The vector store of the documents, raw and centred (job=store's shards, written and checked)."""
        # Shards of corpus.shard_size (N) documents, as the mean's: full at N and 4N, so what the
        # memory measurement compares is the corpus's size, not how full one big shard is.
        layout = StoreLayout(Path(tempfile.mkdtemp(dir=self.scratch)), self.lm.metadata, {"name": "long", "chunks": []},
                             None if self.mean is None else self.mean.sha256, "bench", "float32",
                             self.cfg.corpus.shard_size)
        docs = docs or self.docs
        size = layout.shard_size
        shards = ((k, docs[k * size:(k + 1) * size]) for k in range(-(-len(docs) // size)))
        sum(1 for _ in self.backend.store_shards(shards, layout, LONG, self.mean))

    @torch.inference_mode()
    def seed_style_mean(self):
        folder = Path(tempfile.mkdtemp(dir=self.scratch))
        for i, ids in enumerate(self.seed_ids):  # the seed: dump every document's activations ...
            out = self.lm.model(input_ids=torch.tensor([ids], device=self.lm.device), output_hidden_states=True)
            save_file({"h": torch.stack(out.hidden_states)[:, 0].contiguous().cpu()}, folder / f"{i}.safetensors")
        acc = MeanAccumulator(self.lm.hidden_size)  # ... then read them back and average
        for i in range(len(self.seed_ids)):
            h = load_file(folder / f"{i}.safetensors")["h"][1:].mean(0)  # [T, H]
            acc.add(h[None], [h.shape[0]])

    def run_once(self, name: str) -> Tuple[float, Optional[float]]:
        """Seconds, and on a GPU the peak memory (MB) of one run of a measurement."""
        cuda = self.lm.device.type == "cuda"
        self.sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        getattr(self, name)()
        self.sync()
        return time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**20 if cuda else None


def median_seconds(work: Workload, warm: Workload, names, repeats: int, warmup: int) -> Tuple[dict, dict]:
    """Median seconds per measurement, and on a GPU each one's peak memory over its timed runs (MB).
    Warm-up rounds run on `warm` (the first bench.warmup_docs documents); repeats interleave the
    measurements, so drift of the machine (heat, other load) hits all of them alike. Each timing is
    reported as it finishes."""
    times, peaks = {name: [] for name in names}, {}
    for round_ in range(warmup + repeats):
        timed = round_ >= warmup
        target, what = (work, f"repeat {round_ - warmup + 1}/{repeats}") if timed else (warm, "warm-up")
        for name in names:
            seconds, peak = target.run_once(name)
            log.info(f"{name:<24}{target.tokens_of(name) / seconds:>10,.0f} tokens/s  ({what})")
            if timed:
                times[name].append(seconds)
                if peak is not None:
                    peaks[name] = max(peaks.get(name, 0.0), peak)
    return {name: statistics.median(t) for name, t in times.items()}, peaks


def _reset_peak_rss() -> bool:
    """Start a new high-water mark of the resident set (Linux), so set-up does not count."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cut(lm, doc: Document, n_tokens: int) -> Document:
    """The document with its text cut to about n_tokens tokens (the tokens actually run are counted)."""
    ids = lm.tokenizer(doc.text, add_special_tokens=False)["input_ids"]
    return doc if len(ids) <= n_tokens else Document(doc.id, doc.name, lm.tokenizer.decode(ids[:n_tokens]))


def _child_peak(cfg_dict: dict, name: str, docs_file: str, mean_path) -> float:
    """Peak resident memory (MB) of a fresh process that runs one measurement once."""
    cfg = OmegaConf.create(cfg_dict)
    docs = [Document(**d) for d in json.loads(Path(docs_file).read_text())]
    with open_backend(cfg) as backend:  # a process of its own, so a backend of its own
        work = Workload(cfg, docs, backend, Path(docs_file).parent)
        if mean_path:
            work.mean = load_mean(mean_path)
        _reset_peak_rss()  # the model's construction has its own transient peak: not part of the measurement
        getattr(work, name)()
        return _peak_rss_mb()


def load(backend) -> Tuple[float, float]:
    """Seconds this process takes to load the model and its tokenizer (transformers imported before
    the clock starts), and the peak host memory meanwhile (MB): a model loaded straight onto a GPU
    needs little of it; on the CPU it is where the model lives."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    _reset_peak_rss()
    start = time.perf_counter()
    _ = backend.built.lm
    seconds, host_mb = time.perf_counter() - start, _peak_rss_mb()
    log.info(f"{'load':<24}{seconds:>10.1f} s (model and tokenizer; peak host memory {host_mb:,.0f} MB)")
    return seconds, host_mb


def peak_memory(cfg, work: Workload, gpu_peaks: dict, names: List[str]) -> dict:
    """Peak memory (MB) of each measurement among `names` that has one; on a GPU the timed runs'
    (gpu_peaks), and the mean's and the store's at N and 4N documents run here."""
    n = cfg.bench.mean_docs
    at_scale = {"corpus_mean", "store"} & set(names)
    corpus = list(islice(Corpus(cfg.corpus).documents(), 4 * n)) if at_scale else []
    plan = {"bare_forward": ("bare_forward", work.docs), "extract_long_centered": ("extract_long_centered", work.docs),
            "seed_style": ("seed_style", work.docs), "corpus_mean_n": ("corpus_mean", corpus[:n]),
            "corpus_mean_4n": ("corpus_mean", corpus), "store_n": ("store", corpus[:n]), "store_4n": ("store", corpus)}
    plan = {key: (name, docs) for key, (name, docs) in plan.items() if name in names}  # bench.measure: these only
    if work.lm.device.type == "cuda":
        peaks = {key: gpu_peaks[name] for key, (name, docs) in plan.items() if docs is work.docs and name in gpu_peaks}
        for key, (name, docs) in plan.items():
            if docs is work.docs:
                continue
            target = Workload(cfg, docs, work.backend, work.scratch)
            target.mean = work.mean
            torch.cuda.empty_cache()
            peaks[key] = target.run_once(name)[1]
            log.info(f"{key:<24}{peaks[key]:>10,.0f} MB peak")
        return peaks
    plain = OmegaConf.to_container(cfg, resolve=True)
    mean_path = str(work.mean.path) if work.mean else None
    context = multiprocessing.get_context("spawn")  # a clean interpreter per measurement
    peaks = {}
    with context.Pool(1, maxtasksperchild=1) as pool:
        for key, (name, docs) in plan.items():
            docs_file = work.scratch / f"{key}.json"  # the documents travel as JSON, not re-read
            docs_file.write_text(json.dumps([d.__dict__ for d in docs]))
            peaks[key] = pool.apply(_child_peak, (plain, name, str(docs_file), mean_path))
            log.info(f"{key:<24}{peaks[key]:>10,.0f} MB peak")
    return peaks


def pool_short(work: Workload, n_texts: int = 2000) -> dict:
    """Many short texts (8-32 tokens): the forward pass and the pooling (raw and centred) timed apart."""
    rng = random.Random(0)
    vocab = min(len(work.lm.tokenizer), work.lm.model.config.vocab_size)
    ids = [[rng.randrange(vocab) for _ in range(rng.randint(8, 32))] for _ in range(n_texts)]
    mu = work.mean.to(work.lm.device)  # ([P, H], [H])
    forward = pooling = 0.0
    batches = stream(work.lm, ids, work.backend.built.checked_batching())
    while True:
        work.sync()
        start = time.perf_counter()
        try:
            pack, h = next(batches)
        except StopIteration:
            break
        work.sync()
        middle = time.perf_counter()
        for _, x, lengths in segments(pack, h):
            pool(x, lengths, LONG, (None, mu))
        work.sync()
        forward, pooling = forward + middle - start, pooling + time.perf_counter() - middle
    log.info(f"{'pool_short':<24}{pooling:>9.3f} s pooling and centring, {forward:.3f} s forward "
             f"({n_texts} texts of 8-32 tokens)")
    return {"texts": n_texts, "forward_s": forward, "pool_s": pooling, "pool_fraction": pooling / forward}


def synthetic_store(root: Path, identity: dict, n_docs: int, dims: int, shard_size: int) -> Path:
    """The folder of a store of n_docs raw and centred vectors of N(0, 1) values (seed 0) under root,
    written once: what the read timings read (here and in scripts/store_reads.py)."""
    layout = StoreLayout(root, identity, {"name": "long", "chunks": []}, "0" * 64, "bench-read", "float32", shard_size)
    if (layout.folder / MANIFEST).is_file():
        return layout.folder
    gen, headers = torch.Generator().manual_seed(0), []
    for k, start in enumerate(range(0, n_docs, layout.shard_size)):
        n = min(layout.shard_size, n_docs - start)
        docs = [Document(f"{i:016x}", f"doc {i}", "") for i in range(start, start + n)]
        vectors = SimpleNamespace(raw=torch.randn(n, dims, generator=gen), centered=torch.randn(n, dims, generator=gen),
                                  n_tokens=[1] * n, truncated=[False] * n)  # [n, dims] each
        headers.append(vector_store.write_shard(layout, k, docs, vectors))
    vector_store.write_manifest(layout, headers, {"dims": dims})
    return layout.folder


def read_times(work: Workload, n_docs: int = 10000, repeats: int = 5) -> dict:
    """ms to read 1,000 rows of a 10,000-document store of this model's long vectors (raw and
    centred, synthetic values): a contiguous slice at a random place, and 1,000 random rows."""
    dims = len(LONG) * work.lm.hidden_size
    folder = synthetic_store(Path(tempfile.mkdtemp(dir=work.scratch)), work.lm.metadata, n_docs, dims,
                             work.cfg.store.shard_size)
    store, rng = VectorStore.open(folder), random.Random(0)
    times = {"slice_1000_ms": [], "random_1000_ms": []}
    for _ in range(repeats):
        start = rng.randrange(n_docs - 1000)
        for key, rows in (("slice_1000_ms", slice(start, start + 1000)), ("random_1000_ms", rng.sample(range(n_docs), 1000))):
            t = time.perf_counter()
            store.vectors(rows)
            times[key].append((time.perf_counter() - t) * 1e3)
    result = {"docs": n_docs, "dims": dims} | {k: statistics.median(v) for k, v in times.items()}
    log.info(f"{'read':<24}{result['slice_1000_ms']:>9.1f} ms a 1,000-row slice, {result['random_1000_ms']:.1f} ms "
             f"1,000 random rows ({n_docs:,} documents of {dims} dims)")
    return result


def flops_per_token(work: Workload) -> float:
    """2 x the non-embedding parameters, plus attention over the mean context."""
    body = work.lm.body
    params = sum(p.numel() for name, p in body.named_parameters() if "embed" not in name and "wte" not in name)
    context = sum(len(x) ** 2 for x in work.ids) / work.tokens  # the context a token sees, on average over tokens
    return 2 * params + 2 * len(work.lm.blocks) * context * work.lm.hidden_size


def bench_docs(cfg, lm) -> List[Document]:
    """The documents timed: the first bench.docs of the corpus; with bench.min_tokens, a corpus of
    realistic lengths instead, each document's length drawn log-uniformly from [min_tokens,
    doc_tokens] (seed 0) and filled with the corpus's documents joined one after another."""
    source = Corpus(cfg.corpus).documents()
    if cfg.bench.min_tokens is None:
        return list(islice(source, cfg.bench.docs))
    rng, pool = random.Random(0), []  # pool: token ids of the corpus, in order, reused from the start when spent
    lo, hi = math.log(cfg.bench.min_tokens), math.log(cfg.bench.doc_tokens)
    docs = []
    for k in range(cfg.bench.docs):
        want = round(math.exp(rng.uniform(lo, hi)))
        while len(pool) < want:
            doc = next(source, None)
            if doc is None:
                if not pool and k == 0:
                    raise UserError(f"corpus {cfg.corpus.name} has no documents to fill the bench's with")
                source = Corpus(cfg.corpus).documents()
                continue
            pool += lm.tokenizer(doc.text + "\n\n", add_special_tokens=False)["input_ids"]
        docs.append(Document(f"spread-{k:05d}", f"spread {k} ({want} tokens)", lm.tokenizer.decode(pool[:want])))
        pool = pool[want:]
    return docs


def batch_invariance(work: Workload, batches: int) -> dict:
    """The first document's long vector alone, and in `batches` packs with other documents drawn at
    random (seed 0), each pack a different company: the largest differences from alone."""
    rng = random.Random(0)
    alone = work.backend.vectors(work.texts[:1], LONG).raw[0].double()  # [C*H]
    worst_abs = worst_rel = 0.0
    others = list(range(1, len(work.texts)))
    for _ in range(batches):
        company = rng.sample(others, min(len(others), rng.randint(1, 15)))
        order = company[: len(company) // 2] + [0] + company[len(company) // 2:]  # the text in the middle
        out = work.backend.vectors([work.texts[i] for i in order], LONG).raw[order.index(0)].double()
        worst_abs = max(worst_abs, (out - alone).abs().max().item())
        worst_rel = max(worst_rel, ((out - alone).norm() / alone.norm()).item())
    log.info(f"{'batch_invariance':<24}{worst_abs:>10.2e} max abs, {worst_rel:.2e} relative ({batches} batches)")
    return {"batches": batches, "max_abs_diff": worst_abs, "max_rel_diff": worst_rel, "bitwise": worst_abs == 0.0}


def run(cfg, out_dir, tracker, backend) -> dict:
    if cfg.hardware.backend != "local":
        raise UserError(f"job=bench times the forward pass in this process and cannot time hardware={cfg.hardware.name}: "
                        "run it on the machine with the GPU, with hardware=cuda")
    unknown = sorted(set(cfg.bench.measure or []) - set(TIMED))
    if unknown:
        raise UserError(f"bench.measure names {', '.join(unknown)}: choose from {', '.join(TIMED)}")
    scratch = Path(tempfile.mkdtemp(prefix=".scratch-", dir=out_dir))  # mean files, stores: in the run folder
    try:
        loaded = load(backend)
        docs = bench_docs(cfg, backend.built.lm)
        work = Workload(cfg, docs, backend, scratch)
        warm = work if cfg.bench.warmup_docs is None else Workload(cfg, docs[:cfg.bench.warmup_docs], backend, scratch)
        return _measure(cfg, out_dir, tracker, work, warm, loaded)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _measure(cfg, out_dir, tracker, work: Workload, warm: Workload, loaded: Tuple[float, float]) -> dict:
    load_s, load_host_mb = loaded
    work.corpus_mean()  # extract_long_centered centres with it
    warm.mean = work.mean
    names = [n for n in TIMED if n in (cfg.bench.measure or TIMED)]
    seconds, gpu_peaks = median_seconds(work, warm, names, cfg.bench.repeats, cfg.bench.warmup)
    rates = {name: work.tokens_of(name) / seconds[name] for name in names}
    peaks = peak_memory(cfg, work, gpu_peaks, names)
    slots = sum(pack.slots for pack in work.packs)
    peak = cfg.bench.peak_tflops or (989.0 if work.lm.device.type == "cuda" else None)

    def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return None if a is None or b is None else a / b

    result = {
        "model": work.lm.metadata["model"], "identity": work.lm.metadata, "hardware": cfg.hardware.name,
        "device": torch.cuda.get_device_name() if work.lm.device.type == "cuda" else "cpu", "dtype": work.lm.metadata["dtype"],
        "documents": len(work.ids), "tokens": work.tokens, "doc_tokens": [min(map(len, work.ids)), max(map(len, work.ids))],
        "seed_style_documents": len(work.seed_ids), "seed_style_tokens": work.tokens_of("seed_style"),
        "batch_tokens": cfg.hardware.batch_tokens, "packing": work.backend.built.checked_batching().packing,
        "tokens_per_s": rates, "seconds": seconds, "peak_mem_mb": peaks, "load_s": load_s, "load_host_mb": load_host_mb,
        "ratios": {
            "extract_vs_bare": ratio(rates.get("extract_long_centered"), rates.get("bare_forward")),
            "mem_extract_vs_bare": ratio(peaks.get("extract_long_centered"), peaks.get("bare_forward")),
            "extract_vs_seed_style": ratio(rates.get("extract_long_centered"), rates.get("seed_style")),
            "mean_vs_seed_style": ratio(rates.get("corpus_mean"), rates.get("seed_style_mean")),
            "mean_vs_bare": ratio(rates.get("corpus_mean"), rates.get("bare_forward")),
            "mean_mem_growth": ratio(peaks.get("corpus_mean_4n"), peaks.get("corpus_mean_n")),
            "store_vs_bare": ratio(rates.get("store"), rates.get("bare_forward")),
            "store_mem_growth": ratio(peaks.get("store_4n"), peaks.get("store_n")),
        },
        "pool_short": pool_short(work),
        "read": read_times(work),
        "padding_waste": (slots - work.tokens) / work.tokens,
        "gflop_per_token": flops_per_token(work) / 1e9,
        "mfu": {name: rate * flops_per_token(work) / (peak * 1e12) for name, rate in rates.items()} if peak else None,
        "batch_invariance": batch_invariance(work, cfg.bench.invariance) if cfg.bench.invariance else None,
    }
    values = result["ratios"] | {"padding_waste": result["padding_waste"],
                                 "pool_fraction": result["pool_short"]["pool_fraction"]}
    result["targets"] = {name: {"value": values[name], "target": f"{op} {bound}", "pass": OPS[op](values[name], bound)}
                         for name, (op, bound) in TARGETS.items() if values.get(name) is not None}
    path = write_json(Path(out_dir) / "bench.json", result)
    log.info(table(result))
    wrote(log, [path])
    tracker.metrics({f"tokens_per_s/{k}": v for k, v in rates.items()} | {f"peak_mem_mb/{k}": v for k, v in peaks.items()}
                    | {f"ratio/{k}": v for k, v in result["ratios"].items()}
                    | {f"mfu/{k}": v for k, v in (result["mfu"] or {}).items()}
                    | {"padding_waste": result["padding_waste"], "load_host_mb": load_host_mb,
                       "pool_fraction": result["pool_short"]["pool_fraction"],
                       "read_ms/slice_1000": result["read"]["slice_1000_ms"], "load_s": load_s})
    return {"extract_vs_bare": result["ratios"]["extract_vs_bare"], "tokens": work.tokens}


def table(r: dict) -> str:
    lines = [f"bench: {r['model']} on {r['hardware']} ({r['dtype']}), {r['documents']} documents, {r['tokens']} tokens",
             f"{'measurement':<24}{'tokens/s':>12}{'peak MB':>10}"]
    mem = {"bare_forward": "bare_forward", "extract_long_centered": "extract_long_centered", "seed_style": "seed_style",
           "corpus_mean": "corpus_mean_n", "store": "store_n"}
    for name, rate in r["tokens_per_s"].items():
        peak = r["peak_mem_mb"].get(mem.get(name, ""), None)
        lines.append(f"{name:<24}{rate:>12,.0f}{'' if peak is None else f'{peak:>10,.0f}'}")
    for name in ("corpus_mean", "store"):
        if name + "_4n" in r["peak_mem_mb"]:
            lines.append(f"{name + ' at 4N':<24}{'':>12}{r['peak_mem_mb'][name + '_4n']:>10,.0f}")
    lines.append(f"{'padded slots':<24}{r['padding_waste']:>12.3f}  pads / tokens ({'packed' if r['packing'] else 'right-padded'} batches)")
    lines.append(f"{'read (ms)':<24}{r['read']['slice_1000_ms']:>12.1f}  a 1,000-row slice of {r['read']['docs']:,} "
                 f"documents; {r['read']['random_1000_ms']:.1f} for 1,000 random rows")
    for name, value in list(r["ratios"].items()) + [("padding_waste", r["padding_waste"]),
                                                     ("pool_fraction", r["pool_short"]["pool_fraction"])]:
        check = r["targets"].get(name)
        verdict = "" if check is None else f"  target {check['target']}: {'pass' if check['pass'] else 'MISS'}"
        lines.append(f"{name:<24}{'-' if value is None else f'{value:.3f}':>12}{verdict}")
    lines.append(f"{'load (s)':<24}{r['load_s']:>12.1f}  model and tokenizer ({r['load_host_mb']:,.0f} MB of host "
                 "memory at its peak)")
    for name, mfu in (r["mfu"] or {}).items():
        lines.append(f"{'mfu ' + name:<24}{mfu:>12.3f}")
    if r["batch_invariance"]:
        b = r["batch_invariance"]
        lines.append(f"{'batch invariance':<24}{b['max_abs_diff']:>12.2e}  largest difference from alone, {b['batches']} batches")
    return "\n".join(lines)
