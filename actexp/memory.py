"""How much memory this machine can give now: the bound of what per-block vectors and fits may take."""

import os
from pathlib import Path

from .errors import UserError

MEMINFO = Path("/proc/meminfo")


def available_memory() -> int:
    """Bytes the kernel could give now without swapping (MemAvailable: free plus reclaimable cache)."""
    try:
        line = next(x for x in MEMINFO.read_text().splitlines() if x.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration, ValueError, IndexError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def require_room(size: int, what: str, fix: str) -> None:
    """Refuse in one line, before the work, what would take more than half of the memory available now."""
    available = available_memory()
    if size > available / 2:
        raise UserError(f"{what} take {size / 2**20:,.1f} MiB, more than half of the {available / 2**20:,.1f} MiB "
                        f"free here: {fix}")
