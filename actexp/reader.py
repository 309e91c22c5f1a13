"""Read a vector store written by job=store, from Python, without loading it.

    from actexp.reader import VectorStore
    store = VectorStore.open("~/.cache/actexp/vectors/<store-id>")
    len(store), store.dims, store.variants          # from manifest.json alone
    store.metadata()                                  # id, name, n_tokens, truncated (pyarrow Table)
    store.vectors(slice(1000, 2000))                  # float32 numpy [1000, D], memory-mapped shards
    store.vectors(ids=["3f2a...", "9c1e..."], variant="centered", to="torch")

Opening reads the manifest only; ids and metadata read the shards' small columns; vectors read
only the rows asked for (shards are memory-mapped Arrow files, see vector_store.py).
"""

import functools
import json
from pathlib import Path
from typing import Dict, List, Optional, Protocol, Sequence, Union

import numpy as np
import pyarrow as pa

from .errors import UserError
from .storage import MANIFEST
from .vector_store import open_shard


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
        self._starts = np.cumsum([0] + [s["rows"] for s in manifest["shards"]])  # first row of each shard

    @classmethod
    def open(cls, path) -> "VectorStore":
        """A store folder (with manifest.json), or the manifest itself."""
        folder = Path(path).expanduser()
        folder = folder.parent if folder.name == MANIFEST else folder
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
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
            self._tables[k] = open_shard(self.folder / self.manifest["shards"][k]["file"])
        return self._tables[k]

    def metadata(self) -> pa.Table:
        """id, name, n_tokens, truncated of every row, in order (.to_pandas() for a DataFrame)."""
        columns = ["id", "name", "n_tokens", "truncated"]
        return pa.concat_tables([self._shard(k).select(columns) for k in range(len(self.manifest["shards"]))])

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
        for k in np.unique(shard_of):
            here = shard_of == k
            out[here] = self._rows(int(k), picked[here] - self._starts[k], variant)
        if to == "torch":
            import torch

            return torch.from_numpy(out)
        return out

    def _rows(self, k: int, local: np.ndarray, variant: str) -> np.ndarray:
        chunks = self._shard(k).column(variant)
        column = chunks.chunk(0) if chunks.num_chunks == 1 else chunks.combine_chunks()  # one chunk: no copy
        values = column.values.to_numpy(zero_copy_only=False).reshape(-1, self.dims)[local]  # only these pages
        if column.type.value_type == pa.uint16():  # bfloat16 bit patterns
            return (values.astype(np.uint32) << 16).view(np.float32)
        return values.astype(np.float32, copy=False)
