"""How much memory this machine can give now: the bound of what per-block vectors and fits may take."""

import os
from pathlib import Path
from typing import Optional

MEMINFO = Path("/proc/meminfo")


def available_memory() -> int:
    """Bytes the kernel could give now without swapping (MemAvailable: free plus reclaimable cache)."""
    try:
        line = next(x for x in MEMINFO.read_text().splitlines() if x.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration, ValueError, IndexError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def over_half(size: int) -> Optional[str]:
    """What a job refuses before its work: "take X MiB, more than half of the Y MiB free here" when size
    bytes would take more than half of the memory available now, else None."""
    available = available_memory()
    if size <= available / 2:
        return None
    return f"take {size / 2**20:,.1f} MiB, more than half of the {available / 2**20:,.1f} MiB free here"
