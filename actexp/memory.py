"""How much memory this machine can give now: the bound of what per-block vectors and fits may take."""

import os
from pathlib import Path

MEMINFO = Path("/proc/meminfo")


def available_memory() -> int:
    """Bytes the kernel could give now without swapping (MemAvailable: free plus reclaimable cache)."""
    try:
        line = next(x for x in MEMINFO.read_text().splitlines() if x.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration, ValueError, IndexError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
