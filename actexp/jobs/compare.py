"""job=compare: check the centred vectors, per sample and chunk, two ways.

The raw and centred vectors come from the csv job's CSVs (compare.raw_csv, compare.centered_csv)
or, without CSVs, from one pass over the bundled samples here.
- The identity raw - centred = pooled_mean(T), every sample: pooled_mean(T) = sum_t w_t mu_t comes
  from the mean file alone. Centred vectors are computed as raw - W mu, so this holds whenever two
  computations of W mu agree: it checks the mean used and the token counts, not the centring.
- The definition, a few samples (STREAM_SAMPLES: the shortest, a middle one, the longest): their
  centred vectors against sum_t w_t (h_t - mu_t) pooled from the model's stream here, the mean
  subtracted before pooling (the backend's centred_by_definition). It needs the model in this
  process and the samples' texts: on Modal, or for CSVs of other texts, it is left out and said so.
"""

import json
import logging
from pathlib import Path

import torch

from ..data.corpus import bundled_samples
from ..errors import CheckFailed, UserError
from ..models.architecture import model_config
from ..models.tokenizing import text_encoder
from ..report.console import plural, wrote
from ..store.io import read_matrix_csv, write_text
from ..store.layout import hash_cache
from . import common

log = logging.getLogger(__name__)

COLUMNS = ["sample", "chunk", "n_tokens", "pooled_mean_norm", "abs_error", "rel_error", "cosine", "stream_rel_error"]
STREAM_SAMPLES = 3


def _check_same_mean(centered_csv: Path, mean) -> None:
    """The centred CSV's sidecar names the mean it was centred with: it must be the one checked here."""
    sidecar = centered_csv.with_suffix(".json")
    used = (json.loads(sidecar.read_text()).get("centering") or {}).get("mean") if sidecar.is_file() else None
    if used and used.get("sha256") and used["sha256"] != mean.sha256:
        raise UserError(f"{centered_csv} was centred with the mean {used['path']} (sha256 {used['sha256'][:12]}), "
                        f"not {mean.path} (sha256 {mean.sha256[:12]}): set centering.mean_path={used['path']}")


def _from_csvs(cfg, model_id, dims, mean):
    _check_same_mean(Path(cfg.compare.centered_csv), mean)
    raw, names = read_matrix_csv(Path(cfg.compare.raw_csv))
    centered, names_c = read_matrix_csv(Path(cfg.compare.centered_csv))
    for path, vectors in ((cfg.compare.raw_csv, raw), (cfg.compare.centered_csv, centered)):
        if vectors.shape[1] != dims:
            raise UserError(f"{path} has {vectors.shape[1]} rows but pooling={cfg.pooling.name} on model "
                            f"{model_id['model']} gives {dims} dims: use the CSV of this model and pooling")
    if names != names_c:
        raise UserError(f"{cfg.compare.raw_csv} ({len(names)} samples) and {cfg.compare.centered_csv} ({len(names_c)}) "
                        "hold different samples: give the raw and centred CSVs of one csv or pipeline run")
    if cfg.compare.use_samples:
        texts = {d.name: d.text for d in bundled_samples()}
        missing = [n for n in names if n not in texts]
        if missing:
            raise UserError(f"compare.use_samples=true but {missing[0]!r} is not a bundled sample")
        spec, cache = common.model_spec(cfg), hash_cache(cfg.paths.artifacts)
        text = text_encoder(spec, model_id["max_tokens"], model_config(spec, cache), hash_cache=cache)
        ids, _ = text.encode([texts[n] for n in names])
        n_tokens = [len(x) for x in ids]
    else:
        sidecar = Path(cfg.compare.raw_csv).with_suffix(".json")
        if not sidecar.is_file():
            raise UserError(f"no sidecar {sidecar} with token counts: keep it beside the CSV or set compare.use_samples=true")
        info = json.loads(sidecar.read_text())
        n_tokens = [info["n_tokens"][info["samples"].index(n)] for n in names]
    return names, raw, centered, n_tokens


def _stream_check(backend, chunks, mean, names, n_tokens):
    """{sample index: centred vector by definition [C*H]} for a few samples, or (None, why not)."""
    texts = {d.name: d.text for d in bundled_samples()}
    if not all(n in texts for n in names):
        return None, "its samples are not the bundled samples, whose texts it needs"
    order = sorted(range(len(names)), key=lambda i: (n_tokens[i], i))
    which = sorted({order[0], order[len(order) // 2], order[-1]})[:STREAM_SAMPLES]
    by_definition = backend.centred_by_definition([texts[n] for n in names], chunks, mean, which)
    return (by_definition, None) if by_definition is not None else (None, "the model runs elsewhere (Modal)")


def run(cfg, out_dir, tracker, backend) -> dict:
    if common.model_spec(cfg).prompt:
        raise UserError("job=compare checks raw - centred = pooled_mean(T) over every token of a bare text, and this "
                        "config pools a span of a templated sequence or its last token: use prompt=none with "
                        "prompt.span=text")
    chunk_list = common.chunks(cfg.pooling)
    mean = common.corpus_mean(cfg, required=True, tracker=tracker)
    model_id = common.model_identity(cfg)
    dims = len(chunk_list) * model_id["hidden_size"]
    if cfg.compare.raw_csv or cfg.compare.centered_csv:
        if not (cfg.compare.raw_csv and cfg.compare.centered_csv):
            raise UserError("give both compare.raw_csv and compare.centered_csv, or neither")
        names, raw, centered, n_tokens = _from_csvs(cfg, model_id, dims, mean)
    else:
        samples = bundled_samples()
        result = backend.vectors([d.text for d in samples], chunk_list, mean)
        names, raw, centered, n_tokens = [d.name for d in samples], result.raw, result.centered, result.n_tokens
    by_definition, no_stream = _stream_check(backend, chunk_list, mean, names, n_tokens)

    rows, worst, worst_stream = [], (0.0, None), (0.0, None)
    for i, name in enumerate(names):
        diff = (raw[i].double() - centered[i].double()).reshape(len(chunk_list), -1)  # [C, H]
        pooled = mean.pooled_mean(chunk_list, n_tokens[i]).reshape(len(chunk_list), -1)  # [C, H]
        defined = None if by_definition is None or i not in by_definition else by_definition[i].reshape(len(chunk_list), -1)
        for c, chunk in enumerate(chunk_list):
            norm = pooled[c].norm().item()
            abs_err = (diff[c] - pooled[c]).norm().item()
            rel_err = abs_err / norm if norm > 0 else float("inf")
            cosine = torch.nn.functional.cosine_similarity(diff[c], pooled[c], dim=0).item()
            stream_err = None
            if defined is not None:
                stream_err = (centered[i].double().reshape(len(chunk_list), -1)[c] - defined[c]).norm().item()
                stream_err = stream_err / defined[c].norm().item() if defined[c].norm() > 0 else float("inf")
                worst_stream = max(worst_stream, (stream_err, f"{name} / {chunk.label}"), key=lambda w: w[0])
            rows.append([name, chunk.label, n_tokens[i], norm, abs_err, rel_err, cosine, stream_err])
            worst = max(worst, (rel_err, f"{name} / {chunk.label}"), key=lambda w: w[0])
    lines = [",".join(COLUMNS)] + [",".join("" if x is None else "%.9g" % x if isinstance(x, float) else str(x) for x in r)
                                   for r in rows]
    report = write_text(Path(out_dir) / "compare_report.csv", "\n".join(lines) + "\n")
    tracker.table("compare_report", COLUMNS, rows)

    tolerance = cfg.compare.tolerance
    passed = worst[0] <= tolerance and worst_stream[0] <= tolerance
    stream = (f"centred = pooled h_t - mu_t from the stream for {plural(len(by_definition), 'sample')}, worst "
              f"relative error {worst_stream[0]:.3g} ({worst_stream[1]})" if by_definition is not None else
              f"centred = pooled h_t - mu_t not checked: {no_stream}")
    log.info(f"{'PASS' if passed else 'FAIL'}: raw - centred = pooled_mean(T) over {plural(len(names), 'sample')} x "
             f"{plural(len(chunk_list), 'chunk')}, worst relative error {worst[0]:.3g} ({worst[1]}); {stream}; "
             f"tolerance {tolerance:g}")
    wrote(log, [report])
    if worst[0] > tolerance:
        raise CheckFailed(f"the centring identity fails: worst relative error {worst[0]:.3g} at {worst[1]} "
                          f"> compare.tolerance={tolerance:g} (see compare_report.csv)")
    if worst_stream[0] > tolerance:
        raise CheckFailed(f"the centred vectors are not h_t - mu_t pooled: worst relative error {worst_stream[0]:.3g} "
                          f"at {worst_stream[1]} > compare.tolerance={tolerance:g} against this model's stream (see "
                          "compare_report.csv; vectors made with another model.dtype, batching or backend differ)")
    return {"worst_rel_error": worst[0], "samples": len(names), "passed": passed,
            "stream_samples": None if by_definition is None else len(by_definition),
            "worst_stream_rel_error": worst_stream[0] if by_definition is not None else None}
