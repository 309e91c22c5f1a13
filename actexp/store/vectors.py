"""The store of corpus vectors (job=store): its id, layout, shard files, checksums and locks.

    <root>/vectors/<store-id>/shards/00000.arrow   per shard: id, name, n_tokens, truncated, raw [, centered],
                                                    in record batches of about store.batch_kb of one vector column
    <root>/vectors/<store-id>/manifest.json         the run's metadata and each shard's rows and checksums,
                                                    written once every shard is on disk
    <root>/vectors/<store-id>/.locks/               one lock per shard and one for the manifest

Shards are uncompressed Arrow IPC files (Feather v2), chosen by measurement (README, "Vectors of a
corpus"): actexp's reader (reader.py) memory-maps them, and pyarrow, pandas (read_feather) and
polars (read_ipc) open them as they are. Vectors are fixed-size lists of float32 or float16;
bfloat16, which Arrow has no type for, is stored as its uint16 bit patterns (field metadata says so).
The store id names everything that changes the numbers: the model identity (dtype included), the
pooling chunks, the sha256 of the centring mean, the corpus's content, the shard size and the
storage dtype. The guarantees are the mean store's (means.py): atomic shards with a checksum,
resume, and one writer per shard under its lock.

Two checksums, for two readers: the sha256 of a shard's whole content (its header), which a writer
checks before it keeps a shard (shards.check: resume, store.verify=true, Modal); and an xxh3_64 of
each record batch's small columns, raw and centred (header and manifest), which the reader checks
for the batches a read touches, as Parquet does its pages: a read costs hashing the batches it maps,
once per reader, at about 30 GB/s (README, "Vectors of a corpus").
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import torch
import xxhash

from ..errors import UserError
from . import locks
from .io import write_bytes
from .layout import digest, model_label
from .locks import folder_lock

STORAGE_DTYPES = ("float32", "float16", "bfloat16")
VARIANTS = ("raw", "centered")
BATCH_CHECKSUM = "xxh3_64"  # the manifest's key for the per-batch checksums, named by their hash
# Columns checked together: a read of metadata touches the small ones, a read of vectors one variant.
GROUPS = {"meta": ("id", "name", "n_tokens", "truncated"), "raw": ("raw",), "centered": ("centered",)}


@dataclass(frozen=True)
class StoreLayout:
    """Where the vectors of one model, pooling, mean and corpus live, under the store at `root`."""

    root: Path
    identity: dict  # the model's (models/identity.py)
    pooling: dict  # {"name": ..., "chunks": [{kind, alpha}, ...]}
    mean_sha256: Optional[str]  # the centring mean's checksum; None: raw vectors only
    corpus_id: str
    storage_dtype: str = "float32"
    shard_size: int = 1024
    locking: bool = True
    batch_kb: int = 1024  # KiB of one vector column per record batch: the unit a read verifies

    @property
    def id(self) -> str:
        centring = "raw" if self.mean_sha256 is None else f"c{self.mean_sha256[:8]}"
        key = [self.identity, self.pooling, self.mean_sha256, self.corpus_id, self.storage_dtype, self.shard_size]
        return (f"{model_label(self.identity)}-{self.pooling['name']}-{centring}-{self.storage_dtype}"
                f"__{self.corpus_id}__{digest(key)}")

    @property
    def folder(self) -> Path:
        return self.root / "vectors" / self.id

    def shard(self, index: int) -> Path:
        return self.folder / "shards" / f"{index:05d}.arrow"

    def lock(self, name: str):
        return folder_lock(self.folder, name, self.locking)

    def spec(self) -> dict:
        """What a remote worker needs to find the same files under its own root."""
        return {"identity": self.identity, "pooling": self.pooling, "mean_sha256": self.mean_sha256,
                "corpus_id": self.corpus_id, "storage_dtype": self.storage_dtype, "shard_size": self.shard_size,
                "batch_kb": self.batch_kb}

    def batch_rows(self, dims: int) -> int:
        """Rows per record batch: as many as fill batch_kb of one vector column (at least one)."""
        return max(1, self.batch_kb * 1024 // (dims * (4 if self.storage_dtype == "float32" else 2)))

    def read_shard(self, index: int) -> Optional[Tuple[dict, List[str], pa.Table]]:
        """(header, document ids, table) of a shard whose checksum is right, else None (shards.check)."""
        path = self.shard(index)
        header = shard_header(path)
        if header is None:
            return None
        try:
            table = open_shard(path)
            table.validate(full=True)  # damaged offsets or strings fail here, not later
            if table_sha256(table) != header.get("sha256"):
                return None
            if BATCH_CHECKSUM in header and (batches_problem(table, header)
                                             or batch_checksums(table) != header[BATCH_CHECKSUM]):
                return None  # the reader checks these: a shard kept must pass them too
            return header, table.column("id").to_pylist(), table
        except (OSError, pa.ArrowException, KeyError, ValueError):
            return None

    def foreign(self, header: dict) -> Optional[str]:
        """Why a shard's header belongs to another store (None if it belongs to this one)."""
        return None if header.get("store_id") == self.id else f"belongs to another store ({header.get('store_id')})"


def _vector_column(x: torch.Tensor, storage_dtype: str):
    """[N, D] float32 -> (fixed-size list array, field metadata) in the storage dtype."""
    if storage_dtype == "bfloat16":
        values = x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    else:
        values = x.numpy().astype(storage_dtype, copy=False)
    meta = {b"actexp.dtype": storage_dtype.encode()}
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), x.shape[1]), meta


def table_sha256(table: pa.Table) -> str:
    """sha256 of a shard's logical content (not of Arrow's buffers, whose padding may vary), the same
    however its rows are cut into record batches; hashed batch by batch, so nothing is copied."""
    h = hashlib.sha256()
    for name in table.column_names:
        column = table.column(name)
        h.update(name.encode())
        if pa.types.is_string(column.type):
            h.update("\0".join(column.to_pylist()).encode())
            continue
        for chunk in column.chunks:
            h.update(_content(chunk))
    return h.hexdigest()


def _content(array: pa.Array):
    """What a batch checksum covers of one column: its values, without a copy of the vectors."""
    if pa.types.is_fixed_size_list(array.type):
        array.validate()  # the child holds length x list_size values
        return array.flatten().to_numpy(zero_copy_only=False)  # a view of the memory map
    array.validate(full=True)  # string offsets within their data, before they are followed
    if pa.types.is_string(array.type):
        return "\0".join(array.to_pylist()).encode()
    return np.ascontiguousarray(array.to_numpy(zero_copy_only=False))


def batch_checksum(table: pa.Table, group: str, batch: int) -> str:
    """xxh3_64 of one column group (GROUPS) of record batch `batch` (a chunk of every column)."""
    h = xxhash.xxh3_64()
    for name in GROUPS[group]:
        h.update(name.encode())
        h.update(_content(table.column(name).chunk(batch)))
    return h.hexdigest()


def batch_checksums(table: pa.Table) -> dict:
    """{group: [checksum of each record batch]} of the groups the table holds."""
    return {g: [batch_checksum(table, g, b) for b in range(table.column(0).num_chunks)]
            for g, names in GROUPS.items() if names[0] in table.column_names}


def schema_problem(table: pa.Table, variants: Sequence[str], dims: int, storage_dtype: str) -> Optional[str]:
    """Why a shard's columns are not those of a store of these variants, dims and storage dtype."""
    value = pa.uint16() if storage_dtype == "bfloat16" else pa.from_numpy_dtype(np.dtype(storage_dtype))
    expected = [("id", pa.string()), ("name", pa.string()), ("n_tokens", pa.int32()), ("truncated", pa.bool_())] + [
        (v, pa.list_(value, dims)) for v in variants]
    if [(f.name, f.type, f.nullable) for f in table.schema] == [(n, t, True) for n, t in expected]:
        return None
    got = ", ".join(f"{f.name}: {f.type}{'' if f.nullable else ' not null'}" for f in table.schema)
    return f"its columns are {got or 'none'}, not {', '.join(f'{n}: {t}' for n, t in expected)}"


def batches_problem(table: pa.Table, entry: dict) -> Optional[str]:
    """Why a shard's record batches are not the ones `entry` (its header or manifest entry) records
    (other rows, or other rows per batch); None if they are, and their checksums can be compared."""
    rows, per = entry["rows"], entry["batch_rows"]
    expected = [min(per, rows - start) for start in range(0, rows, per)]
    got = [len(c) for c in table.column(0).chunks]  # an IPC file's batches cut every column alike
    if table.num_rows != rows or got != expected:
        return f"it holds {table.num_rows} rows in {len(got)} batches, not {rows} rows in batches of {per}"
    return None


def shard_table(docs: Sequence, vectors, storage_dtype: str) -> pa.Table:
    """The rows of one shard: id, name, n_tokens, truncated, raw [, centered]. `docs` have an id and a
    name (data.corpus.Document); the store needs nothing else of them."""
    fields = [pa.field("id", pa.string()), pa.field("name", pa.string()), pa.field("n_tokens", pa.int32()),
              pa.field("truncated", pa.bool_())]
    arrays = [pa.array([d.id for d in docs]), pa.array([d.name for d in docs]),
              pa.array(vectors.n_tokens, pa.int32()), pa.array(vectors.truncated, pa.bool_())]
    for name, x in (("raw", vectors.raw), ("centered", vectors.centered)):
        if x is not None:
            array, meta = _vector_column(x, storage_dtype)
            fields.append(pa.field(name, array.type, metadata=meta))
            arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def write_shard(layout: StoreLayout, index: int, docs: Sequence, vectors) -> dict:
    """Write one shard atomically, its header (store id, index, rows, tokens, checksum) in the schema."""
    table = shard_table(docs, vectors, layout.storage_dtype)
    per = layout.batch_rows(vectors.raw.shape[1])
    table = pa.Table.from_batches(table.to_batches(max_chunksize=per))  # one chunk per record batch, no copy
    header = {"store_id": layout.id, "shard": index, "rows": table.num_rows, "tokens": int(sum(vectors.n_tokens)),
              "sha256": table_sha256(table), "batch_rows": per, BATCH_CHECKSUM: batch_checksums(table)}
    table = table.replace_schema_metadata({"actexp": json.dumps(header)})
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)  # a record batch per chunk
    write_bytes(layout.shard(index), sink.getvalue())  # an Arrow buffer: written without a copy to bytes
    return header


def open_shard(path: Path) -> pa.Table:
    """A shard's table, memory-mapped (nothing is read until a column is used)."""
    return ipc.open_file(pa.memory_map(str(path))).read_all()


def shard_header(path: Path) -> Optional[dict]:
    """The header a shard was written with, or None if the file is missing or not a shard."""
    try:
        with pa.memory_map(str(path)) as source:
            return json.loads(ipc.open_file(source).schema.metadata[b"actexp"])
    except (OSError, pa.ArrowInvalid, KeyError, TypeError, ValueError):
        return None


def shard_headers(layout: StoreLayout) -> List[dict]:
    """The headers of the shard files on disk (unreadable ones count as empty)."""
    return [shard_header(p) or {} for p in sorted((layout.folder / "shards").glob("*.arrow"))]


def write_manifest(layout: StoreLayout, headers: List[dict], metadata: dict, location: str = "local") -> Optional[Path]:
    """manifest.json: the run's metadata (as vector.json), the shards' rows and checksums (whole and
    per record batch), where they are; its path, or None when the manifest there already describes these files."""
    variants = [v for v in VARIANTS if v == "raw" or layout.mean_sha256 is not None]
    return locks.write_manifest(layout.folder, metadata | {
        "store_id": layout.id, "location": location, "storage_dtype": layout.storage_dtype,
        "variants": variants, "rows": sum(h["rows"] for h in headers), "tokens": sum(h["tokens"] for h in headers),
        "shards": [{"file": f"shards/{h['shard']:05d}.arrow", "rows": h["rows"], "sha256": h["sha256"]}
                   | {k: h[k] for k in ("batch_rows", BATCH_CHECKSUM) if k in h} for h in headers]},
        lambda: layout.lock("manifest"), same=_same_content)


def _same_content(old: dict, new: dict) -> bool:
    """Whether two manifests describe the same files: a store checked again by a newer actexp, or
    mounted at another path, needs no new manifest (and may be read-only)."""
    return all(old.get(k) == new.get(k) for k in ("store_id", "location", "storage_dtype", "variants", "rows", "shards"))


def check_storage_dtype(name: str) -> str:
    if name not in STORAGE_DTYPES:
        raise UserError(f"store.storage_dtype={name!r}: use one of {', '.join(STORAGE_DTYPES)}")
    return name
