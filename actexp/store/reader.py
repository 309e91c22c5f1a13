"""Read a vector store written by job=store, from Python, without loading it.

    from actexp.store.reader import VectorStore
    store = VectorStore.open("~/.cache/actexp/vectors/<store-id>")
    len(store), store.dims, store.variants          # from manifest.json alone
    store.metadata()                                  # id, name, n_tokens, truncated (pyarrow Table)
    store.vectors(slice(1000, 2000))                  # float32 numpy [1000, D], memory-mapped shards
    store.vectors(ids=["3f2a...", "9c1e..."], variant="centered", to="torch")

Opening reads the manifest only; ids and metadata read the shards' small columns; vectors read
only the rows asked for (shards are memory-mapped Arrow files, see vectors.py).

What is read is verified first: each record batch a read touches (its small columns, or the
variant asked for) against its checksum in manifest.json, once per reader; a shard of an older
store, whose manifest has no batch checksums, against its whole sha256 the first time it is read.
A damaged or unreadable shard is one UserError naming the file and the command that recomputes it.
"""

import functools
import json
import os
import shlex
from pathlib import Path
from typing import Dict, List, Optional, Protocol, Sequence, Union

import numpy as np
import pyarrow as pa

from ..errors import UserError
from . import vectors as vs
from .layout import MANIFEST


class Rows(Protocol):
    """Rows of vectors with ids, as job=neighbors searches them: a VectorStore, or the bundled samples
    held in memory (jobs/neighbors.Samples)."""

    folder: Path
    manifest: dict  # the metadata the rows were made with (model, pooling, centering)
    ids: List[str]
    names: List[str]
    variants: List[str]

    def __len__(self) -> int: ...

    def rows_of(self, ids: Sequence[str]) -> np.ndarray: ...

    def vectors(self, rows, variant: str = "raw") -> np.ndarray: ...


class VectorStore(Rows):
    def __init__(self, folder: Path, manifest: dict):
        self.folder, self.manifest = folder, manifest
        self._tables = {}  # shard index -> memory-mapped table, opened on first use
        self._verified = set()  # (shard, group, batch) whose checksum matched: each is hashed once
        self._views = {}  # (shard, variant, batch) -> its vectors [rows, D], verified
        self._starts = np.cumsum([0] + [s["rows"] for s in manifest["shards"]])  # first row of each shard

    @classmethod
    def open(cls, path) -> "VectorStore":
        """A store folder (with manifest.json), or the manifest itself."""
        folder = Path(path).expanduser()
        folder = folder.parent if folder.name == MANIFEST else folder
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            if not {"shards", "dims", "variants", "location"} <= manifest.keys():
                raise ValueError
        except (OSError, ValueError, AttributeError):
            raise UserError(f"{folder} is not a finished vector store (no readable {MANIFEST}): "
                            "run job=store to write it, or give the folder that holds manifest.json") from None
        return cls(folder, manifest)

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def dims(self) -> int:
        return self.manifest["dims"]

    @property
    def variants(self) -> List[str]:
        return list(self.manifest["variants"])

    @property
    def remote(self) -> bool:
        """True when the shards were kept on a Modal volume (store.download=false)."""
        return self.manifest["location"] != "local"

    def _shard(self, k: int) -> pa.Table:
        """Shard k's table, memory-mapped once per reader (kept with the reader, freed with it: an
        lru_cache on the method would keep every reader and its maps alive)."""
        if self.remote:
            raise UserError(f"the shards of {self.folder.name} are on {self.manifest['location']}: download them "
                            "with the same job=store command and store.download=true")
        if k not in self._tables:
            entry = self.manifest["shards"][k]
            try:
                table = vs.open_shard(self.folder / entry["file"])
                dtype = self.manifest.get("storage_dtype", "float32")
                problem = vs.schema_problem(table, self.variants, self.dims, dtype)
                if problem is None and vs.BATCH_CHECKSUM in entry:
                    problem = vs.batches_problem(table, entry)
                elif problem is None:  # an older store: the whole shard, once
                    table.validate(full=True)
                    if vs.table_sha256(table) != entry["sha256"]:
                        problem = "its content does not match its sha256 in manifest.json"
            except FileNotFoundError:
                raise self._damaged(k, "is missing") from None
            except (OSError, pa.ArrowException, ValueError, IndexError) as e:
                raise self._damaged(k, f"is unreadable ({e})") from None
            if problem:
                raise self._damaged(k, f"is damaged: {problem}")
            self._tables[k] = table
        return self._tables[k]

    def _batch(self, k: int, group: str, b: int) -> pa.Table:
        """Shard k's table, once batch b of the column group (vectors.GROUPS) matched its checksum."""
        table = self._shard(k)
        entry = self.manifest["shards"][k]
        if vs.BATCH_CHECKSUM in entry and (k, group, b) not in self._verified:
            try:
                ok = vs.batch_checksum(table, group, b) == entry[vs.BATCH_CHECKSUM][group][b]
            except (pa.ArrowException, ValueError, IndexError, KeyError) as e:
                raise self._damaged(k, f"is unreadable ({e})") from None
            if not ok:
                start = b * entry["batch_rows"]
                rows = f"rows {start}-{min(start + entry['batch_rows'], entry['rows']) - 1}"
                what = {"meta": "ids, names and token counts", "raw": "raw vectors", "centered": "centred vectors"}
                raise self._damaged(k, f"is damaged: the {what[group]} of its {rows} do not match their checksum "
                                       "in manifest.json")
            self._verified.add((k, group, b))
        return table

    def _damaged(self, k: int, problem: str) -> UserError:
        """One line: which shard, what is wrong with it, and the command that writes it again."""
        path = self.folder / self.manifest["shards"][k]["file"]
        made, cwd = self.manifest.get("command"), self.manifest.get("cwd")
        if made:  # the store's own command, into the folder the store lies in now
            root = shlex.quote(f"paths.artifacts={self.folder.parent.parent.resolve()}")
            command = f"{made} {root} store.verify=true"
            in_cwd = f"cd {shlex.quote(cwd)} && " if cwd and cwd != os.getcwd() else ""  # relative paths in it
            fix = f"recompute it with `{in_cwd}{command}`"
        else:
            fix = "recompute it by running the job=store command that wrote this store again with store.verify=true"
        return UserError(f"shard {path} {problem}: {fix}")

    def metadata(self) -> pa.Table:
        """id, name, n_tokens, truncated of every row, in order (.to_pandas() for a DataFrame)."""
        tables = []
        for k in range(len(self.manifest["shards"])):
            for b in range(self._shard(k).column(0).num_chunks):
                self._batch(k, "meta", b)
            tables.append(self._shard(k).select(list(vs.GROUPS["meta"])))
        return pa.concat_tables(tables)

    @functools.cached_property
    def ids(self) -> List[str]:
        return self.metadata().column("id").to_pylist()

    @functools.cached_property
    def names(self) -> List[str]:
        return self.metadata().column("name").to_pylist()

    @functools.cached_property
    def _row_of(self) -> Dict[str, int]:
        return {doc_id: row for row, doc_id in enumerate(self.ids)}

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """Row numbers of document ids; one error naming the ids that are not in the store."""
        missing = [i for i in ids if i not in self._row_of]
        if missing:
            raise UserError(f"{len(missing)} of {len(ids)} ids are not in the store {self.folder.name} "
                            f"(first: {missing[0]!r}): ids are the `id` column of metadata()")
        return np.array([self._row_of[i] for i in ids], dtype=np.int64)

    def vectors(self, rows: Union[slice, Sequence[int], None] = None, ids: Optional[Sequence[str]] = None,
                variant: str = "raw", to: str = "numpy"):
        """float32 vectors [n, dims] of rows (a slice, row numbers, or a boolean mask of len(store)
        rows, as numpy takes them) or of ids, in the order asked; numpy or torch (`to`)."""
        if variant not in self.variants:
            raise UserError(f"variant {variant!r} is not in this store: it holds {', '.join(self.variants)}")
        if to not in ("numpy", "torch"):
            raise UserError(f"to={to!r}: give numpy or torch")
        if ids is not None:
            rows = self.rows_of(ids)
        if rows is None or isinstance(rows, slice):
            picked = np.arange(*(rows or slice(None)).indices(len(self)))  # [n] global rows
        else:
            picked = np.asarray(rows)
            if picked.dtype == bool:
                if picked.shape != (len(self),):
                    raise UserError(f"a boolean mask of rows needs {len(self)} entries, one per row; got {picked.shape}")
                picked = np.flatnonzero(picked)
            elif picked.size and picked.dtype.kind not in "iu":
                raise UserError(f"rows must be row numbers, a slice or a boolean mask; got {picked.dtype} values")
            picked = picked.astype(np.int64)
            if len(picked) and (picked.min() < 0 or picked.max() >= len(self)):
                raise UserError(f"rows out of range: the store has {len(self)} rows")
        out = np.empty((len(picked), self.dims), dtype=np.float32)  # [n, D]
        shard_of = np.searchsorted(self._starts, picked, side="right") - 1
        run = _run(picked)  # consecutive rows: every batch's part is a slice, copied without a gather
        for k, at in _groups(shard_of, len(self.manifest["shards"])):
            self._fill(out, at, int(k), picked[at] - self._starts[k], variant, run)
        if to == "torch":
            import torch

            return torch.from_numpy(out)
        return out

    def _fill(self, out: np.ndarray, at: np.ndarray, k: int, local: np.ndarray, variant: str, run: bool) -> None:
        """out[at] = rows `local` of shard k, from the record batches that hold them, each verified."""
        chunks = self._shard(k).column(variant).chunks
        starts = np.cumsum([0] + [len(c) for c in chunks])  # first row of each batch
        for b, here in _groups(np.searchsorted(starts, local, side="right") - 1, len(chunks)):
            values = self._values(k, variant, int(b))  # [rows of batch b, D]
            src, dst = local[here] - starts[b], at[here]
            if run:
                src, dst = slice(src[0], src[-1] + 1), slice(dst[0], dst[-1] + 1)
            picked = values[src]  # only these pages
            if values.dtype == np.uint16:  # bfloat16 bit patterns
                picked = (picked.astype(np.uint32) << 16).view(np.float32)
            out[dst] = picked  # float16 widens here

    def _values(self, k: int, variant: str, b: int) -> np.ndarray:
        """Batch b of shard k's `variant`, verified: [rows, D] in the storage dtype, a view of the map."""
        if (k, variant, b) not in self._views:
            chunk = self._batch(k, variant, b).column(variant).chunk(b)
            self._views[(k, variant, b)] = chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, self.dims)
        return self._views[(k, variant, b)]


def _groups(keys: np.ndarray, n: int):
    """(key, positions of that key in ascending order) for each key in range(n) that `keys` holds."""
    order = np.argsort(keys, kind="stable")  # rows asked for in order (slices) sort in one pass
    bounds = np.searchsorted(keys[order], np.arange(n + 1))
    for key in np.flatnonzero(np.diff(bounds)):
        yield key, order[bounds[key]:bounds[key + 1]]


def _run(a: np.ndarray) -> bool:
    """Whether a holds consecutive ascending numbers."""
    return len(a) > 0 and a[-1] - a[0] == len(a) - 1 and bool(np.all(np.diff(a) == 1))
