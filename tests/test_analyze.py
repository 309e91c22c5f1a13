"""job=analyze and job=neighbors end to end: reports that name their inputs, numbers checked against
a brute-force reference on the vectors the csv job writes, W&B summaries and tables read back from
offline runs (a sweep included), a vector store, and bad input."""

import json
import logging

import numpy as np
import pytest

from actexp import jobs
from actexp.backends.local import LocalBackend
from actexp.data.corpus import bundled_samples
from actexp.errors import UserError
from actexp.jobs import neighbors as neighbors_job
from actexp.jobs.common import chunks as chunks_from_cfg
from actexp.jobs.common import corpus_mean
from actexp.store.io import read_vectors_csv
from actexp.store.reader import VectorStore
from helpers import compose_cfg, run_cli, wandb_records, wandb_summary

MEAN = "corpus.max_docs=64"  # the corpus of the fixture's mean: 64 docstrings


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """An artifacts folder with a corpus mean (64 docstrings) and a vector store of the samples."""
    root = tmp_path_factory.mktemp("analyze-art")
    mean = jobs.run("mean", compose_cfg("job=mean", MEAN, f"paths.artifacts={root}"), root)
    metrics = jobs.run("store", compose_cfg("job=store", "corpus=samples", "centering=corpus_mean",
                                            f"centering.mean_path={mean['mean']}", f"paths.artifacts={root}"), root)
    return root, root / "vectors" / metrics["store_id"]


def summary_values(offline):
    """The final W&B summary of an offline run: key -> value."""
    values = {}
    for r in wandb_records(offline):
        if r.WhichOneof("record_type") == "summary":
            values |= {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update}
    return values


def brute_force_partner_recall(x, names):
    """recall@1 of each sample's partner (01 <-> 11 ...) by sorting cosines, loop by loop."""
    hits = 0
    for i, name in enumerate(names):
        partner = next(j for j, m in enumerate(names) if m != name and int(m[:2]) % 10 == int(name[:2]) % 10)
        cos = [float(x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j])) if j != i else -2.0
               for j in range(len(names))]
        hits += max(range(len(names)), key=lambda j: cos[j]) == partner
    return hits / len(names)


def brute_force_partner_ranks(x, names):
    """Each sample's partner's rank among the 19 others by cosine (a tie counts against it), loop by loop."""
    out = []
    for i, name in enumerate(names):
        partner = next(j for j, m in enumerate(names) if m != name and int(m[:2]) % 10 == int(name[:2]) % 10)
        cos = [float(x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j])) for j in range(len(names))]
        out.append(1 + sum(cos[j] >= cos[partner] for j in range(len(names)) if j not in (i, partner)))
    return np.array(out)


def loop_interval(values, boot):
    """The percentile interval of the mean of `values` over the resamples a record names, unit by unit."""
    rng = np.random.default_rng(boot["seed"])
    means = [np.mean(values[rng.integers(0, len(values), len(values))]) for _ in range(boot["resamples"])]
    return list(np.quantile(means, [(1 - boot["level"]) / 2, (1 + boot["level"]) / 2]))


@pytest.fixture(scope="module")
def analysed(art, tmp_path_factory):
    root, _ = art
    out = tmp_path_factory.mktemp("analyze-run")
    r = run_cli("job=analyze", "centering=corpus_mean", f"paths.artifacts={root}", MEAN, "text=a private note", cwd=out)
    assert r.returncode == 0, r.stderr
    [run_dir] = (out / "experiments" / "analyze").iterdir()
    return run_dir, r.stdout


def test_the_report_names_what_each_number_was_computed_on(analysed):
    run_dir, stdout = analysed
    report = json.loads((run_dir / "analysis.json").read_text())
    assert report["source"] == {"kind": "samples", "path": "samples", "texts": 20, "groups": 5, "retrieval": "partner"}
    assert report["centering"]["mean"]["sha256"] and report["model"]["model"] == "tiny"
    records = report["results"]
    chunks = {"all", "last", "exp0.023", "exp0.067", "exp0.159"}
    for metric in ("recall@1", "recall@5", "mrr", "margin", "anisotropy", "rogue_share", "pc1_share", "pcs_for_90"):
        for variant in ("raw", "centered"):
            assert {r["chunk"] for r in records if (r["metric"], r["variant"]) == (metric, variant)} == chunks
    assert all(r["texts"] == 20 and r["source"] == "samples" for r in records)
    assert "retrieval of each text's partner: recall@1 raw" in stdout and "anisotropy" in stdout
    assert (run_dir / "analysis_projection.png").stat().st_size > 10_000


def test_recall_equals_a_brute_force_count_on_the_csv_jobs_vectors(art, analysed, tmp_path, caplog):
    root, _ = art
    run_dir, _ = analysed
    jobs.run("csv", compose_cfg("job=csv", "centering=corpus_mean", "csv.variants=[raw,centered]",
                                f"paths.artifacts={root}", MEAN), tmp_path)
    report = json.loads((run_dir / "analysis.json").read_text())
    results, boot = report["results"], report["bootstrap"]
    assert boot == {"method": "percentile", "unit": "queries", "resamples": 1000, "seed": 0, "level": 0.95}
    reciprocal = {}
    for variant in ("raw", "centered"):
        x, names, _ = read_vectors_csv(tmp_path / f"vectors_long_mode_{variant}.csv")
        mine = next(r["value"] for r in results if (r["metric"], r["variant"], r["chunk"]) == ("recall@1", variant, "all"))
        assert mine == brute_force_partner_recall(x.astype(np.float64), names)
        # MRR with its interval: the resamples of the 20 queries made again from the recorded seed.
        reciprocal[variant] = 1.0 / brute_force_partner_ranks(x.astype(np.float64), names)
        [mrr] = [r for r in results if (r["metric"], r["variant"], r["chunk"]) == ("mrr", variant, "all")]
        assert mrr["value"] == pytest.approx(reciprocal[variant].mean(), abs=1e-12)
        assert mrr["interval"] == pytest.approx(loop_interval(reciprocal[variant], boot), abs=1e-12)
        assert mrr["chance"] == pytest.approx(sum(1 / k for k in range(1, 20)) / 19, abs=1e-12)  # H_19 / 19
    [diff] = [d for d in report["differences"] if (d["metric"], d["chunk"]) == ("mrr", "all")]
    assert (diff["variant"], diff["minus"]) == ("centered", "raw")
    assert diff["interval"] == pytest.approx(loop_interval(reciprocal["centered"] - reciprocal["raw"], boot), abs=1e-12)
    # The same analysis from those CSVs (source=csv) gives the same numbers.
    jobs.run("analyze", compose_cfg("job=analyze", "analyze.source=csv", f"paths.artifacts={root}", MEAN,
                                    f"analyze.csvs=[{tmp_path}/vectors_long_mode_raw.csv,{tmp_path}/vectors_long_mode_centered.csv]"),
             tmp_path)
    again = json.loads((tmp_path / "analysis.json").read_text())["results"]
    # Within float32's batch dependence: the analysis ran one more text ("a private note") than the csv
    # job, so the packs differ and each vector moves by up to ~1e-7 (README, "How a vector is computed").
    assert [r["value"] for r in again] == pytest.approx([r["value"] for r in results], abs=1e-6)
    # CSVs of another model (here: block 0 alone) beside these are refused by analyze, named by the
    # field that differs; visualize draws them side by side, each panel naming its model, and warns.
    other = tmp_path / "other"
    jobs.run("csv", compose_cfg("job=csv", "model.layers=[0]", f"paths.artifacts={root}", MEAN), other)
    mixed = f"[{other}/vectors_long_mode_raw.csv,{tmp_path}/vectors_long_mode_centered.csv]"
    with pytest.raises(UserError, match=r"were made differently: model.layers \(\[0\] vs \"all\"\)"):
        jobs.run("analyze", compose_cfg("job=analyze", "analyze.source=csv", f"analyze.csvs={mixed}"), tmp_path / "a")
    with caplog.at_level(logging.WARNING):
        jobs.run("visualize", compose_cfg("job=visualize", f"visualize.csvs={mixed}"), tmp_path / "v")
    assert "were made differently: model.layers" in caplog.text


def test_wandb_gets_numeric_summaries_tables_and_no_raw_text(analysed):
    run_dir, _ = analysed
    [offline] = (run_dir / "wandb").glob("offline-run-*")
    values = summary_values(offline)
    report = json.loads((run_dir / "analysis.json").read_text())["results"]
    r = next(r for r in report if (r["metric"], r["variant"], r["chunk"]) == ("recall@1", "centered", "all"))
    assert values["eval/recall@1/centered/all"] == r["value"]
    assert isinstance(values["geometry/anisotropy/raw/exp0.067"], float)
    [table] = (offline / "files" / "media" / "table").glob("analysis_*.table.json")
    data = json.loads(table.read_text())
    assert data["columns"] == ["metric", "variant", "chunk", "value", "low", "high", "texts"]
    assert all(isinstance(row[3], float) and isinstance(row[6], int) for row in data["data"])
    low, high = next(row[4:6] for row in data["data"] if row[:3] == ["mrr", "raw", "all"])
    assert [low, high] == [values["eval/mrr/raw/all/low"], values["eval/mrr/raw/all/high"]] and low < high
    [vectors] = (offline / "files" / "media" / "table").glob("vectors_*.table.json")
    assert len(json.loads(vectors.read_text())["data"][0][3]) == 512  # the projector's vector column
    _, config, _ = wandb_summary(offline)
    assert config["text"]["chars"] == len("a private note") and "private" not in json.dumps(config)


@pytest.mark.slow  # over 7 s: CI (--runslow) runs it; the default run stays under 5 minutes
def test_the_text_goes_into_the_run_config_only_when_asked(tmp_path):
    r = run_cli("job=extract", "text=a private note", "logger.log_texts=true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    [offline] = tmp_path.glob("experiments/extract/*/wandb/offline-run-*")
    assert wandb_summary(offline)[1]["text"] == "a private note"


@pytest.mark.slow
def test_a_sweep_over_pooling_and_centring_compares_in_wandb(art, tmp_path):
    root, _ = art
    r = run_cli("-m", "job=analyze", "pooling=short,long", "centering=none,corpus_mean", "analyze.log_vectors=false",
                f"paths.artifacts={root}", MEAN, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    [sweep] = (tmp_path / "multirun" / "analyze").iterdir()
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(runs) == 4
    seen = set()
    for run_dir in runs:
        [offline] = (run_dir / "wandb").glob("offline-run-*")
        run, config, _ = wandb_summary(offline)
        values = summary_values(offline)
        pooling, centring = config["pooling"]["name"], config["centering"]["name"]
        seen.add((pooling, centring))
        assert run.run_group == f"analyze-{sweep.name}"
        assert isinstance(values["eval/recall@1/raw/all"], float) and "eval/mrr/raw/exp0.067" in values
        assert ("eval/recall@1/centered/all" in values) == (centring == "corpus_mean")
        assert ("geometry/anisotropy/raw/last" in values) == (pooling == "long")
    assert seen == {(p, c) for p in ("short", "long") for c in ("none", "corpus_mean")}


def test_a_store_gives_geometry_of_a_sample_of_its_rows(art, tmp_path):
    root, store_dir = art
    jobs.run("analyze", compose_cfg("job=analyze", "analyze.source=store", f"analyze.path={store_dir}",
                                    "analyze.max_rows=12", "logger=none"), tmp_path)
    report = json.loads((tmp_path / "analysis.json").read_text())
    assert report["source"]["kind"] == "store" and report["source"]["rows_sampled"] == 12
    assert report["source"]["rows"] == 20 and report["source"]["retrieval"] is None
    assert {r["metric"] for r in report["results"]} == {"anisotropy", "rogue_share", "pc1_share", "pcs_for_90"}
    assert {r["variant"] for r in report["results"]} == {"raw", "centered"}
    assert all(r["source"] == str(store_dir) and r["texts"] == 12 for r in report["results"])
    # Every row (max_rows >= rows): the numbers of the store's vectors, computed here with an SVD.
    jobs.run("analyze", compose_cfg("job=analyze", "analyze.source=store", f"analyze.path={store_dir}",
                                    "analyze.max_rows=50", "logger=none"), tmp_path)
    results = json.loads((tmp_path / "analysis.json").read_text())["results"]
    store = VectorStore.open(store_dir)
    for variant in ("raw", "centered"):
        x = store.vectors(variant=variant).astype(np.float64)  # [20, D]
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        cos = u @ u.T
        s = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
        expected = {"anisotropy": (cos.sum() - np.trace(cos)) / (20 * 19), "pc1_share": s[0] / s.sum(),
                    "pcs_for_90": int(np.argmax(np.cumsum(s) / s.sum() >= 0.9)) + 1}
        got = {r["metric"]: r["value"] for r in results if r["variant"] == variant and r["chunk"] == "all"}
        assert got["anisotropy"] == pytest.approx(expected["anisotropy"], abs=1e-9)
        assert got["pc1_share"] == pytest.approx(expected["pc1_share"], abs=1e-9)
        assert got["pcs_for_90"] == expected["pcs_for_90"]


def test_neighbours_of_store_rows_equal_a_full_sort(art, tmp_path, caplog):
    root, store_dir = art
    store = VectorStore.open(store_dir)
    ids = store.ids[:2]
    caplog.set_level(logging.INFO)
    jobs.run("neighbors", compose_cfg("job=neighbors", f"neighbors.store={store_dir}", f"neighbors.ids=[{ids[0]},{ids[1]}]",
                                      "neighbors.k=4", "neighbors.block_rows=3", "logger=none"), tmp_path)
    found = json.loads((tmp_path / "neighbors.json").read_text())["neighbors"]
    for variant in ("raw", "centered"):
        x = store.vectors(variant=variant).astype(np.float64)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        for q, doc_id in enumerate(ids):
            expected = [j for j in np.argsort(-(x @ x[q]), kind="stable") if j != q][:4]
            mine = [r for r in found if r["query"] == doc_id and r["variant"] == variant]
            assert [r["row"] for r in mine] == expected and [r["rank"] for r in mine] == [1, 2, 3, 4]
            assert mine[0]["cosine"] == pytest.approx(float(x[expected[0]] @ x[q]), abs=1e-6)
    assert (tmp_path / "neighbors.csv").read_text().count("\n") == 1 + 2 * 2 * 4
    # The table on stdout names a query by id by its document's name, and shows names whole.
    assert f"query '{store.names[0]} (id {ids[0]})'" in caplog.text
    long = [{"query": "q", "variant": v, "name": "a document name much longer than thirty-four characters",
             "cosine": 0.5} for v in ("raw", "centered")]
    assert "a document name much longer than thirty-four characters" in neighbors_job._side_by_side(
        long, ["q"], ["q"], ["raw", "centered"])


def test_text_queries_find_the_sample_they_paraphrase(art, tmp_path):
    root, _ = art
    cat = "Pilot the grey tabby greets Mara at the door and chases his sister Juniper down the hallway."
    jobs.run("neighbors", compose_cfg("job=neighbors", f"neighbors.queries=[{cat!r}]", "neighbors.k=20",
                                      f"paths.artifacts={root}", MEAN, "centering=corpus_mean", "logger=none"), tmp_path)
    found = json.loads((tmp_path / "neighbors.json").read_text())["neighbors"]
    assert {r["variant"] for r in found} == {"raw", "centered"} and len(found) == 40
    assert all(r["name"] == r["id"] for r in found)  # among the samples: ids are names
    # The order is that of the cosines computed here, row by row, with numpy.
    cfg = compose_cfg("centering=corpus_mean", f"paths.artifacts={root}", MEAN)
    samples = bundled_samples()
    out = LocalBackend.from_config(cfg).vectors([cat] + [d.text for d in samples], chunks_from_cfg(cfg.pooling),
                                                corpus_mean(cfg)).by_variant()
    for variant, x in out.items():
        x = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
        cosines = x[1:] @ x[0]
        expected = [samples[i].name for i in np.argsort(-cosines, kind="stable")]
        mine = sorted((r for r in found if r["variant"] == variant), key=lambda r: r["rank"])
        assert [r["name"] for r in mine] == expected
        assert np.allclose([r["cosine"] for r in mine], np.sort(cosines)[::-1], atol=1e-5)


def test_bad_queries_and_sources_are_one_line(art, tmp_path):
    root, store_dir = art
    with pytest.raises(UserError, match="not in the store"):
        jobs.run("neighbors", compose_cfg("job=neighbors", f"neighbors.store={store_dir}", "neighbors.ids=[nope]"), tmp_path)
    with pytest.raises(UserError, match="another model or pooling"):
        jobs.run("neighbors", compose_cfg("job=neighbors", f"neighbors.store={store_dir}", "pooling=short",
                                          "neighbors.queries=[hello]"), tmp_path)
    raw = jobs.run("store", compose_cfg("job=store", "corpus=samples", f"paths.artifacts={root}"), tmp_path)
    with pytest.raises(UserError, match="raw vectors only"):
        jobs.run("neighbors", compose_cfg("job=neighbors", f"neighbors.store={root / 'vectors' / raw['store_id']}",
                                          "centering=corpus_mean", f"paths.artifacts={root}", MEAN, "neighbors.queries=[hi]"),
                 tmp_path)
    with pytest.raises(UserError, match="needs queries"):
        jobs.run("neighbors", compose_cfg("job=neighbors"), tmp_path)
    labels = tmp_path / "one_group.jsonl"
    labels.write_text('{"text": "a", "group": "x"}\n{"text": "b", "group": "x"}\n')
    r = run_cli("job=analyze", "analyze.source=jsonl", f"analyze.path={labels}", "logger=none", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "at least two groups" in r.stderr
    assert not list(tmp_path.glob("experiments/analyze/*"))  # no run folder left


def test_a_jsonl_of_groups_retrieves_any_member(tmp_path):
    rows = [("The cat purrs on the sofa.", "cats"), ("A kitten chases a ball of wool.", "cats"),
            ("Interest rates rose again this quarter.", "money"), ("The bank lowered its lending rate.", "money"),
            ("Inflation slowed in the spring.", "money")]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps({"text": t, "group": g}) + "\n" for t, g in rows))
    jobs.run("analyze", compose_cfg("job=analyze", "analyze.source=jsonl", f"analyze.path={path}", "logger=none"), tmp_path)
    report = json.loads((tmp_path / "analysis.json").read_text())
    assert report["source"]["retrieval"] == "group" and report["source"]["groups"] == 2
    assert next(r for r in report["results"] if r["metric"] == "recall@1")["queries"] == 5
    assert report["texts"][0] == {"name": "labels:1", "group": "cats"}


def test_a_labelled_file_that_is_not_utf8_or_is_a_folder_is_one_line(tmp_path):
    from actexp.data.labelled import from_jsonl

    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"text": "caf\xe9", "group": "a"}\n'.encode("latin-1"))
    with pytest.raises(UserError, match=r"latin.jsonl is not UTF-8 text \(invalid continuation byte at byte 13\): "
                                        "save it as UTF-8"):
        from_jsonl(latin)
    with pytest.raises(UserError, match=f"{tmp_path} is a folder: give a .jsonl file"):
        from_jsonl(tmp_path)
