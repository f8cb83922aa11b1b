"""Host memory allocator settings for training: reuse freed large blocks instead of mapping them afresh.

Every training step allocates and frees the same large activations (at 512x512 the 150-class loss alone holds
~300 MiB of upsampled logits). glibc serves blocks above its mmap threshold (adaptive, at most 32 MiB) with a fresh
mmap and unmaps them on free, so every step page-faults them in again and the kernel zeroes each page: about a
quarter of a CPU training step for mit_b0 at 512 (bench/README.md). Raising the mmap and trim thresholds lets
freed blocks be reused. The peak is the same blocks reused; the process keeps its peak resident until it exits.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_THRESHOLD = 2**31 - 1  # mallopt takes an int
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def reuse_freed_memory() -> bool:
    """Make glibc keep freed large blocks for reuse (process-wide). True when applied; False where the C library
    is not glibc, or the user chose malloc settings (``MALLOC_*_`` / ``GLIBC_TUNABLES`` environment variables)."""
    if not sys.platform.startswith("linux") or any(k in os.environ for k in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, _THRESHOLD))
