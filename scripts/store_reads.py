"""What verified reads of a vector store cost (README, "Vectors of a corpus"): a synthetic store of
raw and centred float32 vectors, written once into DIR, then each read with a fresh reader (a
reader checks each record batch once), best of 5, warm page cache.

    python scripts/store_reads.py DIR [N_DOCS] [DIMS]      # defaults: 20000 2048 (Pythia-70m, long)

The store is job=bench's (jobs/bench.synthetic_store); the README's "unchecked" column is the same
reads by the reader of the commit before batch checksums, of a store it wrote.
"""

import random
import sys
import time
from pathlib import Path

import numpy as np

from actexp.jobs.bench import synthetic_store
from actexp.maths.neighbors import top_k
from actexp.store.reader import VectorStore

IDENTITY = {"model": "bench", "revision": "r", "layers": "all", "prepend_bos": False, "max_tokens": 1, "dtype": "float32"}


def best(folder: Path, read, repeats: int = 5) -> float:
    """Seconds of read(store), the best of `repeats`, each with a fresh reader."""
    times = []
    for _ in range(repeats):
        store = VectorStore.open(folder)
        start = time.perf_counter()
        read(store)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    if len(sys.argv) < 2 or not set(sys.argv[1:]).isdisjoint({"-h", "--help"}):  # DIR is needed
        print(__doc__)
        return
    root = Path(sys.argv[1])
    n_docs = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    dims = int(sys.argv[3]) if len(sys.argv) > 3 else 2048
    folder = synthetic_store(root, IDENTITY, n_docs, dims, shard_size=1024)
    rng = random.Random(0)
    queries = np.random.default_rng(1).standard_normal((4, dims)).astype(np.float32)  # [4, D]
    reads = {
        "every raw vector": lambda s: s.vectors(),
        "a top_k scan of the raw vectors (4 queries)": lambda s: top_k(
            queries, lambda a, b: s.vectors(slice(a, b)), len(s), 11, 8192),
        "a 1,000-row slice": lambda s: s.vectors(slice(5000, 6000)),
        "1,000 random rows": lambda s: s.vectors(rng.sample(range(n_docs), 1000)),
    }
    size = sum(p.stat().st_size for p in folder.glob("shards/*.arrow")) / 1e6
    print(f"{n_docs} documents x {dims} dims, raw and centred, {size:.0f} MB; best of 5, a fresh reader each:")
    for name, read in reads.items():
        print(f"  {name:<45}{best(folder, read) * 1e3:8.1f} ms")
    store = VectorStore.open(folder)
    store.vectors()  # every raw batch checked
    again = []
    for _ in range(5):
        rows = rng.sample(range(n_docs), 1000)
        start = time.perf_counter()
        store.vectors(rows)
        again.append(time.perf_counter() - start)
    print(f"  {'1,000 random rows again, same reader':<45}{min(again) * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
