"""job=compare: check the centring identity raw - centred = pooled_mean(T) per sample and chunk.

The raw and centred vectors come from the csv job's CSVs (compare.raw_csv, compare.centered_csv)
or, without CSVs, from one pass over the bundled samples here (centred = h_t - mu_t pooled, in
the model); pooled_mean(T) = sum_t w_t mu_t comes from the mean file alone.
"""

import json
import logging
from pathlib import Path

import torch

from ..corpus import bundled_samples
from ..errors import CheckFailed, UserError
from ..io import read_matrix_csv, write_text
from ..model import model_config, text_encoder
from ..report import plural, wrote
from ..storage import hash_cache
from . import common

log = logging.getLogger(__name__)

COLUMNS = ["sample", "chunk", "n_tokens", "pooled_mean_norm", "abs_error", "rel_error", "cosine"]


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


def run(cfg, out_dir, tracker, backend) -> dict:
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

    rows, worst = [], (0.0, None)
    for i, name in enumerate(names):
        diff = (raw[i].double() - centered[i].double()).reshape(len(chunk_list), -1)  # [C, H]
        pooled = mean.pooled_mean(chunk_list, n_tokens[i]).reshape(len(chunk_list), -1)  # [C, H]
        for c, chunk in enumerate(chunk_list):
            norm = pooled[c].norm().item()
            abs_err = (diff[c] - pooled[c]).norm().item()
            rel_err = abs_err / norm if norm > 0 else float("inf")
            cosine = torch.nn.functional.cosine_similarity(diff[c], pooled[c], dim=0).item()
            rows.append([name, chunk.label, n_tokens[i], norm, abs_err, rel_err, cosine])
            worst = max(worst, (rel_err, f"{name} / {chunk.label}"), key=lambda w: w[0])
    lines = [",".join(COLUMNS)] + [",".join(str(x) if not isinstance(x, float) else "%.9g" % x for x in r) for r in rows]
    report = write_text(Path(out_dir) / "compare_report.csv", "\n".join(lines) + "\n")
    tracker.table("compare_report", COLUMNS, rows)

    passed = worst[0] <= cfg.compare.tolerance
    verdict = "PASS" if passed else "FAIL"
    log.info(f"{verdict}: raw - centred = pooled_mean(T) over {plural(len(names), 'sample')} x "
             f"{plural(len(chunk_list), 'chunk')}; worst relative error {worst[0]:.3g} ({worst[1]}), "
             f"tolerance {cfg.compare.tolerance:g}")
    wrote(log, [report])
    if not passed:
        raise CheckFailed(f"the centring identity fails: worst relative error {worst[0]:.3g} at {worst[1]} "
                          f"> compare.tolerance={cfg.compare.tolerance:g} (see compare_report.csv)")
    return {"worst_rel_error": worst[0], "samples": len(names), "passed": passed}
