"""Labelled texts for the retrieval evaluation: the bundled samples (10 long/short partner pairs in
5 topic groups, samples/labels.csv) or a .jsonl file with `text` and `group` fields."""

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ..errors import UserError
from .corpus import SAMPLES_DIR, bundled_samples


@dataclass
class LabelledTexts:
    source: str  # "samples" or the .jsonl path: what the numbers were computed on
    names: List[str]
    texts: List[str]
    groups: List[str]
    partners: Optional[List[Optional[int]]] = None  # index of each text's partner: the one right answer


def samples() -> LabelledTexts:
    docs = bundled_samples()
    with open(SAMPLES_DIR / "labels.csv", newline="", encoding="utf-8") as f:
        labels = {row["name"]: row for row in csv.DictReader(f)}
    names = [d.name for d in docs]
    index = {n: i for i, n in enumerate(names)}
    return LabelledTexts("samples", names, [d.text for d in docs], [labels[n]["group"] for n in names],
                         [index[labels[n]["partner"]] for n in names])


def from_jsonl(path) -> LabelledTexts:
    """One JSON object per line with a string `text` and a `group`; `name` (or `id`) is optional."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path} {'is a folder' if path.is_dir() else 'does not exist'}: give a .jsonl file with one "
                        "{\"text\": ..., \"group\": ...} per line")
    names, texts, groups = [], [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): save it as UTF-8") from None
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {line_no} is not a JSON object ({e}): fix or remove it") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or row.get("group") is None:
            raise UserError(f"{path} line {line_no} needs a string field \"text\" and a field \"group\"")
        names.append(str(row.get("name", row.get("id", f"{path.stem}:{line_no}"))))
        texts.append(row["text"])
        groups.append(str(row["group"]))
    if len(set(groups)) < 2 or len(groups) == len(set(groups)):
        raise UserError(f"{path} needs at least two groups and a group with two texts to evaluate retrieval "
                        f"(it has {len(texts)} texts in {len(set(groups))} groups)")
    return LabelledTexts(str(path), names, texts, groups)
