"""job=sts: how well the cosine of two texts' vectors follows human similarity scores, for every
post-processing variant side by side -> sts.json, sts_scatter.png, a table on stdout.

Pairs: STS-B (sts.pairs=stsb, sts.split) or a file of scored pairs (pairs.py). Each distinct text is
embedded once, raw and (with a corpus mean) centred from one pass; every variant is then numpy on
those vectors. Variants: raw; centered (the per-position corpus mean); global_mean, abtt and
whitening (postprocess.py), fitted on sts.fit, on raw vectors or, as centered+<method>, on centred
ones. Each chunk is post-processed with its own fit; "all" is the chunks' results side by side.
Spearman and Pearson of the cosines against the scores, per variant and chunk, each with a bootstrap
interval over the pairs, and each variant's Spearman minus the first variant's (raw) with a paired one.
With sts.select_on (dev: STS-B dev; or a file of pairs) the variant and chunk are chosen by their
Spearman there, and only the evaluated split's score of that choice is the result: the split that
reports is never read to choose.
"""

import difflib
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..data import pairs as pairs_io
from ..errors import UserError
from ..maths import bootstrap, postprocess
from ..maths.analysis import chunk_key
from ..maths.correlation import pearson, spearman
from ..maths.parts import Parts, n_parts
from ..memory import over_half
from ..report import plots
from ..report.console import with_interval, wrote
from ..store import fits as fit_store
from ..store.io import write_json
from . import common

log = logging.getLogger(__name__)
BASES = ("raw", "centered")
FIT_SETS = ("stsb", "corpus")


def _parse(variant: str):
    """'centered+whitening' -> ('centered', 'whitening'); 'abtt' -> ('raw', 'abtt'); 'raw' -> ('raw', None)."""
    base, _, method = variant.rpartition("+") if "+" in variant else ("raw", "", variant)
    if variant in BASES:
        return variant, None
    if base not in BASES or method not in postprocess.METHODS:
        known = [*BASES, *postprocess.METHODS, *(f"centered+{m}" for m in postprocess.METHODS)]
        close = difflib.get_close_matches(variant, known, n=1)
        raise UserError(f"sts.variants: unknown variant {variant!r}{f' (did you mean {close[0]}?)' if close else ''}: "
                        f"use {', '.join(known)}")
    return base, method


def load_pairs(cfg) -> pairs_io.Pairs:
    s = cfg.sts
    if s.pairs == "stsb":
        return pairs_io.stsb(s.split)
    return pairs_io.from_file(s.pairs, list(s.columns))


def selection_pairs(cfg, evaluated: pairs_io.Pairs):
    """The pairs that choose the variant and chunk (sts.select_on), or None: STS-B dev, or a file of
    pairs with the columns of sts.columns. Never the evaluated pairs themselves, whatever file holds them."""
    on = cfg.sts.select_on
    if on is None:
        return None
    if on in pairs_io.STSB_SPLITS and on != "dev":
        raise UserError(f"sts.select_on={on}: use dev (STS-B dev) or a file of pairs; the {on} split may not choose "
                        f"({'it is what reports' if on == 'test' else 'the fits are made on it'})")
    chosen = pairs_io.stsb("dev") if on == "dev" else pairs_io.from_file(on, list(cfg.sts.columns), "sts.select_on", "dev")
    if set(zip(chosen.a, chosen.b)) == set(zip(evaluated.a, evaluated.b)):
        fix = "evaluate test (sts.split=test)" if evaluated.source == "stsb" else "give other pairs to choose on"
        raise UserError(f"sts.select_on={on} holds the pairs being evaluated ({evaluated.source} {evaluated.split}): "
                        f"{fix}")
    return chosen


def fit_set(cfg):
    """(texts, description) of the fit set: STS-B train's sentences ("target"), or the corpus group's
    documents, by the sha256 of the texts. Where they came from (a path, the corpus id, which names the
    path) is in the description for the record, never in a fit's identity."""
    if cfg.sts.fit == "stsb":
        train = pairs_io.stsb("train")
        return train.texts(), {"name": "stsb-train", "sha256": train.sha256, "path": str(train.path)}
    corpus = common.corpus_of(cfg)
    texts = [d.text for d in corpus.documents()]
    content = hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()
    return texts, {"name": f"corpus-{cfg.corpus.name}", "sha256": content, "corpus_id": corpus.id}


def _check_fit(s, methods, n_texts: int, h: int, parts: int = 1) -> None:
    """Settings the fit set cannot serve, refused before any forward pass; `parts` fits per base (chunks,
    of every block and the blocks' mean with model.layers=each) must fit in memory."""
    fits = parts * h * min(h, max(n_texts - 1, 1)) * 8 * 2  # float64 eigenvectors, raw and centred bases
    if methods and (over := over_half(fits)):
        raise UserError(f"sts: the fits of {parts} parts of {h} dims {over}: pool fewer chunks (pooling=short), or "
                        "give model.layers a list of blocks")
    if methods and n_texts < 2:
        raise UserError(f"the fit set (sts.fit={s.fit}) has {n_texts} text(s): fit on at least 2")
    if "abtt" in methods and s.abtt_dims >= min(h, n_texts - 1):
        raise UserError(f"sts.abtt_dims={s.abtt_dims} would remove every direction that a chunk's {h} dims and the fit "
                        f"set's {n_texts} texts span (at most {min(h, n_texts - 1)}): give fewer")
    if "whitening" in methods:
        k = s.whitening_dims or h
        if k > h:
            raise UserError(f"sts.whitening_dims={k} exceeds a chunk's {h} dims: give at most {h}, or null for all")
        if n_texts - 1 < k:
            raise UserError(f"whitening keeps {k} dims but the fit set's {n_texts} texts span at most {n_texts - 1}: "
                            f"set sts.whitening_dims to {n_texts - 1} or fewer, or fit on more texts")


def n_blocks(model: dict) -> int:
    """Vectors per text: one per block for model.layers=each, else one (the blocks' mean)."""
    return len(model["layers"]["each"]) if isinstance(model["layers"], dict) else 1


def _fits(cfg, backend, chunks, mean, bases, fit_texts, described):
    """{base: [Fit per part]} and what each was made from: stored fits reused, missing ones fitted on
    the fit set's vectors, computed once (raw and centred from one pass) and only if a fit is missing.
    A part is a chunk, of each block too for model.layers=each (maths/parts.py)."""
    computed, fitted, records = {}, {}, {}
    blocks = n_blocks(backend.metadata)

    def fit_vectors(base):
        if not computed:
            log.info("sts: vectors of the fit set %s (%d texts)", described["name"], len(fit_texts))
            computed.update(backend.vectors(fit_texts, chunks, mean).by_variant())
        return Parts(computed[base], len(chunks), blocks)

    by_content = {k: v for k, v in described.items() if k not in ("path", "corpus_id")} | {"texts": len(fit_texts)}
    for base in bases:
        identity = {"model": backend.metadata, "pooling": common.pooling_record(cfg.pooling)["chunks"],
                    "fit_set": by_content, "base": base, "mean_sha256": mean.sha256 if base == "centered" else None}
        fitted[base], path, sha = fit_store.load_or_fit(cfg.paths.artifacts, identity,
                                                        lambda base=base: fit_vectors(base),
                                                        n_parts(len(chunks), blocks))
        records[base] = {"path": str(path), "sha256": sha, "fit_set": described | {"texts": len(fit_texts)}}
    return fitted, records


def cosines(x: np.ndarray, pair_a: np.ndarray, pair_b: np.ndarray) -> np.ndarray:
    a, b = x[pair_a], x[pair_b]  # [P, D]
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def run(cfg, out_dir, tracker, backend) -> dict:
    s = cfg.sts
    parsed = _variants(s)
    pairs = load_pairs(cfg)
    chunks = common.chunks(cfg.pooling)
    methods = {m for _, m in parsed.values() if m}
    fit_texts, described = fit_set(cfg) if methods else ([], {})
    blocks = n_blocks(backend.metadata)
    _check_fit(s, methods, len(fit_texts), backend.metadata["hidden_size"],  # before any forward pass
               n_parts(len(chunks), blocks))
    chooser = selection_pairs(cfg, pairs)
    mean = _mean(cfg, out_dir, tracker, backend) if any(b == "centered" for b, _ in parsed.values()) else None
    vectors = _vectors(backend, pairs, chunks, mean)
    bases = [b for b in BASES if any(base == b and m for base, m in parsed.values())]
    fitted, fit_records = _fits(cfg, backend, chunks, mean, bases, fit_texts, described)
    settings = {"abtt_dims": s.abtt_dims, "whitening_dims": s.whitening_dims}
    boot = common.bootstrap_of(cfg)
    records, scores, resampled = _scores(parsed, vectors, fitted, settings, chunks, blocks, pairs, fit_records, boot)
    differences = _differences(scores, resampled, list(parsed), pairs, boot)
    selection = None
    if chooser is not None:  # the chooser's own records: the evaluated split's are not passed in
        chooser_records, _, _ = _scores(parsed, _vectors(backend, chooser, chunks, mean), fitted, settings, chunks,
                                        blocks, chooser, fit_records, None)  # values choose: no intervals to draw
        selection = select(chooser_records, chooser) | {"source": chooser.describe()}
        # What chose, kept for the record (and for a table that chooses per prompt or variant): values only.
        selection["records"] = [{k: r[k] for k in ("metric", "variant", "chunk", "value")}
                                for r in chooser_records if r["metric"] == "spearman"]
        [result] = [r for r in records if (r["metric"], r["variant"], r["chunk"]) ==
                    ("spearman", selection["variant"], selection["chunk"])]
        selection |= {"spearman": result["value"], "interval": result["interval"], "split": pairs.split,
                      # the choice's cosine per evaluated pair: runs of other prompts compare with it, paired
                      "cosines": scores[(selection["variant"], selection["chunk"])].tolist(),
                      "gold": pairs.scores.tolist()}
    return _report(cfg, Path(out_dir), tracker, backend.metadata, mean, pairs, parsed, chunks, records, scores,
                   {"fits": fit_records, "settings": settings, "bootstrap": boot.record("pairs"),
                    "differences": differences, "selection": selection})


def select(records: List[dict], chooser: pairs_io.Pairs) -> dict:
    """The variant and chunk of the highest Spearman among `records`, which are the chooser's alone."""
    defined = [r for r in records if r["metric"] == "spearman" and r["value"] is not None]
    if not defined:
        raise UserError(f"no variant has a defined Spearman on the selection pairs ({chooser.source} {chooser.split}): "
                        "check sts.select_on")
    best = max(defined, key=lambda r: r["value"])
    return {"variant": best["variant"], "chunk": best["chunk"], "chosen_by": best["value"]}


def _variants(s) -> Dict[str, tuple]:
    """{variant: (base, method)} of sts.variants, and sts.fit checked."""
    parsed = {v: _parse(v) for v in s.variants}
    if not parsed:
        raise UserError("sts.variants is empty: give at least one variant, e.g. [raw,centered]")
    if s.fit not in FIT_SETS:
        raise UserError(f"sts.fit={s.fit}: use stsb (STS-B train sentences) or corpus (the corpus group's documents)")
    return parsed


def _mean(cfg, out_dir, tracker, backend):
    """The corpus mean to centre with, made by the mean job first when centering.mean_path is auto (as
    the pipeline's mean stage does), so a sweep over model.layers gets each its own."""
    from .pipeline import with_mean

    cfg, _ = with_mean(cfg, out_dir, tracker, backend)
    return common.corpus_mean(cfg, required=True, tracker=tracker)


def _vectors(backend, pairs, chunks, mean) -> dict:
    """{"raw"[, "centered"]: [N, C*H]} of the pairs' distinct texts, in pairs.texts() order: one pass."""
    texts = pairs.texts()
    log.info("sts: %d pairs, %d distinct texts (%s, %s)", len(pairs), len(texts), pairs.source, pairs.split)
    return backend.vectors(texts, chunks, mean).by_variant()


def _scores(parsed, vectors, fitted, settings, chunks, blocks: int, pairs, fit_records,
            boot: Optional[bootstrap.Bootstrap]):
    """(records, cosines, resampled): one record per variant, part and metric (Spearman, Pearson; null
    where every cosine is the same) with its interval over resampled pairs; {(variant, label): the
    cosine of each pair [P]}, per chunk and for a group's chunks side by side ("all"; per block and
    for the blocks' mean with model.layers=each: "b3/exp0.023", "mean/all"); and {(variant, label):
    the Spearman of each resample [B]}, for the paired differences. Without boot: no intervals."""
    counts = None if boot is None else boot.counts(len(pairs))  # [B, P] the same resamples for every variant: paired
    index = {t: i for i, t in enumerate(pairs.texts())}
    pair_a, pair_b = (np.array([index[t] for t in side]) for side in (pairs.a, pairs.b))
    labels = [chunk_key(c.label) for c in chunks]  # "exp0.067": metric names and JSON as analysis.json
    records, scores, resampled = [], {}, {}

    def score(variant, base, method, label, part):
        cos = cosines(part, pair_a, pair_b)
        scores[(variant, label)] = cos
        if not np.isfinite(cos).all():
            raise UserError(f"sts variant {variant}, chunk {label}: the cosine of {int((~np.isfinite(cos)).sum())} "
                            "pairs is not finite (a vector of zeros after post-processing): use another variant")
        if counts is not None:
            resampled[(variant, label)] = bootstrap.spearman(cos, pairs.scores, counts)  # [B]
        for metric, fn in (("spearman", spearman), ("pearson", pearson)):
            value = fn(cos, pairs.scores)
            if math.isnan(value):  # every pair got the same cosine (within rounding): no correlation is defined
                log.warning("sts variant %s, chunk %s: every pair has the same cosine (within rounding); "
                            "%s is undefined (null)", variant, label, metric)
            records.append({"metric": metric, "variant": variant, "chunk": label,
                            "value": None if math.isnan(value) else value,
                            "interval": None if math.isnan(value) or counts is None else boot.interval(
                                resampled[(variant, label)] if metric == "spearman"
                                else bootstrap.pearson(cos, pairs.scores, counts)),
                            "pairs": len(pairs), "split": pairs.split,
                            "fit_set": fit_records[base]["fit_set"]["name"] if method else None})

    for variant, (base, method) in parsed.items():
        parts = Parts(vectors[base], len(chunks), blocks)
        for group, members in parts.groups(labels):
            done = []
            for i, label in members:
                try:
                    part = parts[i] if method is None else postprocess.apply(method, parts[i], fitted[base][i], **settings)
                except ValueError as e:
                    raise UserError(f"sts variant {variant}: {e}") from None
                score(variant, base, method, label, part)
                done.append(part)
            score(variant, base, method, f"{group}all", np.concatenate(done, 1))
    return records, scores, resampled


def _differences(scores, resampled, variants: List[str], pairs, boot: bootstrap.Bootstrap) -> List[dict]:
    """Each variant's Spearman minus the first variant's (raw by default), per chunk, with an interval
    from the same resampled pairs for both: the comparison the table makes, as a number with its noise."""
    first, out = variants[0], []
    for (variant, label), cos in scores.items():
        if variant == first:
            continue
        base = scores[(first, label)]
        diff = spearman(cos, pairs.scores) - spearman(base, pairs.scores)
        paired = resampled[(variant, label)] - resampled[(first, label)]  # [B] the same resamples on both sides
        out.append({"metric": "spearman", "variant": variant, "minus": first, "chunk": label,
                    "value": None if math.isnan(diff) else diff,
                    "interval": None if math.isnan(diff) else boot.interval(paired)})
    return out


def _report(cfg, out: Path, tracker, model: dict, mean, pairs, parsed, chunks, records, scores, made_with) -> dict:
    """sts.json, the scatter plot, the W&B table and the table on stdout; the metrics."""
    spearman_of = {(r["variant"], r["chunk"]): r["value"] for r in records if r["metric"] == "spearman"}
    defined = [k for k, v in spearman_of.items() if v is not None]
    if not defined:
        raise UserError("every variant gave every pair the same cosine: no correlation is defined; "
                        "check the texts of the pairs file")
    best = max(defined, key=lambda k: spearman_of[k])
    blocks = n_blocks(model)
    group = "" if blocks == 1 else "mean/"  # the blocks' mean: model.layers=all's vectors
    main = f"{group}all"
    written = [write_json(out / "sts.json", common.metadata(cfg, model, mean) | {"pairs": pairs.describe()} | made_with | {
        "records": records, "best": {"variant": best[0], "chunk": best[1], "spearman": spearman_of[best]}}),
        plots.sts_scatter({v: scores[(v, main)] for v in parsed}, pairs.scores,
                          {v: spearman_of[(v, main)] for v in parsed}, out / "sts_scatter.png",
                          f"{pairs.source} {pairs.split}: cosine ({'mean of the blocks, ' if group else ''}all chunks) "
                          f"vs gold score, {model['model']}")]
    if blocks > 1:
        written.append(plots.sts_layers({v: [spearman_of[(v, f"b{k}/all")] for k in range(blocks)] for v in parsed},
                                        {v: spearman_of[(v, main)] for v in parsed}, out / "sts_layers.png",
                                        f"{pairs.source} {pairs.split}: Spearman by block (all chunks), {model['model']}"))
    differences = made_with["differences"]
    tracker.table("sts", ["metric", "variant", "chunk", "value", "low", "high"],
                  [[r["metric"], r["variant"] if "minus" not in r else f"{r['variant']}-{r['minus']}", r["chunk"],
                    r["value"], *(r["interval"] or [None, None])] for r in records + differences])
    tracker.images(written[1:])
    log.info(table(spearman_of, list(parsed), [group + chunk_key(c.label) for c in chunks], pairs, main))
    if blocks > 1:
        log.info(table(spearman_of, list(parsed), [f"b{k}/all" for k in range(blocks)], pairs, main,
                       "by block, each block's chunks side by side"))
    log.info(intervals(records, differences, made_with["bootstrap"], main))
    chosen = made_with["selection"]
    if chosen:
        log.info(f"chosen on {chosen['source']['pairs']} {chosen['source']['split']} ({chosen['source']['n_pairs']} pairs, "
                 f"Spearman x 100 {100 * chosen['chosen_by']:.2f}): {chosen['variant']}, {chosen['chunk']} -> "
                 f"{pairs.split} {with_interval(chosen['spearman'], chosen['interval'], 100, 2)}: the result")
    wrote(log, written)
    # The metrics under the names the README gives, logged once by the caller (run.py) as every job's are.
    metrics = {}
    for r in records + differences:
        if r["value"] is not None:
            name = f"sts/{r['metric']}/{r['variant'] if 'minus' not in r else r['variant'] + '-' + r['minus']}/{r['chunk']}"
            metrics[name] = r["value"]
            if r["interval"]:
                metrics[f"{name}/low"], metrics[f"{name}/high"] = r["interval"]
    if chosen:
        metrics |= {"selected_spearman": chosen["spearman"], "selected": f"{chosen['variant']}, {chosen['chunk']}",
                    "selected_chosen_by": chosen["chosen_by"]}
        if chosen["interval"]:
            metrics["selected_spearman/low"], metrics["selected_spearman/high"] = chosen["interval"]
    return metrics | {"best": f"Spearman x 100 {100 * spearman_of[best]:.2f} ({best[0]}, {best[1]})",
                      "best_spearman": spearman_of[best]}


def intervals(records: List[dict], differences: List[dict], boot: dict, main: str = "all") -> str:
    """All chunks (of the blocks' mean for model.layers=each): each variant's Spearman x 100 with its
    interval, and minus the first variant's, paired."""
    def cell(r):
        if r is None or r["value"] is None:
            return f"{'-':>24}"
        low, high = (f"{100 * x:.2f}" for x in r["interval"]) if r["interval"] else ("?", "?")
        return f"{100 * r['value']:>8.2f} [{low:>6}, {high:>6}]"

    own = [r for r in records if (r["metric"], r["chunk"]) == ("spearman", main)]
    diff = {d["variant"]: d for d in differences if d["chunk"] == main}
    width = max(len(r["variant"]) for r in own) + 2
    first = own[0]["variant"]
    what = "All chunks" if main == "all" else "The blocks' mean, all chunks"
    lines = [f"{what}, {100 * boot['level']:g} % intervals from {boot['resamples']} resamples of the pairs "
             f"(seed {boot['seed']}); minus {first}: paired, the same resamples:",
             f"{'':<{width}}{'Spearman x 100':>24}{'minus ' + first:>24}"]
    lines += [f"{r['variant']:<{width}}{cell(r)}{cell(diff.get(r['variant']))}" for r in own]
    return "\n".join(lines)


def table(spearman_of: Dict, variants: List[str], labels: List[str], pairs, main: str = "all",
          what: str = "") -> str:
    """Spearman x 100 per variant: `main` (all chunks), then each label; the best value of each column marked *."""
    columns = [main, *labels]
    top = {c: max((spearman_of[(v, c)] for v in variants if spearman_of[(v, c)] is not None), default=None)
           for c in columns}
    width, w = max(len(v) for v in variants) + 2, max(12, max(len(c) for c in columns) + 2)

    def cell(v, c):
        value = spearman_of[(v, c)]
        return f"{'-':>{w - 1}} " if value is None else f"{100 * value:>{w - 1}.2f}{'*' if value == top[c] else ' '}"

    lines = [f"Spearman x 100 of cosine vs gold score, {len(pairs)} pairs ({pairs.source} {pairs.split}){', ' + what if what else ''}:",
             " " * width + "".join(f"{c:>{w}}" for c in columns)]
    lines += [f"{v:<{width}}" + "".join(cell(v, c) for c in columns) for v in variants]
    lines.append("(* the best variant of each column; - undefined: every pair had the same cosine)")
    return "\n".join(lines)
