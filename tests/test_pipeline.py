"""The research outputs: CSV round trip, the pipeline end to end, W&B offline runs, sweeps."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from actexp import jobs
from actexp.backends import local
from actexp.errors import UserError
from actexp.jobs.common import chunks as chunks_from_cfg
from actexp.report.sweep import summary_table
from actexp.store.io import read_matrix_csv, write_json, write_matrix_csv
from actexp.store.means import load_mean
from helpers import compose_cfg, rel_err, run_cli, wandb_summary

CONTRACT = ["vectors_long_mode_raw.csv", "vectors_long_mode_raw.json", "vectors_long_mode_centered.csv",
            "vectors_long_mode_centered.json", "compare_report.csv", "similarity_long_all.png",
            *[f"similarity_long_chunk{k}.png" for k in range(4)], "vectors_norms.png", "vectors_values.png",
            "vectors_dim_stats.png", "vectors_outlier_dims.png"]


def test_csv_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(3, 50) * torch.logspace(-30, 30, 50)  # [N, D] float32 across magnitudes
    x[0, :4] = torch.tensor([0.0, -0.0, 1e-45, 3.4028235e38])  # zero, subnormal, float32 max
    write_matrix_csv(tmp_path / "v.csv", x, ["a", "b,c", "d"])
    back, names = read_matrix_csv(tmp_path / "v.csv")
    assert names == ["a", "b,c", "d"] and back.dtype == torch.float32
    assert torch.equal(back.view(torch.int32), x.view(torch.int32))  # every bit, signed zero too
    lines = (tmp_path / "v.csv").read_text().splitlines()
    assert lines[0].startswith("dim,") and len(lines) == 51 and lines[1].startswith("0,")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    r = run_cli("+experiment=long_centered", "corpus.max_docs=64", f"paths.artifacts={root / 'artifacts'}", cwd=root)
    assert r.returncode == 0, r.stderr
    [run_dir] = (root / "experiments" / "long_centered").iterdir()
    return root, run_dir, r.stdout


def test_every_stage_prints_the_paths_it_wrote(experiment):
    root, run_dir, stdout = experiment
    printed = {line.removeprefix("wrote ") for line in stdout.splitlines() if line.startswith("wrote ")}
    extra = {"mean.json", "analysis.json", "analysis_projection.png"}
    assert {str(run_dir / name) for name in [*CONTRACT, *extra]} <= printed
    [mean] = (root / "artifacts").glob("means/*/corpus_mean.safetensors")
    assert str(mean) in printed


def test_pipeline_writes_the_contract_and_the_csvs_obey_the_identity(experiment):
    _, run_dir, _ = experiment
    for name in CONTRACT:
        assert (run_dir / name).is_file(), name
    raw, names = read_matrix_csv(run_dir / "vectors_long_mode_raw.csv")
    centered, _ = read_matrix_csv(run_dir / "vectors_long_mode_centered.csv")
    assert raw.shape == (20, 4 * 128) and names[0] == "01_cats_apartment" and len(set(names)) == 20
    info = json.loads((run_dir / "vectors_long_mode_centered.json").read_text())
    mean = load_mean(info["centering"]["mean"]["path"])
    assert info["centering"]["mean"]["corpus"].startswith("stdlib_docs") and info["centering"]["mean"]["docs"] == 64
    chunks = chunks_from_cfg(compose_cfg("pooling=long").pooling)
    assert rel_err(mean.recenter(raw, info["n_tokens"], chunks), centered) < 1e-5
    report = (run_dir / "compare_report.csv").read_text().splitlines()
    assert len(report) == 1 + 20 * 4
    for png in run_dir.glob("*.png"):
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert im.format == "PNG" and min(im.size) >= 400, png


def test_the_experiment_ends_with_the_answer(experiment):
    _, run_dir, stdout = experiment
    tail = stdout[stdout.index("summary of long_centered"):].splitlines()
    assert len(tail) == 7 and tail[1] == f"  outputs: {run_dir}" and "PASS" in tail[2]
    report = json.loads((run_dir / "analysis.json").read_text())
    found = {(r["metric"], r["variant"]): r for r in report["results"] if r["chunk"] == "all"}
    diff = {d["metric"]: d for d in report["differences"] if d["chunk"] == "all"}

    def shown(r):
        return f"{r['value']:.3f} [{r['interval'][0]:.3f}, {r['interval'][1]:.3f}]"

    # Retrieval with its chance level, each variant's interval and the paired interval of the difference.
    assert f"(chance: recall@1 {1 / 19:.3f}, MRR {sum(1 / k for k in range(1, 20)) / 19:.3f};" in tail[3]
    for line, metric in ((tail[4], "recall@1"), (tail[5], "mrr")):
        assert line == (f"    {'MRR' if metric == 'mrr' else metric} raw {shown(found[metric, 'raw'])} -> "
                        f"centred {shown(found[metric, 'centered'])}; centred - raw {shown(diff[metric])}")
    anisotropy = found["anisotropy", "raw"]["value"], found["anisotropy", "centered"]["value"]
    assert f"raw {anisotropy[0]:.3f} -> centred {anisotropy[1]:.3f}" in tail[6]


def test_pipeline_logs_config_metrics_and_images_to_an_offline_wandb_run(experiment):
    _, run_dir, _ = experiment
    [offline] = (run_dir / "wandb").glob("offline-run-*")
    run, config, keys = wandb_summary(offline)
    assert run.project == "actexp" and run.run_group == "long_centered"
    assert config["model"]["name"] == "tiny" and config["centering"]["name"] == "corpus_mean"
    assert config["job"]["name"] == "pipeline"
    # The config names the mean the run centred with, not `auto`: the file the sidecars name.
    used = json.loads((run_dir / "vectors_long_mode_centered.json").read_text())["centering"]["mean"]
    assert config["centering"]["mean_path"] == used["path"] and config["centering"]["mean"] == used
    assert {"corpus", "docs", "min_count", "tail_start", "sha256"} <= set(used) and used["docs"] == 64
    assert {"compare/worst_rel_error", "csv/tokens", "plot/cosine_offdiag_mean/centered/all", "mean/docs"} <= keys
    images = {k.split("/")[1] for k in keys if k.startswith("images/")}
    assert len(images) >= 9 and "similarity_long_all" in images
    assert any(k.startswith("compare_report/") for k in keys)  # the report as a table
    assert len(list((offline / "files" / "media" / "images").rglob("*.png"))) >= 9


def test_the_pipeline_names_its_analysis_as_job_analyze_does(experiment):
    """One name per metric: eval/<metric>/<variant>/<chunk> and geometry/..., in W&B and metrics.json,
    as job=analyze logs them (test_analyze.py), so a pipeline and an analyze run share a panel."""
    _, run_dir, _ = experiment
    [offline] = (run_dir / "wandb").glob("offline-run-*")
    _, _, keys = wandb_summary(offline)
    recorded = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    for names in (keys, set(recorded)):
        assert {"eval/recall@1/centered/all", "eval/mrr/raw/exp0.067", "geometry/anisotropy/raw/last",
                "geometry/pc1_share/centered/all"} <= names
        assert not [k for k in names if k.startswith("analyze/")]


def test_the_pipeline_draws_raw_beside_centred_on_one_colour_scale(experiment):
    _, run_dir, _ = experiment
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    # Every heatmap's off-diagonal cosines, by numpy from the CSVs: all chunks, then each of 128 dims.
    values = []
    for variant in ("raw", "centered"):
        x = read_matrix_csv(run_dir / f"vectors_long_mode_{variant}.csv")[0].double().numpy()  # [20, 512]
        for chunk, dims in [("all", slice(None))] + [(c, slice(128 * k, 128 * (k + 1))) for k, c in
                                                     enumerate(["last", "exp0.023", "exp0.067", "exp0.159"])]:
            u = x[:, dims] / np.linalg.norm(x[:, dims], axis=1, keepdims=True)
            off = (u @ u.T)[~np.eye(20, dtype=bool)]
            values.append(off)
            assert metrics.get(f"plot/cosine_offdiag_mean/{variant}/{chunk}") == pytest.approx(off.mean(), abs=1e-5)
    lo, hi = min(v.min() for v in values), max(v.max() for v in values)
    center = 0.0 if lo < 0 < hi else (lo + hi) / 2  # the default rule, over raw and centred together
    half = max(center - lo, hi - center)
    assert (metrics["plot/color_vmin"], metrics["plot/color_vmax"]) == pytest.approx((center - half, center + half),
                                                                                      abs=1e-5)
    for png in run_dir.glob("similarity_long_*.png"):  # two square panels side by side, and a colour bar
        with Image.open(png) as im:
            assert im.size[0] > 1.8 * im.size[1], png


@pytest.mark.slow  # 25 s; the default run sweeps job=analyze (test_analyze.py) instead
def test_sweep_gives_one_folder_and_one_run_per_job_and_a_summary(experiment):
    root, _, _ = experiment
    r = run_cli("-m", "+experiment=long_centered", "pooling=short,long", "corpus.max_docs=64",
                f"paths.artifacts={root / 'artifacts'}", cwd=root)
    assert r.returncode == 0, r.stderr
    [sweep] = (root / "multirun" / "long_centered").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0_corpus.max_docs-64+pooling-short", "1_corpus.max_docs-64+pooling-long"]
    rows = [read_matrix_csv(j / f"vectors_{m}_mode_centered.csv")[0].shape[1] for j, m in zip(jobs, ("short", "long"))]
    assert rows == [128, 512]
    runs = [wandb_summary(next((j / "wandb").glob("offline-run-*"))) for j in jobs]
    assert runs[0][0].run_id != runs[1][0].run_id
    assert runs[0][0].run_group == runs[1][0].run_group == f"long_centered-{sweep.name}"
    assert [r[1]["pooling"]["name"] for r in runs] == ["short", "long"]
    # The sweep ends with one table: a row per job with its overrides, status and the question's numbers.
    table = r.stdout[r.stdout.index(f"sweep {sweep}:"):].splitlines()
    assert table[1].split() == ["#", "overrides", "status", "recall@1", "raw", "->", "centred", "MRR", "raw", "->",
                                "centred", "anisotropy", "raw", "->", "centred", "result", "folder"]
    for row, job, pooling in zip(table[2:], jobs, ("short", "long")):
        assert row.split()[:2] == ["0" if pooling == "short" else "1", f"pooling={pooling}"]
        assert " ok " in row and row.count(" -> ") == 3 and row.endswith(job.name)
        values = json.loads((job / "metrics.json").read_text())["metrics"]
        assert f"{values['eval/mrr/raw/all']:.3f} -> {values['eval/mrr/centered/all']:.3f}" in row
    # Each column marks its best row (every row, when they tie): here the higher centred MRR.
    mrr = [json.loads((j / "metrics.json").read_text())["metrics"]["eval/mrr/centered/all"] for j in jobs]
    assert f"{max(mrr):.3f} *" in table[2 + mrr.index(max(mrr))] and sum(row.count("*") for row in table[2:4]) >= 3


@pytest.mark.slow  # over 7 s: CI (--runslow) runs it; the default run stays under 5 minutes
def test_the_pipeline_loads_the_model_once_and_records_each_variant(tmp_path, monkeypatch):
    loads = []
    real_load = local.load_model
    monkeypatch.setattr(local, "load_model", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    cfg = compose_cfg("+experiment=long_centered", "corpus.max_docs=24", "corpus.shard_size=8", "logger=none",
                      f"paths.artifacts={tmp_path / 'artifacts'}")
    metrics = jobs.run("pipeline", cfg, tmp_path / "run")  # computes the mean, then the CSVs
    assert len(loads) == 1 and metrics["mean/shards_computed"] == 3
    raw = json.loads((tmp_path / "run" / "vectors_long_mode_raw.json").read_text())
    centered = json.loads((tmp_path / "run" / "vectors_long_mode_centered.json").read_text())
    assert raw["centering"] == {"name": "none", "mean": None}
    assert centered["centering"]["mean"]["sha256"] == load_mean(centered["centering"]["mean"]["path"]).sha256


def test_a_pipeline_without_centring_computes_the_raw_variant_alone(tmp_path):
    cfg = compose_cfg("+experiment=short_raw", "logger=none", f"paths.artifacts={tmp_path / 'artifacts'}")
    metrics = jobs.run("pipeline", cfg, tmp_path / "run")
    assert not (tmp_path / "artifacts" / "means").exists() and not any(k.startswith(("mean/", "compare/")) for k in metrics)
    assert sorted(p.name for p in (tmp_path / "run").glob("*.csv")) == ["vectors_short_mode_raw.csv"]
    assert "eval/mrr/raw/all" in metrics and not any("/centered/" in k for k in metrics)


def test_the_sweep_table_marks_the_best_row_of_each_question_metric(tmp_path):
    def record(n, overrides, raw, centred=None):
        metrics = {f"{m}/raw/all": v for m, v in zip(("eval/recall@1", "eval/mrr", "geometry/anisotropy"), raw)}
        if centred:
            metrics |= {f"{m}/centered/all": v
                        for m, v in zip(("eval/recall@1", "eval/mrr", "geometry/anisotropy"), centred)}
        folder = tmp_path / f"{n}_{'+'.join(overrides)}"
        write_json(folder / "metrics.json", {"job": "pipeline", "status": "ok", "overrides": ["+experiment=x", *overrides],
                                             "metrics": metrics, "error": None})

    record(0, ["centering=none"], (0.5, 0.6, 0.4))
    record(1, ["centering=corpus_mean"], (0.5, 0.6, 0.4), (0.8, 0.7, -0.05))
    record(2, ["centering=corpus_mean", "pooling=short"], (0.4, 0.5, 0.3), (0.9, 0.65, 0.2))
    record(3, ["centering=corpus_mean", "pooling=long"], (float("nan"), 0.1, 0.5), (float("nan"), 0.2, 0.6))
    error = "the centring identity fails for sample 03 in chunk exp0.159: check the mean (job=mean) it was centred with"
    write_json(tmp_path / "4_bad" / "metrics.json", {"job": "pipeline", "status": "failed", "overrides": ["+experiment=x"],
                                                      "metrics": {}, "error": error})
    rows = summary_table(tmp_path).splitlines()
    assert "0.100 -> 0.200" in rows[4] and rows[4].count("*") == 0  # a NaN is left out, not compared
    assert "failed" in rows[5] and error in rows[5]  # why a job failed, and its fix, stay in the table
    assert rows[1].split()[:3] == ["0", "centering=none", "ok"] and rows[1].count("->") == 0
    assert "0.800 -> 0.800" not in rows[2] and "0.500 -> 0.800  " in rows[2] and "0.600 -> 0.700 *" in rows[2]
    assert "0.400 -> -0.050 *" in rows[2]  # anisotropy: nearest 0 is best
    assert "0.400 -> 0.900 *" in rows[3] and rows[3].count("*") == 1


def test_an_sts_sweep_row_shows_the_centred_spearman_and_minus_raw_with_their_intervals(tmp_path):
    """A sweep over the mean (corpus.max_docs, centering.min_count) is read in these cells."""
    for n, docs, centred in ((0, 16, 0.21), (1, 256, 0.24)):
        metrics = {"best": f"Spearman x 100 {100 * centred:.2f} (centered, all)", "best_spearman": centred,
                   "sts/spearman/centered/all": centred, "sts/spearman/centered/all/low": centred - 0.02,
                   "sts/spearman/centered/all/high": centred + 0.03, "sts/spearman/centered-raw/all": centred - 0.065,
                   "sts/spearman/centered-raw/all/low": centred - 0.1, "sts/spearman/centered-raw/all/high": centred - 0.03}
        write_json(tmp_path / f"{n}_corpus.max_docs-{docs}" / "metrics.json",
                   {"job": "sts", "status": "ok", "overrides": ["job=sts", f"corpus.max_docs={docs}"], "metrics": metrics})
    rows = summary_table(tmp_path).splitlines()
    assert "(centered, all); centered 21.00 [19.00, 24.00], minus raw 14.50 [11.00, 18.00]  " in rows[1]
    assert "*" not in rows[1]
    assert "Spearman x 100 24.00 (centered, all); centered 24.00 [22.00, 27.00], minus raw 17.50 [14.00, 21.00] *" in rows[2]


def test_an_sts_sweep_with_selection_on_dev_marks_the_row_by_its_choices_dev_score(tmp_path):
    """Under sts.select_on the row's result is the choice made on dev, and the best row (a sweep over
    prompts chooses its prompt so) goes by that choice's dev score: never by a test score."""
    for n, best, selected, dev in ((0, 0.58, 0.55, 0.70), (1, 0.61, 0.57, 0.66)):
        metrics = {"best": f"Spearman x 100 {100 * best:.2f} (whitening, last)", "best_spearman": best,
                   "selected": "centered+whitening, exp0.023", "selected_spearman": selected,
                   "selected_spearman/low": selected - 0.04, "selected_spearman/high": selected + 0.04,
                   "selected_chosen_by": dev}
        write_json(tmp_path / f"{n}_prompt-{n}" / "metrics.json",
                   {"job": "sts", "status": "ok", "overrides": ["job=sts", f"prompt={n}"], "metrics": metrics})
    rows = summary_table(tmp_path).splitlines()
    assert "selected centered+whitening, exp0.023 55.00 [51.00, 59.00] *" in rows[1]
    assert "selected centered+whitening, exp0.023 57.00 [53.00, 61.00]  " in rows[2] and "*" not in rows[2]
    assert rows[-1] == "(* the best row by the score of its choice on the selection pairs)"


@pytest.mark.slow
def test_a_parallel_sweep_on_a_fresh_store_succeeds(tmp_path):
    """Both jobs start the pipeline together and meet on the same mean: they share it."""
    r = run_cli("-m", "+experiment=long_centered", "pooling=short,long", "hydra/launcher=joblib",
                "corpus.max_docs=64", "corpus.shard_size=2", "hardware.threads=1",
                f"paths.artifacts={tmp_path / 'artifacts'}", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    [sweep] = (tmp_path / "multirun" / "long_centered").iterdir()
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(runs) == 2 and all((j / "compare_report.csv").is_file() for j in runs)
    computed = [json.loads((j / "mean.json").read_text()).get("shards_computed", 0) if (j / "mean.json").exists()
                else 0 for j in runs]
    assert sum(computed) == 32  # each shard computed once, by one of the two jobs
    [mean] = (tmp_path / "artifacts").glob("means/*/corpus_mean.safetensors")
    used = {json.loads((j / f"vectors_{m}_mode_centered.json").read_text())["centering"]["mean"]["sha256"]
            for j, m in zip(runs, ("short", "long"))}
    assert used == {load_mean(mean).sha256}
    assert not list((tmp_path / "artifacts").rglob("*.tmp"))


@pytest.mark.slow  # over 10 s: CI (--runslow) runs it; the default run stays under 5 minutes
def test_a_failing_job_does_not_lose_the_others(tmp_path):
    r = run_cli("-m", "job=extract", "text=hello,''", cwd=tmp_path)
    assert r.returncode != 0 and "text is empty" in r.stderr
    summary = r.stdout[r.stdout.index("sweep "):].splitlines()
    assert " ok " in summary[2] and "norm" in summary[2]
    assert " failed " in summary[3] and "text is empty" in summary[3]
    [sweep] = (tmp_path / "multirun" / "extract").iterdir()
    [first] = sweep.glob("0_*")  # texts are kept out of folder names
    assert (first / "vector.safetensors").is_file()
    assert len(list(sweep.glob("*/wandb/offline-run-*"))) == 2  # the failed job closed its run too


def test_logger_none_writes_no_wandb_files(tmp_path):
    r = run_cli("logger=none", "text=hello", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "vector.safetensors").is_file()
    assert not list(tmp_path.rglob("wandb"))


def test_the_csv_job_writes_raw_and_centred_with_a_mean_and_refuses_centred_without_one(tmp_path):
    (tmp_path / "docs").mkdir()
    for i, text in enumerate(["A cat sleeps on the warm windowsill.", "Interest rates rose again this spring."]):
        (tmp_path / "docs" / f"{i}.txt").write_text(text)
    art = [f"paths.artifacts={tmp_path / 'art'}", "corpus=files", f"corpus.path={tmp_path / 'docs'}", "csv.source=corpus",
           "centering.min_count=1", "centering.tail_start=0", "pooling=short", "logger=none"]
    jobs.run("mean", compose_cfg("job=mean", *art), tmp_path / "m")
    jobs.run("csv", compose_cfg("job=csv", "centering=corpus_mean", *art), tmp_path / "both")
    assert sorted(p.name for p in (tmp_path / "both").glob("*.csv")) == ["vectors_short_mode_centered.csv",
                                                                         "vectors_short_mode_raw.csv"]
    jobs.run("csv", compose_cfg("job=csv", *art), tmp_path / "raw")  # centering=none: the raw vectors alone
    assert [p.name for p in (tmp_path / "raw").glob("*.csv")] == ["vectors_short_mode_raw.csv"]
    assert (tmp_path / "raw" / "vectors_short_mode_raw.csv").read_bytes() == \
        (tmp_path / "both" / "vectors_short_mode_raw.csv").read_bytes()
    # Centred vectors without a centring asked for are a contradiction, not a silent default mean.
    with pytest.raises(UserError, match=r"^csv.variants=\[centered\] asks for centred vectors, but centering=none: "
                                        r"add centering=corpus_mean"):
        jobs.run("csv", compose_cfg("job=csv", "csv.variants=[centered]", *art), tmp_path / "none")
    assert not (tmp_path / "none").exists()
