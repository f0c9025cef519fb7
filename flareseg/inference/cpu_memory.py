"""Keep freed memory in the process for CPU inference (glibc's allocator), so windows do not page-fault.

A paper-size window allocates activations of ~150 MB per tensor (several GB per window).  glibc
serves blocks that large with ``mmap`` and returns them to the kernel on ``free``, so every window
touches fresh pages again: ~1 M minor page faults and 3.5-5 s of kernel time per window on the
development CPU, a third of the window's CPU time (docs/benchmarks/predictor_levers.md).  With
trimming and ``mmap`` switched off (``mallopt``), freed blocks stay in the heap and the next
window reuses them: 0 faults from the second window on, 4.4 s instead of 6.6 s per window.  The
memory is not handed back until the process ends, so the process's resident size stays at its
peak: right for a ``flareseg predict`` process, which is why only that command (and processes that
call this themselves) does it.  (One tensor of one size freed and allocated again is not reused on
glibc 2.36: torch asks for 64-byte-aligned blocks, which glibc serves with a padded request that
the freed block cannot meet, so the heap grows instead.  A network's mix of sizes settles after one
or two windows; the test and docs/benchmarks/predictor_levers.md measure windows, and an 8-case
folder peaks at the same resident size as one case.)  ``FLARESEG_KEEP_FREED_MEMORY=0`` turns it
off; it is a no-op off Linux or with another C library (e.g. musl).
"""
from __future__ import annotations

import ctypes
import os
import sys

#: mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
ENV = "FLARESEG_KEEP_FREED_MEMORY"


def glibc() -> ctypes.CDLL | None:
    """The process's glibc, or None (not Linux, or another C library)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version          # glibc only
        libc.mallopt
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory(env: dict[str, str] | None = None) -> bool:
    """Stop glibc from trimming the heap and from serving allocations with ``mmap``, for the rest
    of the process.  Returns whether it is now on (False: turned off by ``FLARESEG_KEEP_FREED_MEMORY=0``,
    or not glibc)."""
    env = os.environ if env is None else env
    if env.get(ENV, "1").strip() == "0":
        return False
    libc = glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # -1 as the trim threshold is "never trim" (it is read as the largest size); 0 mmaps at most
    return bool(libc.mallopt(M_TRIM_THRESHOLD, -1)) and bool(libc.mallopt(M_MMAP_MAX, 0))
