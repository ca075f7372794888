"""Freed CPU tensor memory kept for the next step instead of handed back to the OS (glibc's malloc).

torch allocates CPU tensors with malloc, which serves a block above its mmap threshold (128 KiB, rising
to at most 32 MiB as blocks are freed) with a fresh mmap and returns it to the OS when freed, and trims
the heap's free top. Whether a step's big tensors (a bank's composed weights and their gradients: ~40 MB
a PaCo step at MT10) come back to reused memory or are faulted in page by page then depends on what else
happens to be allocated: a loop of forward+backward alone (bench, ../shared/checks) took 10,000-16,000
minor faults a PaCo step, a quarter of its time, while a full SAC update took 50-300 and ran as fast
without this (measured). With both thresholds raised, freed blocks stay in the heap whatever the loop:
the process holds its peak, as CUDA's caching allocator does on a GPU.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_LARGEST_INT = 2**31 - 1


@functools.cache   # once a process: finding libc runs ldconfig (~0.8 ms), and every CPU build calls this
def keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds for this process; False (and nothing changed) elsewhere.
    Older glibc caps the mmap threshold at 32 MiB; then blocks above that are still mapped afresh."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    kept = mallopt(_M_TRIM_THRESHOLD, _LARGEST_INT)
    return bool(kept and (mallopt(_M_MMAP_THRESHOLD, 1 << 30) or mallopt(_M_MMAP_THRESHOLD, 32 << 20)))
