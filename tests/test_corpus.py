import json
import logging

import pytest

from actexp.data.corpus import Corpus, bundled_samples, doc_id
from actexp.errors import UserError
from helpers import compose_cfg


def corpus(*overrides):
    return Corpus(compose_cfg(*overrides).corpus)


def test_builtin_corpus_is_large_deterministic_and_offline():
    c = corpus()
    docs = list(c.documents())
    assert len(docs) >= 500
    assert len({d.id for d in docs}) == len(docs)  # each text once
    assert all(len(d.text) >= 400 and d.id == doc_id(d.text) for d in docs)
    assert [d.id for d in corpus().documents()] == [d.id for d in docs]
    shards = list(corpus("corpus.max_docs=150", "corpus.shard_size=64").shards())
    assert [len(s) for s in shards] == [64, 64, 22]
    assert [d.id for s in shards for d in s] == [d.id for d in docs[:150]]


def test_corpus_ids_differ_with_what_determines_the_documents():
    ids = {corpus(*o).id for o in ([], ["corpus.max_docs=10"], ["corpus=samples"])}
    assert len(ids) == 3
    assert corpus().id == corpus().id and corpus().id.startswith("stdlib_docs-py")
    # How the documents are cut into shards is not what they are: a store's id stays put.
    assert corpus("corpus.shard_size=8").id == corpus().id


def test_bundled_samples_are_10_long_and_10_short():
    samples = bundled_samples()
    assert len(samples) == 20 and samples[0].name.startswith("01_")
    words = [len(s.text.split()) for s in samples]
    assert sum(w > 300 for w in words) == 10 and sum(w < 40 for w in words) == 10
    assert corpus("corpus=samples").count() == 20


def test_files_folder_glob_and_jsonl(tmp_path, caplog):
    (tmp_path / "b.txt").write_text("second text")
    (tmp_path / "a.md").write_text("first text")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third text")
    (tmp_path / "dup.txt").write_text("first text")  # same text as a.md: kept once
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "skip.csv").write_text("not, a, text file")
    with caplog.at_level(logging.WARNING):
        files = corpus("corpus=files", f"corpus.path={tmp_path}")
        assert files.count() == 3  # the scan, then the extraction read the folder: one warning
        docs = list(files.documents())
    assert [d.name for d in docs] == ["a.md", "b.txt", "sub/c.txt"]
    assert caplog.text.count("latin1.txt") == 1 and "not UTF-8" in caplog.text
    assert [d.name for d in corpus("corpus=files", f"corpus.path={tmp_path}/*.txt").documents()] == ["b.txt", "dup.txt"]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"body": t}) for t in ["x one", "x two"]) + "\n")
    docs = list(corpus("corpus=files", f"corpus.path={rows}", "corpus.text_field=body").documents())
    assert [d.text for d in docs] == ["x one", "x two"]
    with pytest.raises(UserError, match="no string field 'text'"):
        list(corpus("corpus=files", f"corpus.path={rows}").documents())


def test_files_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        list(corpus("corpus=files", f"corpus.path={tmp_path / 'nope'}").documents())
    with pytest.raises(UserError, match="matches no file"):
        list(corpus("corpus=files", f"corpus.path={tmp_path}/*.txt").documents())


def test_hf_dataset_without_network_fails_fast():
    c = corpus("corpus=hf", "corpus.dataset=some/dataset")
    assert c.count() is None
    with pytest.raises(UserError, match="cannot reach the Hugging Face hub|pip install datasets"):
        list(c.documents())


def test_a_corpus_scan_is_kept_until_one_of_its_files_is_written(tmp_path):
    import os

    docs, cache = tmp_path / "docs", tmp_path / "hashes"
    docs.mkdir()
    for i in range(3):
        (docs / f"{i}.txt").write_text(f"text number {i}")
    files = ["corpus=files", f"corpus.path={docs}"]
    first = Corpus(compose_cfg(*files).corpus, cache).id
    assert first == Corpus(compose_cfg(*files).corpus).id  # the id a scan without a cache gives
    [entry] = cache.glob("corpus-*.json")
    assert json.loads(entry.read_text())[0] == 3
    entry.write_text(json.dumps([3, "0" * 64]))  # a later run reads what was kept instead of the files
    assert Corpus(compose_cfg(*files).corpus, cache).id != first
    st = (docs / "1.txt").stat()
    (docs / "1.txt").write_text("text number 7")  # same size, its modification time set back
    os.utime(docs / "1.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    edited = Corpus(compose_cfg(*files).corpus, cache).id
    assert edited != first and edited == Corpus(compose_cfg(*files).corpus).id
