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
"""

import json
import logging
import multiprocessing
import resource
import shutil
import statistics
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import List

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from ..activations import batch_ids, token_budget_batches
from ..artifacts import Stats, load_mean
from ..backends import open_backend
from ..centering import MeanAccumulator
from ..corpus import Corpus, Document
from ..errors import UserError
from ..io import write_json
from ..pooling import weights
from ..report import wrote
from ..schema import CONF
from .common import chunks

log = logging.getLogger(__name__)
SHORT, LONG = (chunks(OmegaConf.load(CONF / "pooling" / f"{mode}.yaml")) for mode in ("short", "long"))
# What actexp promises against the model's own cost (README, "Performance"): ratio -> (op, bound).
TARGETS = {"extract_vs_bare": (">=", 0.95), "mem_extract_vs_bare": ("<=", 1.10), "mean_vs_seed_style": (">=", 2.0),
           "mean_mem_growth": ("<=", 1.10), "padding_waste": ("<=", 0.10)}
OPS = {">=": lambda value, bound: value >= bound, "<=": lambda value, bound: value <= bound}
TIMED = ("bare_forward", "extract_short", "extract_long_centered", "seed_style", "corpus_mean", "seed_style_mean")


class Workload:
    """The model, the documents cut to bench.doc_tokens, and scratch space for the mean files."""

    def __init__(self, cfg, docs: List[Document], backend):
        self.cfg, self.backend = cfg, backend
        self.lm = backend.lm
        self.docs = [_cut(self.lm, d, cfg.bench.doc_tokens) for d in docs]
        self.texts = [d.text for d in self.docs]
        self.ids, _ = self.lm.encode(self.texts)
        self.tokens = sum(len(x) for x in self.ids)
        self.batches = token_budget_batches([len(x) for x in self.ids], cfg.hardware.batch_tokens,
                                            cfg.hardware.max_padding)
        self.scratch = Path(tempfile.mkdtemp(prefix="actexp-bench-"))
        self.mean = None

    def sync(self):
        if self.lm.device.type == "cuda":
            torch.cuda.synchronize()

    @torch.inference_mode()
    def bare_forward(self):
        for batch in self.batches:
            self.lm.body(input_ids=batch_ids(self.lm, self.ids, batch), use_cache=False)

    def extract_short(self):
        self.backend.vectors(self.texts, SHORT)

    def extract_long_centered(self):
        self.backend.vectors(self.texts, LONG, self.mean)

    @torch.inference_mode()
    def seed_style(self):
        for ids in self.ids:
            out = self.lm.model(input_ids=torch.tensor([ids], device=self.lm.device), output_hidden_states=True)
            h = torch.stack(out.hidden_states[1:]).float().mean(0)[0]  # [T, H]
            torch.cat([weights((c,), len(ids))[0].float().to(h.device) @ h for c in LONG])

    def corpus_mean(self, docs=None):
        stats = Stats(Path(tempfile.mkdtemp(dir=self.scratch)), self.lm.metadata, "bench")
        docs = docs or self.docs
        size = self.cfg.corpus.shard_size
        shards = ((k, docs[k * size:(k + 1) * size]) for k in range(-(-len(docs) // size)))
        n = sum(1 for _ in self.backend.extract_shards(shards, stats))
        self.mean = self.backend.aggregate(stats, n, 1, 0, 8)

    @torch.inference_mode()
    def seed_style_mean(self):
        folder = Path(tempfile.mkdtemp(dir=self.scratch))
        for i, ids in enumerate(self.ids):  # the seed: dump every document's activations ...
            out = self.lm.model(input_ids=torch.tensor([ids], device=self.lm.device), output_hidden_states=True)
            save_file({"h": torch.stack(out.hidden_states)[:, 0].contiguous().cpu()}, folder / f"{i}.safetensors")
        acc = MeanAccumulator(self.lm.hidden_size)  # ... then read them back and average
        for i in range(len(self.ids)):
            h = load_file(folder / f"{i}.safetensors")["h"][1:].mean(0)  # [T, H]
            acc.add(h[None], [h.shape[0]])

    def run_once(self, name: str) -> float:
        self.sync()
        start = time.perf_counter()
        getattr(self, name)()
        self.sync()
        return time.perf_counter() - start


def median_seconds(work: Workload, names, repeats: int, warmup: int) -> dict:
    """Median seconds per measurement; repeats interleave the measurements, so drift of the
    machine (heat, other load) hits all of them alike. Each timing is reported as it finishes."""
    times = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        what = "warm-up" if round_ < warmup else f"repeat {round_ - warmup + 1}/{repeats}"
        for name in names:
            seconds = work.run_once(name)
            log.info(f"{name:<24}{work.tokens / seconds:>10,.0f} tokens/s  ({what})")
            if round_ >= warmup:
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


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
        work = Workload(cfg, docs, backend)
        if mean_path:
            work.mean = load_mean(mean_path)
        _reset_peak_rss()  # the model's construction has its own transient peak: not part of the measurement
        getattr(work, name)()
        return _peak_rss_mb()


def peak_memory(cfg, work: Workload) -> dict:
    n = cfg.bench.mean_docs
    corpus = list(islice(Corpus(cfg.corpus).documents(), 4 * n))
    plan = {"bare_forward": ("bare_forward", work.docs), "extract_long_centered": ("extract_long_centered", work.docs),
            "seed_style": ("seed_style", work.docs), "corpus_mean_n": ("corpus_mean", corpus[:n]),
            "corpus_mean_4n": ("corpus_mean", corpus)}
    if work.lm.device.type == "cuda":
        peaks = {}
        for key, (name, docs) in plan.items():
            target = work if docs is work.docs else Workload(cfg, docs, work.backend)
            target.mean = work.mean
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            getattr(target, name)()
            peaks[key] = torch.cuda.max_memory_allocated() / 2**20
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


def flops_per_token(work: Workload) -> float:
    """2 x the non-embedding parameters, plus attention over the mean context."""
    body = work.lm.body
    params = sum(p.numel() for name, p in body.named_parameters() if "embed" not in name and "wte" not in name)
    context = work.tokens / len(work.ids)
    return 2 * params + 2 * len(work.lm.blocks) * context * work.lm.hidden_size


def run(cfg, out_dir, tracker, backend) -> dict:
    if cfg.hardware.backend != "local":
        raise UserError(f"job=bench times the forward pass in this process and cannot time hardware={cfg.hardware.name}: "
                        "run it on the machine with the GPU, with hardware=cuda")
    work = Workload(cfg, list(islice(Corpus(cfg.corpus).documents(), cfg.bench.docs)), backend)
    work.corpus_mean()  # extract_long_centered centres with it
    seconds = median_seconds(work, TIMED, cfg.bench.repeats, cfg.bench.warmup)
    rates = {name: work.tokens / seconds[name] for name in TIMED}
    peaks = peak_memory(cfg, work)
    padded = sum(len(b) * len(work.ids[b[0]]) for b in work.batches)
    peak = cfg.bench.peak_tflops or (989.0 if work.lm.device.type == "cuda" else None)
    result = {
        "model": work.lm.metadata["model"], "hardware": cfg.hardware.name, "dtype": work.lm.metadata["dtype"],
        "documents": len(work.ids), "tokens": work.tokens, "batch_tokens": cfg.hardware.batch_tokens,
        "tokens_per_s": rates, "seconds": seconds, "peak_mem_mb": peaks,
        "ratios": {
            "extract_vs_bare": rates["extract_long_centered"] / rates["bare_forward"],
            "mem_extract_vs_bare": peaks["extract_long_centered"] / peaks["bare_forward"],
            "extract_vs_seed_style": rates["extract_long_centered"] / rates["seed_style"],
            "mean_vs_seed_style": rates["corpus_mean"] / rates["seed_style_mean"],
            "mean_mem_growth": peaks["corpus_mean_4n"] / peaks["corpus_mean_n"],
        },
        "padding_waste": (padded - work.tokens) / work.tokens,
        "gflop_per_token": flops_per_token(work) / 1e9,
        "mfu": None if peak is None else rates["extract_long_centered"] * flops_per_token(work) / (peak * 1e12),
    }
    values = result["ratios"] | {"padding_waste": result["padding_waste"]}
    result["targets"] = {name: {"value": values[name], "target": f"{op} {bound}", "pass": OPS[op](values[name], bound)}
                         for name, (op, bound) in TARGETS.items()}
    path = write_json(Path(out_dir) / "bench.json", result)
    shutil.rmtree(work.scratch, ignore_errors=True)
    log.info(table(result))
    wrote(log, [path])
    tracker.metrics({f"tokens_per_s/{k}": v for k, v in rates.items()} | {f"peak_mem_mb/{k}": v for k, v in peaks.items()}
                    | {f"ratio/{k}": v for k, v in result["ratios"].items()}
                    | {"padding_waste": result["padding_waste"], "mfu": result["mfu"]})
    return {"extract_vs_bare": result["ratios"]["extract_vs_bare"], "tokens": work.tokens}


def table(r: dict) -> str:
    lines = [f"bench: {r['model']} on {r['hardware']} ({r['dtype']}), {r['documents']} documents, {r['tokens']} tokens",
             f"{'measurement':<24}{'tokens/s':>12}{'peak MB':>10}"]
    mem = {"bare_forward": "bare_forward", "extract_long_centered": "extract_long_centered", "seed_style": "seed_style",
           "corpus_mean": "corpus_mean_n"}
    for name, rate in r["tokens_per_s"].items():
        peak = r["peak_mem_mb"].get(mem.get(name, ""), None)
        lines.append(f"{name:<24}{rate:>12,.0f}{'' if peak is None else f'{peak:>10,.0f}'}")
    lines.append(f"{'corpus_mean at 4N':<24}{'':>12}{r['peak_mem_mb']['corpus_mean_4n']:>10,.0f}")
    for name, value in list(r["ratios"].items()) + [("padding_waste", r["padding_waste"])]:
        check = r["targets"].get(name)
        verdict = "" if check is None else f"  target {check['target']}: {'pass' if check['pass'] else 'MISS'}"
        lines.append(f"{name:<24}{value:>12.3f}{verdict}")
    if r["mfu"] is not None:
        lines.append(f"{'mfu':<24}{r['mfu']:>12.3f}")
    return "\n".join(lines)
