"""model.layers=each: one vector per block, pooled in the blocks' hooks, against the hook-free
reference at two blocks; their layer mean equals model.layers=all, raw and centred; job=sts by
block, with the block chosen on the selection pairs."""

import json

import numpy as np
import pytest
import scipy.stats
import torch

from actexp import jobs, memory
from actexp.backends.local import LocalBackend
from actexp.errors import UserError
from actexp.jobs.common import chunks as chunks_from_cfg
from actexp.jobs.common import corpus_mean, corpus_of
from actexp.report import sts_choices
from helpers import LONG, TEXTS, compose_cfg, reference_model, reference_stream, reference_vector, rel_err
from test_sts import DEV_PAIRS, FIT_TEXTS, _fit_file, _overrides, _pairs_file

# Longer than every document of the mean's corpus too: its tail value centres the last positions.
TEXTS = [*TEXTS, " ".join([TEXTS[2]] * 3)]
pytestmark = pytest.mark.slow  # two mean jobs and two job=sts runs: about 40 s (CI runs them; the default suite stays under 5 min)

MEAN = ["corpus=samples", "centering=corpus_mean", "centering.min_count=2", "centering.tail_start=4"]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """{layers: (backend, Pooled of TEXTS raw and centred)} for model.layers=each and all, each centred
    with its own mean (made by job=mean in one store)."""
    store = tmp_path_factory.mktemp("art")
    out = {}
    for layers in ("each", "all"):
        overrides = [f"model.layers={layers}", *MEAN, f"paths.artifacts={store}"]
        jobs.run("mean", compose_cfg(*overrides), store / f"mean-{layers}")
        cfg = compose_cfg(*overrides)
        backend = LocalBackend.from_config(cfg)
        out[layers] = (backend, backend.vectors(TEXTS, chunks_from_cfg(cfg.pooling), corpus_mean(cfg)), corpus_mean(cfg))
    return out


def test_each_blocks_vector_equals_the_hook_free_reference_at_two_blocks(both):
    """Raw and centred, block 1 and the last: the centred one with that block's own slice of the mean,
    whose sums are checked against the reference stream of every document of the mean's corpus."""
    backend, pooled, mean = both["each"]
    L, H = len(backend.lm.blocks), backend.lm.hidden_size
    width = 4 * H
    assert pooled.raw.shape == (len(TEXTS), L * width)
    ref = reference_model(backend.lm.model)
    ids, _ = backend.lm.encode(TEXTS)
    docs, _ = backend.lm.encode([d.text for d in corpus_of(compose_cfg(*MEAN)).documents()])
    for block in (1, L - 1):
        sums = torch.zeros_like(mean.sum[:, :H])  # [P, H] float64
        for seq in docs:
            sums[:len(seq)] += reference_stream(ref, seq)[block]
        assert rel_err(mean.sum[:, block * H:(block + 1) * H], sums) < 1e-6, block
        assert max(len(x) for x in ids) > mean.mean.shape[0]  # the tail is used
        mu = mean.rows(max(len(x) for x in ids))[:, block * H:(block + 1) * H]  # [T, H]
        for i, seq in enumerate(ids):
            columns = slice(block * width, (block + 1) * width)
            assert rel_err(pooled.raw[i, columns], reference_vector(ref, seq, LONG, layers=[block])) < 1e-6, (block, i)
            want = reference_vector(ref, seq, LONG, layers=[block], mu=mu)
            assert rel_err(pooled.centered[i, columns], want) < 1e-6, (block, i)


def test_the_layer_mean_of_each_equals_all_raw_and_centred(both):
    (backend, each, each_mean), (_, all_, all_mean) = both["each"], both["all"]
    L = len(backend.lm.blocks)
    for name in ("raw", "centered"):
        per_block = getattr(each, name).reshape(len(TEXTS), L, -1)  # [N, L, C*H]
        assert rel_err(per_block.mean(1), getattr(all_, name)) < 1e-6, name
    # The mean of each holds every block's mean side by side; their average is the mean of all.
    H = backend.lm.hidden_size
    assert each_mean.mean.shape[1] == L * H and each_mean.metadata["layers"] == {"each": list(range(L))}
    blocks = each_mean.mean.double().reshape(-1, L, H).mean(1)
    assert rel_err(blocks, all_mean.mean) < 1e-6


@pytest.fixture(scope="module")
def by_block(tmp_path_factory):
    """job=sts with model.layers=each on the 8 pairs of test_sts, chosen on its dev pairs, and the same
    run with model.layers=all."""
    folder = tmp_path_factory.mktemp("sts-each")
    _pairs_file(folder)
    dev = folder / "dev.tsv"
    dev.write_text("left\tright\tgold\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in DEV_PAIRS))
    fit = _fit_file(folder / "fit.jsonl", FIT_TEXTS)
    out = {}
    for layers in ("each", "all"):
        more = [f"model.layers={layers}", "sts.variants=[raw,centered,whitening]", "bootstrap.resamples=200",
                f"sts.select_on={dev}"]
        metrics = jobs.run("sts", compose_cfg(*_overrides(folder, fit, *more)), folder / layers)
        out[layers] = (json.loads((folder / layers / "sts.json").read_text()), metrics, folder / layers)
    return out


def test_sts_by_block_scores_every_block_and_the_blocks_mean_equals_all(by_block):
    (each, metrics, folder), (all_, _, _) = by_block["each"], by_block["all"]
    spearman = {(r["variant"], r["chunk"]): r["value"] for r in each["records"] if r["metric"] == "spearman"}
    for r in all_["records"]:
        if r["metric"] == "spearman":
            assert spearman[(r["variant"], f"mean/{r['chunk']}")] == pytest.approx(r["value"], abs=1e-6), r
    assert {c for _, c in spearman} >= {f"b{k}/{c}" for k in range(4) for c in ("all", "last", "exp0.023")}
    assert (folder / "sts_layers.png").stat().st_size > 10_000
    # The choice is over blocks too, made on the dev pairs' own records, which sts.json keeps.
    chosen = each["selection"]
    dev = max((r for r in chosen["records"]), key=lambda r: r["value"])
    assert (chosen["variant"], chosen["chunk"], chosen["chosen_by"]) == (dev["variant"], dev["chunk"], dev["value"])
    assert metrics["selected_chosen_by"] == chosen["chosen_by"]
    assert chosen["spearman"] == spearman[(chosen["variant"], chosen["chunk"])]


def test_the_readme_table_chooses_each_cell_on_the_dev_pairs(by_block, capsys, tmp_path):
    """Per variant: the blocks' mean with its chunk chosen on dev, and the block and chunk chosen on dev;
    then the one choice over every run, which is the job's own selection."""
    (each, _, folder), (all_, _, _) = by_block["each"], by_block["all"]
    table, overall = sts_choices.rows([each, all_], ["raw", "whitening"])
    dev = {(r["variant"], r["chunk"]): r["value"] for r in each["selection"]["records"]}
    test = {(r["variant"], r["chunk"]): r for r in each["records"] if r["metric"] == "spearman"}
    for row, variant in zip(table, ["raw", "whitening"]):
        mean_chunk = max((c for v, c in dev if v == variant and c.startswith("mean/")), key=lambda c: dev[(variant, c)])
        block_chunk = max((c for v, c in dev if v == variant), key=lambda c: dev[(variant, c)])
        assert row[:2] == ["none", variant]
        assert row[2].startswith(f"{100 * test[(variant, mean_chunk)]['value']:.2f} [") and f"({mean_chunk};" in row[2]
        assert row[3].startswith(f"{100 * test[(variant, block_chunk)]['value']:.2f} [") and f"({block_chunk};" in row[3]
    assert [r[3] for r in table[2:]] == ["-", "-"]  # layers=all has no blocks to choose
    best = max((each, all_), key=lambda run: run["selection"]["chosen_by"])["selection"]
    assert overall[1:4] == (best["variant"], best["chunk"], best["chosen_by"])
    sts_choices.main([str(folder.parent), "--variants", "raw,whitening"])
    assert "Chosen on dev over every prompt" in capsys.readouterr().out
    sts_choices.main([str(folder / "sts.json")])  # by default, the variants the run scored, in its order
    assert [line.split(" | ")[1] for line in capsys.readouterr().out.splitlines()[2:5]] == ["raw", "centered", "whitening"]
    with pytest.raises(SystemExit, match="2"):  # a variant the runs did not score: one line, exit 2
        sts_choices.main([str(folder / "sts.json"), "--variants", "raw,centered+whitening"])
    assert capsys.readouterr().err == "error: --variants centered+whitening: the runs scored centered, raw, whitening\n"
    unselected = tmp_path / "unselected" / "sts.json"  # a run without sts.select_on, second: named before variants
    unselected.parent.mkdir()
    unselected.write_text(json.dumps({k: v for k, v in each.items() if k != "selection"}))
    with pytest.raises(SystemExit, match="2"):
        sts_choices.main([str(folder / "sts.json"), str(unselected)])
    assert capsys.readouterr().err == f"error: {unselected} was run without sts.select_on: its choices cannot be " \
                                      "made on other pairs; run it with sts.select_on=dev\n"


def test_per_block_vectors_and_fits_that_would_fill_the_memory_are_refused_before_any_pass(both, tmp_path, monkeypatch):
    """[N, L, C*H] float32 (twice with centring), and (L+1)*C fits of H x H float64 per base, against half
    the memory available: the kernel's report is the one thing replaced, as if 1 MiB were available."""
    backend, _, mean = both["each"]
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:          10 kB\nMemAvailable:     1024 kB\n")
    monkeypatch.setattr(memory, "MEMINFO", meminfo)
    with pytest.raises(UserError, match=r"model.layers=each: the vectors of 400 texts x 4 blocks x 512 dims take "
                                        r"6.2 MiB, more than half of the 1.0 MiB free here"):
        backend.vectors(["A text."] * 400, chunks_from_cfg(compose_cfg().pooling), mean)
    backend.vectors(["A text."] * 10, chunks_from_cfg(compose_cfg().pooling), None)  # 80 KiB: fits
    folder = tmp_path / "sts"
    folder.mkdir()
    _pairs_file(folder)
    meminfo.write_text("MemAvailable:      200 kB\n")  # 20 parts x 128 x 11 dims x 8 bytes x 2 bases: 440 KiB
    cfg = compose_cfg(*_overrides(folder, _fit_file(folder / "fit.jsonl"), "model.layers=each", "sts.variants=[raw,whitening]"))
    with pytest.raises(UserError, match=r"sts: the fits of 20 parts of 128 dims take 0.4 MiB, more than half of the 0.2 MiB free here"):
        jobs.run("sts", cfg, folder / "run")
    assert not (folder / "run" / "sts.json").exists()



def test_each_prompts_choice_minus_the_first_runs_has_a_paired_interval_from_a_plain_loop(by_block):
    """The runs' chosen cosines on the same resamples of the pairs: scipy's Spearman on each resample
    of both, one resample at a time, gives the interval of the difference."""
    (each, _, _), (all_, _, _) = by_block["each"], by_block["all"]
    _, second = sts_choices.against_first([all_, each])
    first_cos, cos = (np.asarray(run["selection"]["cosines"]) for run in (all_, each))
    gold = np.asarray(each["selection"]["gold"])
    boot = each["bootstrap"]
    rng = np.random.default_rng(boot["seed"])
    diffs = []
    for _ in range(boot["resamples"]):
        i = rng.integers(0, len(gold), len(gold))
        diffs.append(scipy.stats.spearmanr(cos[i], gold[i])[0] - scipy.stats.spearmanr(first_cos[i], gold[i])[0])
    low, high = np.nanquantile(diffs, [(1 - boot["level"]) / 2, (1 + boot["level"]) / 2])
    value = each["selection"]["spearman"] - all_["selection"]["spearman"]
    assert second[-1] == f"{100 * value:.2f} [{100 * low:.2f}, {100 * high:.2f}]"
    assert second[:2] == ["none", f"{each['selection']['variant']}, {each['selection']['chunk']}"]
