"""job=extract: one text -> vector.safetensors (key `vector`, float32) + vector.json."""

import json
import logging

from ..data.inputs import read_text
from ..report.console import wrote
from ..store.io import write_json, write_safetensors
from . import common

log = logging.getLogger(__name__)


def run(cfg, out_dir, tracker, backend) -> dict:
    text, record = read_text(cfg.text, cfg.file)
    chunk_list = common.chunks(cfg.pooling)
    mean = common.corpus_mean(cfg, tracker=tracker)
    result = backend.vectors([text], chunk_list, mean)
    vector = (result.raw if mean is None else result.centered)[0]  # [C*H]
    norm = vector.double().norm().item()
    meta = common.metadata(cfg, backend.metadata, mean) | {
        "dims": vector.numel(),
        "n_tokens": result.n_tokens[0],
        "truncated": result.truncated[0],
        "norm": norm,
        "input": record,
    }
    write_safetensors(out_dir / "vector.safetensors", {"vector": vector},
                      metadata={"actexp": json.dumps({k: meta[k] for k in ("model", "pooling", "centering")})})
    write_json(out_dir / "vector.json", meta)
    log.info(f"vector: {meta['dims']} dims ({len(chunk_list)} x {backend.metadata['hidden_size']}), "
             f"{meta['n_tokens']} tokens{' (truncated)' if meta['truncated'] else ''}, "
             f"{'centred' if mean else 'raw'}, norm {norm:.4g}")
    wrote(log, [out_dir / "vector.safetensors", out_dir / "vector.json"])
    return {"dims": meta["dims"], "n_tokens": meta["n_tokens"], "norm": norm}
