"""job=csv: vectors of the bundled samples (or the corpus group's documents) as CSV matrices.

vectors_<mode>_mode_<raw|centered>.csv: first column `dim`, one column per text, one row per dim;
a sidecar .json beside each holds the text names, token counts, model, pooling and mean used.
"""


import logging

from ..data.corpus import Corpus, bundled_samples
from ..errors import UserError
from ..report.console import plural, wrote
from ..store.io import vectors_csv_path, write_json, write_matrix_csv
from . import common

log = logging.getLogger(__name__)

VARIANTS = ("raw", "centered")


def variants(cfg) -> list:
    """csv.variants, or by default the raw vectors and, when a mean is configured, the centred ones too
    (one model pass gives both, and the raw ones are what the centred are compared with)."""
    if cfg.csv.variants is None:
        return ["raw"] if cfg.centering.name == "none" else ["raw", "centered"]
    chosen = list(cfg.csv.variants)
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown or not chosen:
        raise UserError(f"csv.variants=[{','.join(chosen)}]: use a list of {', '.join(VARIANTS)}")
    if "centered" in chosen and cfg.centering.name == "none":
        raise UserError(f"csv.variants=[{','.join(chosen)}] asks for centred vectors, but centering=none: add "
                        "centering=corpus_mean (and centering.mean_path=FILE for a mean other than this config's), "
                        "or leave centered out")
    return chosen


def documents(cfg):
    if cfg.csv.source == "samples":
        return bundled_samples()
    if cfg.csv.source == "corpus":
        docs = list(Corpus(cfg.corpus).documents())
        if not docs:
            raise UserError(f"corpus={cfg.corpus.name} has no documents")
        return docs
    raise UserError(f"unknown csv.source {cfg.csv.source!r}: use samples or corpus")


def unique_names(names):
    seen = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def run(cfg, out_dir, tracker, backend) -> dict:
    chosen = variants(cfg)
    chunk_list = common.chunks(cfg.pooling)
    mean = common.corpus_mean(cfg, required=True, tracker=tracker) if "centered" in chosen else None
    docs = documents(cfg)
    result = backend.vectors([d.text for d in docs], chunk_list, mean)
    names = unique_names([d.name for d in docs])
    metrics = {"texts": len(docs), "dims": result.raw.shape[1], "tokens": sum(result.n_tokens)}
    for variant in chosen:
        vectors = result.raw if variant == "raw" else result.centered
        path = write_matrix_csv(vectors_csv_path(out_dir, cfg.pooling.name, variant), vectors, names)
        # Each sidecar records what was done to its own vectors: the raw ones were not centred.
        write_json(path.with_suffix(".json"), common.metadata(cfg, backend.metadata, mean if variant == "centered" else None) | {
            "variant": variant, "source": cfg.csv.source, "samples": names, "n_tokens": result.n_tokens,
            "truncated": result.truncated, "dims": vectors.shape[1],
        })
        tracker.artifact(path, "vectors")
        metrics[f"norm_mean/{variant}"] = vectors.double().norm(dim=1).mean().item()
        log.info(f"{path.name}: {vectors.shape[1]} dims x {plural(len(names), 'text')}, {variant}")
        wrote(log, [path, path.with_suffix(".json")])
    return metrics
