"""The allowed range of every number a user can set, checked once the config is composed and before
anything runs, so a bad value is one line naming the key and its range instead of a failure deep
in a job (or, worse, a silent meaning: max_docs=0 as "all", max_tokens=-3 as "drop 3 tokens")."""

import math

from ..errors import UserError

# Keys whose values are whole numbers of at least 1 -> what null means (None: null is not allowed).
AT_LEAST_1 = {
    "model.max_tokens": "null = the model's context",
    "corpus.max_docs": "null = every document",
    "corpus.shard_size": None,
    "hardware.threads": "null = torch's default",
    "hardware.batch_tokens": None,
    "hardware.pack_width": "null = each pack's longest text",
    "hardware.max_containers": None,
    "hardware.request_tokens": None,
    "store.shard_size": None,
    "store.batch_kb": None,
    "mean.checkpoint_every": None,
    "centering.min_count": None,
    "analyze.max_rows": None,
    "neighbors.k": None,
    "neighbors.block_rows": None,
    "bench.docs": None,
    "bench.doc_tokens": None,
    "bench.mean_docs": None,
    "bench.repeats": None,
    "bench.min_tokens": "null = the first bench.docs documents as they are",
    "bench.warmup_docs": "null = all",
    "bench.seed_docs": "null = all",
    "sts.abtt_dims": None,
    "sts.whitening_dims": "null = all dims",
    "bootstrap.resamples": None,
}


TAIL_RESAMPLES = 5  # the fewest resamples beyond each end of a bootstrap interval


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node.get(part) if node is not None and part in node else None
    return node


def check(cfg) -> None:
    """Refuse a number out of its range with one line: the key, the value, the range."""
    for key, null in AT_LEAST_1.items():
        value = _get(cfg, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            allowed = "a whole number of at least 1" + (f", or {null}" if null else "")
            raise UserError(f"{key}={value} is out of range: give {allowed}")
    for key in ("hardware.max_padding", "centering.tail_start", "compare.tolerance", "bench.invariance",
                "corpus.min_chars", "model.seed", "bootstrap.seed"):
        value = _get(cfg, key)
        if value is not None and not isinstance(value, bool) and value < 0:
            raise UserError(f"{key}={value} is out of range: give a number of 0 or more")
    level, resamples = _get(cfg, "bootstrap.level"), _get(cfg, "bootstrap.resamples")
    if level is not None and not 0 < level < 1:
        raise UserError(f"bootstrap.level={level} is out of range: give a coverage between 0 and 1, e.g. 0.95")
    if level is not None and isinstance(resamples, int) and resamples * (1 - level) / 2 < TAIL_RESAMPLES:
        # A percentile interval's ends are read from its tails: with fewer draws there they are noise.
        raise UserError(f"bootstrap.resamples={resamples} is too few for a {100 * level:g} % interval: each tail would "
                        f"hold {resamples * (1 - level) / 2:g} resamples; give at least "
                        f"{math.ceil(2 * TAIL_RESAMPLES / (1 - level) - 1e-9)}, or a lower bootstrap.level")
    low, high = _get(cfg, "plot.vmin"), _get(cfg, "plot.vmax")
    if low is not None and high is not None and low >= high:  # an empty or inverted colour scale
        raise UserError(f"plot.vmin={low:g} is not below plot.vmax={high:g}: give vmin < vmax (plot.vmin=-1 plot.vmax=1 "
                        "compares runs), or leave either out for the cosines' own range")
