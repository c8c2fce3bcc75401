"""Keeping freed memory inside the process (glibc), so big per-unit buffers are not faulted in again.

A ShardBuilder allocates the same few large buffers for every work unit (the text read, token
arrays, the packed columns). With glibc's defaults, large requests are served by fresh mmaps and
freed heap tops go back to the kernel, so every unit page-faults its buffers in again: on the
2-core VM that tripled the cost of packing. Set from inside the process (not GLIBC_TUNABLES in a
Ray runtime_env), so Ray can run the actors in its already started worker processes.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses a larger mmap threshold on 64-bit (HEAP_MAX_SIZE / 2); a unit's buffers are smaller.
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int


def keep_freed_memory() -> bool:
    """Serve allocations up to 32 MiB from the heap and never trim it; False where libc is not glibc."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
