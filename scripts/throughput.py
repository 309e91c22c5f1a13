"""Vector-extraction throughput of the local backend, batched vs one text at a time.

    python scripts/throughput.py [N_DOCS] [hydra overrides...]
    python scripts/throughput.py 64 model=pythia-70m model.random_init=true

Documents: the first N standard-library docstrings of at least 300 characters (the built-in corpus).
Prints tokens/s (median of 3 repeats after a warm-up) for both ways, long pooling.
"""

import statistics
import sys
import time
from itertools import islice

from hydra import compose, initialize_config_dir

from actexp.backends.local import LocalBackend
from actexp.data.corpus import python_docs
from actexp.jobs.common import chunks as chunks_from_cfg
from actexp.run import CONF


def timed(fn, repeats=3):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    if not set(sys.argv[1:]).isdisjoint({"-h", "--help"}):
        print(__doc__)
        return
    args = sys.argv[1:]
    n_docs = int(args.pop(0)) if args and args[0].isdigit() else 64
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=["pooling=long", *args])
    backend = LocalBackend.from_config(cfg)
    chunks = chunks_from_cfg(cfg.pooling)
    texts = [doc.text for doc in islice(python_docs(min_chars=300), n_docs)]
    tokens = sum(backend.vectors(texts, chunks).n_tokens)
    batched = timed(lambda: backend.vectors(texts, chunks))
    single = timed(lambda: [backend.vectors([t], chunks) for t in texts])
    print(f"{cfg.model.name} on {cfg.hardware.device}: {n_docs} docs, {tokens} tokens; "
          f"batched {tokens / batched:,.0f} tokens/s, one at a time {tokens / single:,.0f} tokens/s "
          f"({single / batched:.2f}x)")


if __name__ == "__main__":
    main()
