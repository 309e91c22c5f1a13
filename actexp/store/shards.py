"""One check of a shard file, for the mean's sums (means.Stats) and the vector store
(vectors.StoreLayout) alike, wherever its bytes lie: in the local store, or on a Modal volume,
where a CPU function runs this same check next to them (modal_app.check_shards).

A shard is kept only if it is readable, its checksum matches its content, its header says it
belongs to these sums or this store, and it holds the documents asked for. Anything else is
recomputed by the next run.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple


class ShardFiles(Protocol):
    """The shard files of one store: Stats and StoreLayout."""

    def read_shard(self, index: int) -> Optional[Tuple[dict, List[str], Any]]:
        """(header, document ids, content) of shard `index`, or None if it is missing, unreadable or
        its checksum does not match its content."""

    def foreign(self, header: dict) -> Optional[str]:
        """Why a readable shard belongs elsewhere (another store, model or dtype); None if it is ours."""


@dataclass
class Checked:
    header: Optional[dict]  # the shard's header, when it can be kept
    content: Any  # what read_shard gave (sums, or the Arrow table)
    problem: Optional[str]  # why it cannot be kept; None if it can


def check(files: ShardFiles, index: int, doc_ids: Optional[Sequence[str]] = None) -> Checked:
    """Shard `index` checked: readable, its checksum right, ours, and (if given) these documents."""
    read = files.read_shard(index)
    if read is None:
        return Checked(None, None, "is missing, truncated or corrupt (its checksum does not match)")
    header, ids, content = read
    problem = files.foreign(header)
    if problem is None and doc_ids is not None and list(ids or []) != list(doc_ids):
        problem = "holds other documents than this shard's"
    return Checked(None if problem else header, content, problem)


def valid_headers(files: ShardFiles, doc_ids: Dict[int, Sequence[str]]) -> Dict[int, dict]:
    """{index: header} of the shards (index -> their documents) that can be kept; one shard's
    content in memory at a time."""
    valid = {}
    for k, ids in doc_ids.items():
        checked = check(files, k, ids)
        if checked.problem is None:
            valid[k] = checked.header
    return valid
