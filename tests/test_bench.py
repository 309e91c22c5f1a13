"""The bench job runs end to end and writes every figure of bench.json (targets are checked by
running the job itself, not here: timings do not belong in tests)."""

import json

import pytest

from helpers import run_cli

KEYS = {
    "tokens_per_s": {"bare_forward", "extract_short", "extract_long_centered", "seed_style", "corpus_mean",
                     "seed_style_mean", "store"},
    "peak_mem_mb": {"bare_forward", "extract_long_centered", "seed_style", "corpus_mean_n", "corpus_mean_4n",
                    "store_n", "store_4n"},
    "ratios": {"extract_vs_bare", "mem_extract_vs_bare", "extract_vs_seed_style", "mean_vs_seed_style", "mean_vs_bare",
               "mean_mem_growth", "store_vs_bare", "store_mem_growth"},
}


@pytest.mark.slow
def test_bench_writes_bench_json(tmp_path):
    (tmp_path / "tmp").mkdir()
    r = run_cli("job=bench", "bench.docs=6", "bench.mean_docs=3", "bench.repeats=1", "bench.warmup=0",
                "corpus.shard_size=2", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                env={"TMPDIR": str(tmp_path / "tmp"),  # torch's compile cache is torch's: kept out of the count
                     "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "torch-cache")})
    assert r.returncode == 0, r.stderr
    # Scratch files (means, stores, the children's) live in the run folder and go with the run.
    assert not list((tmp_path / "tmp").iterdir()) and not list((tmp_path / "run").glob(".scratch-*"))
    result = json.loads((tmp_path / "run" / "bench.json").read_text())
    assert {"model", "hardware", "tokens", "padding_waste", "mfu"} <= set(result)
    assert result["model"] == "tiny" and result["hardware"] == "cpu" and result["mfu"] is None
    assert result["documents"] == 6
    for section, keys in KEYS.items():
        assert set(result[section]) == keys
        assert all(v > 0 for v in result[section].values())
    assert 0 <= result["padding_waste"] <= 0.1 and result["packing"] is True
    assert result["pool_short"]["texts"] == 2000 and result["pool_short"]["pool_s"] > 0
    assert result["read"]["docs"] == 10000 and result["read"]["slice_1000_ms"] > 0
    assert set(result["targets"]) == {"extract_vs_bare", "mem_extract_vs_bare", "mean_vs_seed_style", "mean_mem_growth",
                                      "padding_waste", "store_vs_bare", "store_mem_growth", "pool_fraction", "mean_vs_bare"}
    assert result["load_s"] > 0 and result["load_host_mb"] > 0 and result["batch_invariance"] is None
    assert result["seed_style_documents"] == 6 and result["seed_style_tokens"] == result["tokens"]
    assert f"wrote {tmp_path / 'run' / 'bench.json'}" in r.stdout
    assert "extract_vs_bare" in r.stdout  # the printed table


@pytest.mark.slow
def test_bench_on_a_spread_of_lengths_with_batch_invariance_and_a_subset_of_timings(tmp_path):
    r = run_cli("job=bench", "bench.docs=12", "bench.min_tokens=8", "bench.doc_tokens=300", "bench.mean_docs=3",
                "bench.repeats=1", "bench.warmup_docs=2", "bench.seed_docs=2", "bench.invariance=4",
                "bench.measure=[bare_forward,extract_long_centered,seed_style]", "corpus.shard_size=2",
                f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "run" / "bench.json").read_text())
    assert result["documents"] == 12 and 8 <= result["doc_tokens"][0] < result["doc_tokens"][1] <= 300
    assert set(result["tokens_per_s"]) == {"bare_forward", "extract_long_centered", "seed_style"}
    assert result["ratios"]["store_vs_bare"] is None and "store_vs_bare" not in result["targets"]
    assert set(result["peak_mem_mb"]) == {"bare_forward", "extract_long_centered", "seed_style"}  # the measured ones only
    assert result["ratios"]["store_mem_growth"] is None and result["ratios"]["mem_extract_vs_bare"] > 0
    assert result["seed_style_documents"] == 2 and 2 * 8 <= result["seed_style_tokens"] <= 2 * 300 < result["tokens"]
    invariance = result["batch_invariance"]
    assert invariance["batches"] == 4 and 0 <= invariance["max_rel_diff"] < 2e-6  # float32: within rounding
    assert invariance["bitwise"] == (invariance["max_abs_diff"] == 0)
    assert "batch invariance" in r.stdout


def test_bench_refuses_a_timing_it_does_not_know(tmp_path):
    r = run_cli("job=bench", "bench.measure=[bare_forward,extract_lng]", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: bench.measure names extract_lng: choose from bare_forward,")
    assert not (tmp_path / "run").exists()
