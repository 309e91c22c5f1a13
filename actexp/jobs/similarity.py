"""job=similarity: cosine of two texts' vectors, overall and per chunk -> similarity.json."""

import logging

import torch

from ..data.inputs import read_text
from ..report.console import wrote
from ..store.io import write_json
from . import common

log = logging.getLogger(__name__)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).item()


def cosines(pair: torch.Tensor, chunk_list) -> tuple:
    """Cosine of a pair of vectors [2, C*H], overall and per chunk label."""
    a, b = pair.reshape(2, len(chunk_list), -1)  # [C, H] each
    return cosine(a.flatten(), b.flatten()), {c.label: cosine(a[k], b[k]) for k, c in enumerate(chunk_list)}


def run(cfg, out_dir, tracker, backend) -> dict:
    text_a, record_a = read_text(cfg.text_a, cfg.file_a, "text_a", "file_a")
    text_b, record_b = read_text(cfg.text_b, cfg.file_b, "text_b", "file_b")
    chunk_list = common.chunks(cfg.pooling)
    mean = common.corpus_mean(cfg, tracker=tracker)
    result = backend.vectors([text_a, text_b], chunk_list, mean)
    overall, per_chunk = cosines(result.raw if mean is None else result.centered, chunk_list)
    write_json(out_dir / "similarity.json", common.metadata(cfg, backend.metadata, mean) | {
        "cosine": overall,
        "chunks": per_chunk,
        "n_tokens": result.n_tokens,
        "truncated": result.truncated,
        "inputs": [record_a, record_b],
    })
    detail = ", ".join(f"{k} {v:.4f}" for k, v in per_chunk.items()) if len(chunk_list) > 1 else ""
    log.info(f"cosine {overall:.4f}" + (f" (per chunk: {detail})" if detail else ""))
    wrote(log, [out_dir / "similarity.json"])
    return {"cosine": overall, **{f"cosine/{k}": v for k, v in per_chunk.items()}}
