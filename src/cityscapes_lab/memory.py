"""How this process's C allocator treats large freed blocks.

A CPU training step allocates and frees the same few hundred MB of activations and gradients every step. By
default glibc serves each block over 32 MiB with its own ``mmap`` and unmaps it when freed, so every step
page-faults that memory in again (zeroed by the kernel): on our 2-core machine about half of a U-Net step's
time (benchmarks/RESULTS.md, "malloc"). ``keep_freed_memory`` makes glibc take every block from its heap and
keep what is freed for the next step. The process then stays at its peak memory instead of shrinking between
steps; results do not change (this is only where memory comes from).
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_applied = False


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and never trim it (glibc); once per process. False where the C library
    is not glibc (its defaults stay)."""
    global _applied
    if _applied:
        return True
    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):  # not glibc
        return False
    _applied = ok
    return ok
