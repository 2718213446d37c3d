"""The C allocator of the process: what it does with memory that large tensors free (no torch import here, so the
CLI can set it before any command loads a model)."""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)


def hold_freed_memory() -> bool:
    """Keep the memory that freed tensors leave inside the process instead of handing it back to the OS (glibc's
    malloc: no mmap for large blocks, no trimming of the heap). Every CPU training step and every inference batch
    frees and re-allocates the same large activations; by default glibc maps each one afresh and the kernel
    zero-fills every page again, which took a quarter to a third of a CPU training run's time and about half of a
    CPU evaluation's (`/usr/bin/time -v`: system time and minor page faults). The process keeps its peak memory
    until it exits, so long-lived processes (the web service) do not call it. Returns whether it applied (Linux
    with glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
