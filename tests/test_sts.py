"""job=sts end to end: the correlations of each variant checked against scipy on vectors computed
apart from the job, a file of pairs, fits stored and reused, W&B read back, and bad input."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import scipy.stats
import torch

from actexp import jobs
from actexp.backends.local import LocalBackend
from actexp.errors import UserError
from helpers import compose_cfg, pooling_spec, reference_model, reference_vector, run_cli, wandb_records
from test_analyze import MEAN, summary_values

PAIRS = [("A cat sits on the mat.", "A cat is sitting on a mat.", 4.8),
         ("A man plays the guitar.", "A man is playing a guitar.", 4.6),
         ("A cat sits on the mat.", "The stock market fell sharply.", 0.0),
         ("Children play in the park.", "Kids are playing outside.", 3.9),
         ("The stock market fell sharply.", "Shares dropped today.", 3.5),
         ("A man plays the guitar.", "Children play in the park.", 0.4),
         ("It is raining heavily.", "Heavy rain is falling.", 4.9),
         ("It is raining heavily.", "A cat is sitting on a mat.", 0.2)]


# The fit set and the corpus of the mean: short texts, so that every variant costs a second.
FIT_TEXTS = ["The dog barked at the mailman.", "A woman is slicing an onion.", "Two boys are playing football.",
             "The train arrived late again this morning.", "A bird sings in the tree.", "He is reading a newspaper.",
             "The soup tastes of garlic and lemon.", "Snow covered the mountain road.", "A girl rides her bicycle.",
             "The meeting was moved to Friday.", "Someone is playing the piano loudly.", "The river flooded the fields."]
LONG_CHUNKS = ["last", "exp0.023", "exp0.067", "exp0.159"]
VARIANTS = ["raw", "centered", "global_mean", "abtt", "whitening", "centered+global_mean", "centered+abtt",
            "centered+whitening"]


def _pairs_file(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("left\tright\tgold\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in PAIRS))
    return path


def _fit_file(path, texts=FIT_TEXTS):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def _overrides(folder, fit_file, *more):
    """job=sts on the pairs and the fit set in `folder`: fits on fit_file, the mean of the same texts."""
    return ["job=sts", f"sts.pairs={folder / 'pairs.tsv'}", "sts.columns=[left,right,gold]", "sts.fit=corpus",
            "corpus=files", f"corpus.path={fit_file}", "centering.min_count=2", "centering.tail_start=4",
            "sts.whitening_dims=6", f"paths.artifacts={folder / 'art'}", *more]


@pytest.fixture(scope="module")
def every_variant(tmp_path_factory):
    """(folder, sts.json, metrics) of job=sts with every variant; the folder holds pairs.tsv, fit.jsonl,
    the mean and the two fits in art/."""
    folder = tmp_path_factory.mktemp("sts")
    _pairs_file(folder)
    overrides = _overrides(folder, _fit_file(folder / "fit.jsonl"), f"sts.variants=[{','.join(VARIANTS)}]",
                           "bootstrap.resamples=300", "bootstrap.seed=4")
    metrics = jobs.run("sts", compose_cfg(*overrides), folder / "run")
    return folder, json.loads((folder / "run" / "sts.json").read_text()), metrics


def _cosine(x, y):
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


def _reference_vectors(cfg, texts, mean_file):
    """{text: (raw, centred)} [4H] float64, one text at a time: output_hidden_states of a copy of the model
    without its final norm (helpers.reference_model), h_t - mu_t by hand with mu read from the mean's file."""
    backend = LocalBackend.from_config(cfg)
    ref, spec = reference_model(backend.lm.model), pooling_spec("long")
    stored = safetensors.torch.load_file(mean_file)
    out = {}
    for text in texts:
        ids = backend.lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        mu = stored["mean"][:len(ids)]  # [T, H]: mu_t of the positions the mean's corpus reached ...
        if len(ids) > len(mu):  # ... and its tail value for every later one
            mu = torch.cat([mu, stored["tail"].expand(len(ids) - len(mu), -1)])
        out[text] = (reference_vector(ref, ids, spec).numpy(), reference_vector(ref, ids, spec, mu=mu).numpy())
    return out, backend.lm.hidden_size


def _loop_interval(statistic, boot: dict):
    """The percentile interval of statistic(pair indices) over the resamples of the 8 pairs that a record
    names (numpy's default_rng(seed)), one resample at a time."""
    rng = np.random.default_rng(boot["seed"])
    values = [statistic(rng.integers(0, len(PAIRS), len(PAIRS))) for _ in range(boot["resamples"])]
    return list(np.quantile(values, [(1 - boot["level"]) / 2, (1 + boot["level"]) / 2]))


def test_every_variant_equals_numpy_on_vectors_made_one_text_at_a_time(every_variant):
    """Each variant's Spearman and Pearson, per chunk and all chunks, against scipy on cosines of vectors
    made apart from the job, with each fit from np.cov and np.linalg.eigh of that base's fit-set vectors;
    the Spearman of all chunks with its interval, and minus raw's with its paired interval, from scipy on
    each resample of the pairs made again from the recorded seed."""
    folder, made, metrics = every_variant
    cfg = compose_cfg(*_overrides(folder, folder / "fit.jsonl"))
    texts = {p[0] for p in PAIRS} | {p[1] for p in PAIRS}
    one, h = _reference_vectors(cfg, sorted(texts | set(FIT_TEXTS)), made["centering"]["mean"]["path"])
    gold = [s for _, _, s in PAIRS]
    got = {(r["metric"], r["variant"], r["chunk"]): r["value"] for r in made["records"]}
    interval = {(r["variant"], r["chunk"]): r["interval"] for r in made["records"] if r["metric"] == "spearman"}
    minus_raw = {d["variant"]: d for d in made["differences"] if d["chunk"] == "all"}
    assert len(got) == 2 * len(VARIANTS) * 5 and set(minus_raw) == set(VARIANTS[1:])
    assert made["bootstrap"] == {"method": "percentile", "unit": "pairs", "resamples": 300, "seed": 4, "level": 0.95}
    cos_all = {}
    for variant in VARIANTS:
        base, _, method = variant.rpartition("+") if "+" in variant else ("raw", "", variant)
        if variant == "centered":
            base, method = "centered", "raw"
        b = 0 if base == "raw" else 1
        fit_x = np.stack([one[t][b] for t in FIT_TEXTS])  # [12, 4H]: the fit set's vectors of this base
        parts = {t: [] for t in texts}
        for c in range(4):
            part = slice(c * h, (c + 1) * h)
            mu = fit_x[:, part].mean(0)
            values, vectors = np.linalg.eigh(np.cov(fit_x[:, part].T))
            values, vectors = values[::-1], vectors[:, ::-1]  # descending
            for t in texts:
                v = one[t][b][part]
                if method == "global_mean":
                    v = v - mu
                elif method == "abtt":  # sts.abtt_dims = 3
                    v = v - mu - vectors[:, :3] @ (vectors[:, :3].T @ (v - mu))
                elif method == "whitening":  # sts.whitening_dims = 6
                    v = (v - mu) @ vectors[:, :6] / np.sqrt(values[:6])
                parts[t].append(v)
        for c, label in enumerate([*LONG_CHUNKS, "all"]):
            pick = (lambda t: np.concatenate(parts[t])) if label == "all" else (lambda t: parts[t][c])
            cos = [_cosine(pick(a), pick(b)) for a, b, _ in PAIRS]
            assert got[("spearman", variant, label)] == pytest.approx(scipy.stats.spearmanr(cos, gold).statistic,
                                                                      abs=1e-9), (variant, label)
            assert got[("pearson", variant, label)] == pytest.approx(scipy.stats.pearsonr(cos, gold).statistic,
                                                                     abs=1e-6), (variant, label)
        cos_all[variant] = cos = np.array(cos)  # all chunks
        rho = lambda i, cos=cos: scipy.stats.spearmanr(cos[i], np.array(gold)[i]).statistic  # noqa: E731
        assert interval[(variant, "all")] == pytest.approx(_loop_interval(rho, made["bootstrap"]), abs=1e-6), variant
        if variant != "raw":
            raw_rho = lambda i: scipy.stats.spearmanr(cos_all["raw"][i], np.array(gold)[i]).statistic  # noqa: E731
            assert minus_raw[variant]["interval"] == pytest.approx(
                _loop_interval(lambda i: rho(i) - raw_rho(i), made["bootstrap"]), abs=1e-6), variant
    assert metrics["sts/spearman/raw/all"] == got[("spearman", "raw", "all")]
    assert made["pairs"]["n_pairs"] == len(PAIRS) and made["pairs"]["split"] == "file"
    assert made["fits"]["raw"]["fit_set"]["texts"] == len(FIT_TEXTS)
    assert (folder / "run" / "sts_scatter.png").stat().st_size > 10_000
    # A fit keeps the directions its 12 texts span, 11 of a chunk's 128.
    stored = safetensors.torch.load_file(made["fits"]["centered"]["path"])
    assert [tuple(stored[f"eigvecs{c}"].shape) for c in range(4)] == [(h, len(FIT_TEXTS) - 1)] * 4


def test_each_field_of_a_fits_identity_makes_a_new_fit_and_a_foreign_fit_is_refused(every_variant, tmp_path):
    folder, made, _ = every_variant
    shutil.copytree(folder / "art", tmp_path / "art")  # the fixture's mean and fits, changed here only
    shutil.copy(folder / "pairs.tsv", tmp_path)

    def fit_of(*more, fit_file=folder / "fit.jsonl", variant="global_mean"):
        """The fit folder (named by the identity's hash) that job=sts with these overrides used, and sts.json."""
        out = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
        jobs.run("sts", compose_cfg(*_overrides(tmp_path, fit_file, f"sts.variants=[{variant}]", *more)), out)
        done = json.loads((out / "sts.json").read_text())
        return Path(done["fits"]["centered" if "+" in variant else "raw"]["path"]).parent, done

    raw, centred = (Path(made["fits"][b]["path"]).parent.name for b in ("raw", "centered"))
    seen = {raw, centred}  # the base: raw and centred vectors have a fit each
    assert len(seen) == 2 and fit_of()[0].name == raw  # the same identity: the same fit, reused
    fit_set = _fit_file(tmp_path / "fit.jsonl")
    # A model field that the folder's readable name leaves out: only the identity tells the fits apart.
    changed = {"model": fit_of("model.attn_implementation=eager")[0], "pooling": fit_of("pooling=short")[0]}
    assert fit_of(fit_file=fit_set)[0].name == raw  # the same texts at another path: the same fit
    _fit_file(fit_set, [*FIT_TEXTS[:-1], "The lake froze over in January."])  # as many texts, one other
    changed["fit set content"] = fit_of(fit_file=fit_set)[0]
    changed["mean"], other_mean = fit_of("centering.min_count=3", variant="centered+global_mean")
    assert other_mean["centering"]["mean"]["sha256"] != made["centering"]["mean"]["sha256"]
    for field, fit_folder in changed.items():
        assert fit_folder.name not in seen and (fit_folder / "fit.safetensors").is_file(), field
        seen.add(fit_folder.name)
    assert len(list((tmp_path / "art" / "fits").glob("*/fit.safetensors"))) == len(seen)
    # A fit copied into another identity's folder is refused, naming what differs, never reused.
    shutil.copy(changed["model"] / "fit.safetensors", tmp_path / "art" / "fits" / raw / "fit.safetensors")
    with pytest.raises(UserError, match=r"holds another fit than this folder's: it has model attn_implementation="
                                        r"\"eager\" \(this model has attn_implementation=\"sdpa\"\); remove .* "
                                        "and run again to fit it anew"):
        fit_of()


def test_fits_are_reused_and_what_the_fit_set_cannot_serve_is_one_line(every_variant, tmp_path, caplog):
    folder, made, _ = every_variant
    fit_file = Path(made["fits"]["raw"]["path"])
    before = fit_file.stat().st_mtime_ns
    with caplog.at_level("INFO"):
        jobs.run("sts", compose_cfg(*_overrides(folder, folder / "fit.jsonl", "sts.variants=[abtt]")), tmp_path / "b")
    assert "reusing the raw fit on corpus-files (12 texts)" in caplog.text and fit_file.stat().st_mtime_ns == before
    assert json.loads((tmp_path / "b" / "sts.json").read_text())["fits"]["raw"]["path"] == str(fit_file)
    # 12 texts span at most 11 dims: whitening all 128 (or 32), or ABTT of 128, refused before any forward pass.
    span = "the fit set's 12 texts span at most 11"
    for variant, setting, message in [("whitening", "sts.whitening_dims=null", f"whitening keeps 128 dims but {span}"),
                                      ("whitening", "sts.whitening_dims=32", f"whitening keeps 32 dims but {span}"),
                                      ("abtt", "sts.abtt_dims=128", "sts.abtt_dims=128 would remove every direction .* "
                                                                    "12 texts span \\(at most 11\\)")]:
        with pytest.raises(UserError, match=message):
            jobs.run("sts", compose_cfg(*_overrides(folder, folder / "fit.jsonl", f"sts.variants=[{variant}]", setting)),
                     tmp_path / "c")
    assert not (tmp_path / "c").exists()


DEV_PAIRS = [(FIT_TEXTS[0], FIT_TEXTS[4], 3.1), (FIT_TEXTS[1], FIT_TEXTS[6], 2.2), (FIT_TEXTS[2], FIT_TEXTS[8], 4.0),
             (FIT_TEXTS[3], FIT_TEXTS[9], 1.0), (FIT_TEXTS[5], FIT_TEXTS[10], 2.8), (FIT_TEXTS[7], FIT_TEXTS[11], 0.3),
             (FIT_TEXTS[0], FIT_TEXTS[2], 1.7), (FIT_TEXTS[4], FIT_TEXTS[10], 3.6)]


@pytest.mark.slow  # about 17 s: five sts runs
def test_selection_on_dev_never_reads_the_scores_it_reports(every_variant, tmp_path):
    """The variant and chunk are the best of the selection pairs' own run; reversing the evaluated
    pairs' gold scores changes the result and never the choice; reversing the selection pairs' does."""
    folder, _, _ = every_variant

    def pairs_file(path, pairs):
        path.write_text("left\tright\tgold\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in pairs))
        return path

    def run(name, evaluated, select_on=None):
        more = [f"sts.variants=[{','.join(VARIANTS)}]", f"sts.pairs={evaluated}"] + ([f"sts.select_on={select_on}"]
                                                                                     if select_on else [])
        jobs.run("sts", compose_cfg(*_overrides(folder, folder / "fit.jsonl", *more)), tmp_path / name)
        return json.loads((tmp_path / name / "sts.json").read_text())

    dev = pairs_file(tmp_path / "dev.tsv", DEV_PAIRS)
    flipped = pairs_file(tmp_path / "flipped.tsv", [(a, b, 5 - s) for a, b, s in PAIRS])
    on_dev = run("on-dev", dev)  # the selection pairs evaluated on their own
    best = max((r for r in on_dev["records"] if r["metric"] == "spearman"), key=lambda r: r["value"])
    evaluated = run("chosen", folder / "pairs.tsv", dev)
    chosen = evaluated["selection"]
    assert (chosen["variant"], chosen["chunk"], chosen["chosen_by"]) == (best["variant"], best["chunk"], best["value"])
    [result] = [r for r in evaluated["records"] if (r["metric"], r["variant"], r["chunk"]) == ("spearman", best["variant"],
                                                                                          best["chunk"])]
    assert (chosen["spearman"], chosen["interval"]) == (result["value"], result["interval"])
    assert chosen["source"]["sha256"] == on_dev["pairs"]["sha256"]
    again = run("flipped", flipped, dev)["selection"]  # other scores to report: the same choice
    assert (again["variant"], again["chunk"]) == (chosen["variant"], chosen["chunk"])
    assert again["spearman"] == pytest.approx(-chosen["spearman"])
    other = run("other", folder / "pairs.tsv", pairs_file(tmp_path / "dev-flipped.tsv",
                                                          [(a, b, 5 - s) for a, b, s in DEV_PAIRS]))["selection"]
    assert (other["variant"], other["chunk"]) != (chosen["variant"], chosen["chunk"])
    # The evaluated pairs are refused as selection pairs, in any file that holds them.
    copy = tmp_path / "dev-copy.jsonl"
    copy.write_text("".join(json.dumps({"text_a": a, "text_b": b, "score": s}) + "\n" for a, b, s in DEV_PAIRS))
    with pytest.raises(UserError, match="sts.select_on=.*dev-copy.jsonl holds the pairs being evaluated"):
        run("self", dev, copy)


def test_bad_sts_settings_are_one_line(tmp_path):
    cases = [("sts.variants=[whitned]", "unknown variant 'whitned' \\(did you mean whitening\\?\\)"),
             ("sts.split=validation", "sts.split=validation: use one of train, dev, test"),
             (f"sts.pairs={tmp_path}/absent.tsv", "absent.tsv is not a file"),
             ("sts.fit=test", "sts.fit=test: use stsb .* or corpus"),
             ("sts.abtt_dims=0", "sts.abtt_dims=0 is out of range"),
             (f"sts.select_on={tmp_path}/absent.tsv", r"sts.select_on=\S+absent.tsv is not a file: give dev, or"),
             ("sts.select_on=test", "sts.select_on=test: use dev .*it is what reports"),
             ("bootstrap.level=1.5", "bootstrap.level=1.5 is out of range"),
             ("bootstrap.resamples=0", "bootstrap.resamples=0 is out of range"),
             ("bootstrap.resamples=199", "bootstrap.resamples=199 is too few for a 95 % interval: .* give at least 200"),
             ("sts.select_on=train", "sts.select_on=train: use dev .*the fits are made on it")]
    # Each text paired with itself: cosines of 1 within a few ulps, a constant whose rounding is no ranking.
    same = tmp_path / "same.tsv"
    same.write_text("left\tright\tgold\n" + "".join(f"{a}\t{a}\t{s}\n" for a, _, s in PAIRS[:5]))
    cases.append((f"sts.pairs={same}", "every variant gave every pair the same cosine: no correlation is defined"))
    for override, message in cases:
        with pytest.raises(UserError, match=message):
            jobs.run("sts", compose_cfg("job=sts", "sts.columns=[left,right,gold]", "sts.variants=[raw]", override,
                                        f"paths.artifacts={tmp_path}"), tmp_path / "run")
    r = run_cli("job=sts", f"sts.pairs={tmp_path}/absent.tsv", "logger=none", f"paths.artifacts={tmp_path}", cwd=tmp_path)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: sts.pairs="), r.stderr


@pytest.mark.slow
def test_stsb_with_every_variant_from_the_cli_logs_to_wandb(tmp_path):
    args = ["job=sts", MEAN, f"paths.artifacts={tmp_path / 'art'}"]
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Spearman x 100 of cosine vs gold score, 1379 pairs (stsb test)" in r.stdout
    [run_dir] = (tmp_path / "experiments" / "sts").iterdir()
    made = json.loads((run_dir / "sts.json").read_text())
    variants = {r["variant"] for r in made["records"]}
    assert variants == {"raw", "centered", "global_mean", "abtt", "whitening", "centered+global_mean",
                        "centered+abtt", "centered+whitening"}
    assert len(made["records"]) == 8 * 5 * 2 and made["pairs"]["n_pairs"] == 1379
    assert made["centering"]["mean"]["docs"] == 64 and made["fits"]["centered"]["fit_set"]["name"] == "stsb-train"
    [offline] = (run_dir / "wandb").glob("offline-run-*")
    # Logged numbers: one-part keys (the table's and the plot's fields are nested under their names).
    logged = [i.key or i.nested_key[0] for record in wandb_records(offline)
              if record.WhichOneof("record_type") == "history" for i in record.history.item if len(i.nested_key) < 2]
    names = {f"sts/{r['metric']}/{r['variant'] + ('-' + r['minus'] if 'minus' in r else '')}/{r['chunk']}{end}"
             for r in made["records"] + made["differences"] for end in ("", "/low", "/high")}
    # Each metric once, under the README's name, and nothing under a second name (not W&B's own _step ...).
    assert sorted(k for k in logged if not k.startswith("_")) == sorted(names | {"best_spearman"})
    values = summary_values(offline)
    assert all(values[f"sts/{r['metric']}/{r['variant']}/{r['chunk']}"] == r["value"] for r in made["records"])
    assert all([values[f"sts/{r['metric']}/{r['variant']}/{r['chunk']}/{end}"] for end in ("low", "high")]
               == r["interval"] for r in made["records"])
    assert len(made["differences"]) == 7 * 5 and made["bootstrap"]["resamples"] == 1000
    # The table of intervals, all chunks: each variant's Spearman with its interval, then minus raw's.
    [own] = [r for r in made["records"] if (r["metric"], r["variant"], r["chunk"]) == ("spearman", "whitening", "all")]
    [minus] = [d for d in made["differences"] if (d["variant"], d["chunk"]) == ("whitening", "all")]
    cells = [f"{100 * x['value']:.2f} \\[ *{100 * x['interval'][0]:.2f}, *{100 * x['interval'][1]:.2f}\\]" for x in (own, minus)]
    assert re.search(rf"\nwhitening +{cells[0]} +{cells[1]}\n", r.stdout), r.stdout
    spearman = {(r["variant"], r["chunk"]): r["value"] for r in made["records"] if r["metric"] == "spearman"}
    # Whitening fitted on STS-B's own sentences beats raw cosines here (tiny: 54.5 vs 39.0 measured).
    assert spearman[("whitening", "all")] > spearman[("raw", "all")] + 0.05
