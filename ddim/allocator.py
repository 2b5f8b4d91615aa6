"""The process's memory allocator: glibc's malloc tuned for a program that allocates the same large tensors over
and over, as training and sampling do (``keep_freed_memory``). Torch-free, so the CLI calls it before any import
that allocates."""

from __future__ import annotations

import ctypes
import os

# glibc's malloc (mallopt(3)): freed blocks up to MMAP_THRESHOLD are kept for reuse and the heap is not trimmed, so
# the network's large activations stop costing fresh, zero-filled pages from the kernel at every call. One NCHW
# digits evaluation at batch 128 took 13,900 page faults (36 ms of kernel time, 16 % of its CPU time) without this
# and ~100 with it: 1.2x faster on an AMD EPYC (reports/perf/profile.md section 14); the numbers are unchanged.
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest on 64-bit
TRIM_THRESHOLD = 2**31 - 1
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
ALLOCATOR_SWITCH = "DDIM_MALLOC_TUNING"  # 0: leave the allocator as it is
_GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Tune glibc's malloc for a process that allocates the same large tensors over and over (the CLI's commands and
    sweep workers call it first): ``MMAP_THRESHOLD`` and ``TRIM_THRESHOLD``. The price: memory freed stays with the
    process (its RSS does not shrink after a peak). Returns whether it applied: not off glibc (musl's mallopt is a
    no-op, macOS has none), nor when ``DDIM_MALLOC_TUNING=0`` or the user tunes malloc through its environment."""
    if os.environ.get(ALLOCATOR_SWITCH, "1") == "0" or any(k in os.environ for k in _GLIBC_ENV):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process already has
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
