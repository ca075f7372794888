"""Keep freed CPU memory for reuse: PyTorch's CPU tensors come from glibc malloc, which by default
serves large blocks with fresh mmap pages and hands freed ones back to the OS, so every forward and
backward page-faults its activations and gradients in again. Measured on MT10's batch, one thread:
PaCo's per-task weights took 14,000 page faults (57 MB) per actor+critic update, 15 % of its time."""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 << 20   # glibc's ceiling on 64-bit; larger blocks are mmapped whatever is set


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (no-op elsewhere). True if applied."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
