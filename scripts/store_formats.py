"""Compare shard formats for the vector store (README, "Vectors of a corpus"): write throughput,
size on disk, a random contiguous slice of 1,000 rows and 1,000 random rows.

    python scripts/store_formats.py [N_DOCS] [DIMS]      # defaults: 10000 2048 (Pythia-70m, long)

Each document has a raw and a centred float32 vector of DIMS values, an id, a name, a token count
and a truncated flag; shards hold 1,024 documents, as the store does by default.
"""

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from safetensors import safe_open
from safetensors.numpy import save_file

SHARD = 1024


def table(ids, raw=None, centered=None):
    """The metadata columns, and the vectors as fixed-size lists when given."""
    n = len(ids)
    columns = {"id": pa.array(ids), "name": pa.array([f"doc/{i}" for i in ids]),
               "n_tokens": pa.array(np.full(n, 100, np.int32)), "truncated": pa.array(np.zeros(n, bool))}
    for key, x in (("raw", raw), ("centered", centered)):
        if x is not None:
            columns[key] = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])
    return pa.table(columns)


def write_arrow(path, ids, raw, centered):
    t = table(ids, raw, centered)
    with ipc.new_file(str(path), t.schema) as w:
        w.write_table(t)


def write_parquet(path, ids, raw, centered):
    pq.write_table(table(ids, raw, centered), str(path), compression="none", row_group_size=SHARD)


def write_safetensors(path, ids, raw, centered):
    save_file({"raw": raw, "centered": centered}, str(path))
    pq.write_table(table(ids), str(path) + ".index.parquet")


def read_arrow(paths, rows):
    out = []
    for k, local in rows:  # memory-mapped: only the pages of the rows asked for are read
        col = ipc.open_file(pa.memory_map(str(paths[k]))).read_all().column("raw").combine_chunks()
        out.append(col.values.to_numpy(zero_copy_only=True).reshape(-1, col.type.list_size)[local])
    return np.concatenate(out)


def read_parquet(paths, rows):
    out = []
    for k, local in rows:  # a column chunk is decoded whole
        col = pq.read_table(str(paths[k]), columns=["raw"], memory_map=True).column("raw").combine_chunks()
        out.append(col.values.to_numpy().reshape(-1, col.type.list_size)[local])
    return np.concatenate(out)


def read_safetensors(paths, rows):
    out = []
    for k, local in rows:  # one contiguous range per shard, memory-mapped
        with safe_open(str(paths[k]), "np") as f:
            out.append(f.get_slice("raw")[int(local[0]):int(local[-1]) + 1][local - local[0]])
    return np.concatenate(out)


def by_shard(rows):
    """[(shard, sorted local row numbers)] for sorted global row numbers."""
    rows = np.asarray(rows)
    return [(int(k), rows[rows // SHARD == k] % SHARD) for k in np.unique(rows // SHARD)]


def main():
    if not set(sys.argv[1:]).isdisjoint({"-h", "--help"}):
        print(__doc__)
        return
    n_docs = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    dims = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
    rng = np.random.default_rng(0)
    formats = {"arrow": (write_arrow, read_arrow, ".arrow"), "parquet": (write_parquet, read_parquet, ".parquet"),
               "safetensors+parquet": (write_safetensors, read_safetensors, ".safetensors")}
    print(f"{n_docs} documents, raw + centred float32 of {dims} dims, shards of {SHARD}")
    print(f"{'format':<22}{'write MB/s':>11}{'MB':>9}{'slice 1000 ms':>15}{'1000 random ms':>16}")
    for name, (write, read, suffix) in formats.items():
        root = Path(tempfile.mkdtemp(prefix=f"store-{name}-"))
        paths, seconds, written = [], 0.0, 0
        for k, start in enumerate(range(0, n_docs, SHARD)):
            n = min(SHARD, n_docs - start)
            raw = rng.standard_normal((n, dims), dtype=np.float32)
            centered = rng.standard_normal((n, dims), dtype=np.float32)
            ids = [f"{i:016x}" for i in range(start, start + n)]
            path = root / f"{k:05d}{suffix}"
            t = time.perf_counter()
            write(path, ids, raw, centered)
            seconds += time.perf_counter() - t
            written += raw.nbytes + centered.nbytes
            paths.append(path)
        size = sum(p.stat().st_size for p in root.iterdir()) / 2**20
        slice_ms, random_ms = [], []
        for _ in range(5):
            start = int(rng.integers(0, n_docs - 1000))
            t = time.perf_counter()
            got = read(paths, by_shard(np.arange(start, start + 1000)))
            slice_ms.append((time.perf_counter() - t) * 1e3)
            assert got.shape == (1000, dims)
            picks = np.sort(rng.choice(n_docs, 1000, replace=False))
            t = time.perf_counter()
            read(paths, by_shard(picks))
            random_ms.append((time.perf_counter() - t) * 1e3)
        print(f"{name:<22}{written / 2**20 / seconds:>11,.0f}{size:>9,.0f}{statistics.median(slice_ms):>15.1f}"
              f"{statistics.median(random_ms):>16.1f}")
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
