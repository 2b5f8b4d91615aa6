"""Timing and memory primitives for ``bench.perf.run``: interleaved repeats, medians, peak memory, machine info.

Every comparison is measured in one process by interleaving its candidates (A B A B ...) and
taking per-candidate medians, so load from other processes hits all candidates alike and cancels in
their ratio. Each repeat records wall time (``perf_counter``; CUDA work is synchronised first) and
the process's CPU time (``process_time``): with one intra-op thread the CPU time is close to the
time the work would take on an idle core, which is the steadier figure on a shared machine.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from ddim import allocator

Fn = Callable[[], Any]


def sync(device: str | torch.device) -> None:
    """Wait for queued GPU work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleave(fns: dict[str, Fn], *, reps: int, warmup: int = 1, device: str = "cpu") -> dict[str, dict[str, Any]]:
    """Run each candidate ``warmup`` times, then ``reps`` rounds of every candidate in turn.

    Returns per candidate: ``wall_s`` / ``cpu_s`` medians, the raw lists and the spread
    (max/min of the wall times), all in seconds.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            sync(device)
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return {
        k: {
            "wall_s": statistics.median(wall[k]),
            "cpu_s": statistics.median(cpu[k]),
            "spread": max(wall[k]) / max(min(wall[k]), 1e-12),
            "wall_all": [round(v, 6) for v in wall[k]],
        }
        for k in fns
    }


def ratio(slow: float, fast: float) -> float:
    """How many times faster ``fast`` is (a time ratio > 1 means faster)."""
    return slow / fast if fast > 0 else float("nan")


# --- memory ------------------------------------------------------------------------------------


def rss_peak_mb() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB, macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def _status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (``VmRSS``, ``VmHWM``) in MiB; None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_now_mb() -> float | None:
    return _status_mb("VmRSS")


def _reset_rss_peak() -> bool:
    """Linux (≥ 4.0): reset the peak RSS to the current RSS (``clear_refs`` value 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of a block: CUDA's allocator peak on a GPU, else the peak RSS's rise over the RSS at entry.

    On Linux the peak RSS is reset at entry, so the figure is the block's own high-water mark;
    elsewhere it is the growth of the process's peak, meaningful only in a fresh process that has
    done nothing heavy before (``bench.perf.run`` runs each memory measurement in its own subprocess).
    """

    def __init__(self, device: str | torch.device) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.device = device
        self.mb = 0.0
        self.kind = "cuda_max_allocated" if self.cuda else "ru_maxrss_delta"

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        now = _rss_now_mb()
        if now is not None and _reset_rss_peak():
            self.kind, self._base = "rss_peak_minus_start", now
        else:
            self._base = rss_peak_mb()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            sync(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / (1 << 20)
        elif self.kind == "rss_peak_minus_start":
            # clear_refs resets VmHWM only; getrusage's ru_maxrss keeps the process's all-time peak.
            self.mb = max(0.0, (_status_mb("VmHWM") or 0.0) - self._base)
        else:
            self.mb = max(0.0, rss_peak_mb() - self._base)


# --- the machine -------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "malloc_tuned": allocator.tuned(),  # as the CLI runs (bench.perf's main tunes it first)
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        info["diffusers"] = None
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info
