"""Document sources for the corpus mean and the sample jobs.

Every source yields documents in a fixed order, each with a stable id (a hash of its text);
repeated texts are kept once, `max_docs` cuts the stream, and `shard_size` splits it into
shards, so the same config always gives the same shards.

- `stdlib_docs` (default, offline): docstrings of the running Python's standard library, real
  English prose that every Python installation carries, so no download is needed.
- `samples`: the texts bundled in actexp/samples/.
- `files`: a folder or glob of .txt/.md files, or a .jsonl file with a text field.
- `hf`: a Hugging Face dataset, streamed (needs network and `pip install datasets`).
"""

import ast
import contextlib
import functools
import glob
import hashlib
import json
import logging
import platform
import sysconfig
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from ..errors import UserError
from ..progress import progress
from ..store.io import write_json
from .inputs import decode_text

log = logging.getLogger(__name__)

SAMPLES_DIR = Path(__file__).parent.parent / "samples"
TEXT_SUFFIXES = (".txt", ".md")
SOURCES = ("stdlib_docs", "samples", "files", "hf")


@dataclass(frozen=True)
class Document:
    id: str  # first 16 hex digits of the text's sha256
    name: str  # where it came from: a file name, module:function, dataset row
    text: str


def doc_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def python_docs(min_chars: int = 0) -> Iterator[Document]:
    """Docstrings of modules, classes and functions of the standard library, in a fixed order."""
    return iter(_python_docs(min_chars))


@functools.lru_cache(maxsize=2)
def _python_docs(min_chars: int) -> List[Document]:  # parsing the stdlib takes seconds: once per process
    return list(_parse_python_docs(min_chars))


def _stdlib_files() -> List[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [p for p in sorted(root.rglob("*.py")) if "test" not in p.parts and "site-packages" not in p.parts]


def _parse_python_docs(min_chars: int) -> Iterator[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in progress(_stdlib_files(), desc="reading the standard library's docstrings", unit="file"):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = path.relative_to(root).with_suffix("").as_posix().replace("/", ".")
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    name = module if isinstance(node, ast.Module) else f"{module}:{node.name}"
                    yield Document(doc_id(doc), name, doc)


_skipped = set()  # files already warned about: a run reads a corpus twice (its scan, then its extraction)


def _read_file(path: Path) -> Optional[str]:
    """A text file's content, or None (with a warning naming it, once per process) if it is not UTF-8 text."""
    try:
        return decode_text(path.read_bytes())
    except ValueError as e:
        if str(path) not in _skipped:
            _skipped.add(str(path))
            log.warning("skipping %s: %s", path, e)
        return None


def _text_paths(pattern: str) -> List[Path]:
    """The files a folder (searched recursively for .txt/.md), a glob, or a single file means, in order."""
    path = Path(pattern).expanduser()
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
    if path.is_file():
        return [path]
    paths = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not paths:
        raise UserError(f"corpus.path={pattern} matches no file: give a folder, a glob or a .jsonl file")
    return paths


def text_files(pattern: str) -> Iterator[Document]:
    """A folder (searched recursively for .txt/.md), a glob, or a single text file, in path order."""
    path = Path(pattern).expanduser()
    for p in _text_paths(pattern):
        text = _read_file(p)
        if text is not None:
            yield Document(doc_id(text), str(p.relative_to(path)) if path.is_dir() else p.name, text)


def jsonl_docs(path: Path, text_field: str) -> Iterator[Document]:
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise UserError(f"{path} line {line_no} is not a UTF-8 JSON object ({e}): fix or remove it") from None
            text = row.get(text_field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise UserError(f"{path} line {line_no} has no string field {text_field!r}: set corpus.text_field")
            yield Document(doc_id(text), f"{path.name}:{line_no}", text)


def hf_docs(name: str, split: str, text_field: str) -> Iterator[Document]:
    from ..models.hub import hub_reachable

    if not hub_reachable():
        raise UserError(f"corpus=hf cannot reach the Hugging Face hub to stream {name!r}: "
                        "use corpus=stdlib_docs (offline) or corpus=files corpus.path=DIR")
    try:
        import datasets
    except ImportError:
        raise UserError("corpus=hf needs the datasets package: pip install datasets") from None
    try:
        rows = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as e:  # datasets raises many types for a wrong name or split
        raise UserError(f"cannot load dataset {name!r} split {split!r}: {str(e).splitlines()[0]}") from None
    for i, row in enumerate(rows):
        text = row.get(text_field)
        if not isinstance(text, str):
            raise UserError(f"dataset {name!r} row {i} has no string field {text_field!r}: set corpus.text_field")
        yield Document(doc_id(text), f"{name}:{split}:{i}", text)


def bundled_samples() -> List[Document]:
    """The bundled samples in file order, named by file stem (01_topic)."""
    return [Document(d.id, Path(d.name).stem, d.text) for d in text_files(str(SAMPLES_DIR))]


class Corpus:
    """The documents named by a `corpus` config group.

    Its id reads as name, source and limit, and ends with a hash of the config and of the
    documents' own ids in order (a hash of their texts), so an edited, added or removed file gives
    a new id. It names the documents only: how they are cut into shards belongs to what is made
    of them (the mean's sums, a vector store). A streamed Hugging Face dataset is identified by
    name, split and limit only: hashing it would mean downloading it.
    """

    def __init__(self, cfg, id_cache: Optional[Path] = None):
        self.cfg, self.id_cache = cfg, id_cache  # id_cache: where scans are kept (the artifact store's hashes/)
        if cfg.shard_size < 1:
            raise UserError(f"corpus.shard_size must be at least 1, got {cfg.shard_size}")
        if cfg.source not in SOURCES:
            raise UserError(f"unknown corpus.source {cfg.source!r}: use {', '.join(SOURCES)}")
        if cfg.source == "files" and not cfg.path:
            raise UserError("corpus=files needs corpus.path=DIR, a glob, or a .jsonl file")

    @functools.cached_property
    def id(self) -> str:
        cfg = self.cfg
        source = {
            "stdlib_docs": f"py{platform.python_version()}-min{cfg.min_chars}",
            "samples": "bundled",
            "files": Path(cfg.path or ".").expanduser().name or "root",
            "hf": f"{cfg.dataset}-{cfg.split}".replace("/", "_"),
        }[cfg.source]
        key = json.dumps([cfg.source, str(Path(cfg.path).expanduser().resolve()) if cfg.path else None,
                          cfg.dataset, cfg.split, cfg.text_field, cfg.min_chars, cfg.max_docs,
                          None if cfg.source == "hf" else self._scan[1]])
        limit = f"n{cfg.max_docs}" if cfg.max_docs else "all"
        return f"{cfg.name}-{source}-{limit}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"

    @functools.cached_property
    def _scan(self) -> Tuple[int, str]:
        """(number of documents, sha256 of their ids in order): one pass over the source, kept in
        id_cache under a key of the settings and of every source file's path, size, mtime, ctime and
        inode, so that any write to a file (or another file) scans again and nothing else does."""
        entry = self._scan_entry()
        if entry is not None and entry.is_file():
            with contextlib.suppress(OSError, ValueError, TypeError):  # unreadable: scan again
                n, digest = json.loads(entry.read_text())
                return int(n), str(digest)
        h, n = hashlib.sha256(), 0
        for doc in progress(self.documents(), desc=f"scanning corpus {self.cfg.name}", unit="doc"):
            h.update(doc.id.encode())
            n += 1
        if entry is not None:
            with contextlib.suppress(OSError, UserError):  # a read-only store: scan again next time
                write_json(entry, [n, h.hexdigest()])
        return n, h.hexdigest()

    def _scan_entry(self) -> Optional[Path]:
        """The cache file of this corpus's scan, or None (no cache, or a streamed dataset)."""
        cfg = self.cfg
        if self.id_cache is None or cfg.source == "hf":
            return None
        try:
            if cfg.source == "stdlib_docs":
                files = _stdlib_files()
            elif cfg.source == "samples":
                files = _text_paths(str(SAMPLES_DIR))
            else:
                path = Path(cfg.path).expanduser()
                files = [path] if path.suffix == ".jsonl" and path.is_file() else _text_paths(cfg.path)
            stats = [(str(f.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                     for f, st in ((f, f.stat()) for f in files)]
        except (OSError, UserError):
            return None  # the scan itself says what is wrong
        key = [platform.python_version(), cfg.source, cfg.text_field, cfg.min_chars, cfg.max_docs, stats]
        return Path(self.id_cache) / f"corpus-{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]}.json"

    def _source(self) -> Iterator[Document]:
        cfg = self.cfg
        if cfg.source == "stdlib_docs":
            return python_docs(cfg.min_chars)
        if cfg.source == "samples":
            return text_files(str(SAMPLES_DIR))
        if cfg.source == "hf":
            return hf_docs(cfg.dataset, cfg.split, cfg.text_field)
        path = Path(cfg.path).expanduser()
        if path.suffix == ".jsonl" and path.is_file():
            return jsonl_docs(path, cfg.text_field)
        if not path.exists() and not glob.has_magic(cfg.path):
            raise UserError(f"corpus.path={cfg.path} does not exist: give a folder, a glob or a .jsonl file")
        return text_files(cfg.path)

    def documents(self) -> Iterator[Document]:
        """Non-empty documents, each text once, at most max_docs, in a fixed order."""
        seen = set()

        def unique():
            for doc in self._source():
                if doc.text.strip() and doc.id not in seen and len(doc.text) >= self.cfg.min_chars:
                    seen.add(doc.id)
                    yield doc

        return islice(unique(), self.cfg.max_docs) if self.cfg.max_docs else unique()

    def count(self) -> Optional[int]:
        """How many documents there are, or None for a streamed dataset (counting would download it)."""
        return None if self.cfg.source == "hf" else self._scan[0]

    def shards(self, size: Optional[int] = None) -> Iterator[List[Document]]:
        """Consecutive groups of `size` (default corpus.shard_size) documents; the last may be shorter."""
        docs = self.documents()
        while shard := list(islice(docs, size or self.cfg.shard_size)):
            yield shard
