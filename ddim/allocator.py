"""The process's memory allocator: glibc's malloc tuned for a program that allocates the same large tensors over
and over, as training and sampling do (``keep_freed_memory``). Torch-free, so the CLI calls it before any import
that allocates."""

from __future__ import annotations

import ctypes
import os

# glibc's malloc (mallopt(3)): freed blocks up to MMAP_THRESHOLD are kept for reuse and the heap is not trimmed, so
# the network's large activations stop costing fresh, zero-filled pages from the kernel at every call. One NCHW
# digits evaluation at batch 128 took 13,900 page faults (36 ms of kernel time, 16 % of its CPU time) without this
# and 0-400 with it; on a shared 2-core AMD EPYC VM 1.17x faster (median of 24 pairs of fresh processes, pairs from
# 0.77x to 1.51x: `make bench` section 6, reports/perf/profile.md sections 14-15); the numbers are unchanged.
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest on 64-bit
TRIM_THRESHOLD = 2**31 - 1
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
ALLOCATOR_SWITCH = "DDIM_MALLOC_TUNING"  # 0: leave the allocator as it is
_OTHER_MALLOCS = ("jemalloc", "tcmalloc", "mimalloc")  # preloaded in glibc's place: glibc's settings would not apply
_applied: list[bool] = []


def _user_tuned() -> bool:
    """Whether the user set glibc malloc's own knobs (any ``MALLOC_*`` variable, a ``glibc.malloc.`` tunable) or
    preloads another allocator."""
    env = os.environ
    return (
        any(k.startswith("MALLOC_") for k in env)
        or "glibc.malloc." in env.get("GLIBC_TUNABLES", "")
        or any(name in env.get("LD_PRELOAD", "") for name in _OTHER_MALLOCS)
    )


def keep_freed_memory() -> bool:
    """Tune glibc's malloc for a process that allocates the same large tensors over and over (the CLI's commands and
    sweep workers call it first): ``MMAP_THRESHOLD`` and ``TRIM_THRESHOLD``. The price: memory freed stays with the
    process (its RSS does not shrink after a peak). Returns whether it applied: not off glibc (musl's mallopt is a
    no-op, macOS has none), nor when ``DDIM_MALLOC_TUNING=0``, the user tunes glibc's malloc through its
    environment or preloads another allocator."""
    if os.environ.get(ALLOCATOR_SWITCH, "1") == "0" or _user_tuned():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process already has
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no process-wide handle
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _applied.append(ok)
    return ok


def tuned() -> bool:
    """Whether ``keep_freed_memory`` tuned this process's malloc (for a benchmark's record; changes nothing)."""
    return any(_applied)
