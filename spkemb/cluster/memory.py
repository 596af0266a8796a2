"""Memory estimates of the clustering stages, and the memory this machine has available."""

from __future__ import annotations

import os

GIB = 2**30


def available_bytes() -> int:
    """MemAvailable of /proc/meminfo (Linux); elsewhere the physical memory, or 8 GiB if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * GIB


def exact_ahc_bytes(n: int) -> int:
    """scipy's average linkage: the condensed N (N - 1) / 2 float64 distances, held twice (linkage copies)."""
    return n * (n - 1) * 8


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.1f} GiB"
