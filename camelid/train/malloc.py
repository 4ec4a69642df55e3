"""Keep freed CPU memory inside the process while training (Linux, glibc).

glibc hands the free top of its heap back to the kernel once more than M_TRIM_THRESHOLD bytes lie there
(64 MB at most with its self-adjusting defaults) and serves blocks above M_MMAP_THRESHOLD with fresh
mappings that are unmapped on free. A training step frees its activations at the end of the backward
pass and allocates them again in the next forward, so by default every step faults those pages back in
and the kernel zeroes them again: 9% of the matmul time of an eager fp32 step of the reference model
on a 2-core CPU, 3-8% of a compiled step, more for libraries that make more temporaries
(docs/PERFORMANCE.md). PyTorch's CPU tuning guide fixes this with jemalloc or tcmalloc through
LD_PRELOAD; two `mallopt` calls do it from inside the process. The cost: the process keeps its peak
heap until it exits, which a training run reaches every step anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit: larger blocks are always mapped afresh
TRIM_THRESHOLD_MAX = 2**31 - 1  # mallopt takes an int


def _mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return None


def keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds to their ceilings for this process. True if it applied."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_MAX))
