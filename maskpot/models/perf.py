"""CPU performance knobs for model inference (opt-in, process-wide)."""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_cpu_allocator(threshold_bytes: int = 1 << 30) -> bool:
    """Keep large freed blocks in glibc's heap instead of returning them to the OS.

    PyTorch's CPU allocator calls malloc/free for every tensor; glibc serves blocks above
    M_MMAP_THRESHOLD (<= 32 MB dynamic) with fresh mmap'd pages, so every large edge tensor
    (e.g. [E, 3, F] in PaiNN) pays page faults on first touch. Raising the mmap and trim
    thresholds makes repeated model calls 1.5-3x faster on CPU (measured on a 648-atom water
    box). Same effect as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the
    environment. Returns True when applied (glibc only); memory is then not returned to the OS.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes)) == 1
    ok_trim = mallopt(_M_TRIM_THRESHOLD, int(threshold_bytes)) == 1
    return ok_mmap and ok_trim
