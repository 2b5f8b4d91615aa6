"""Which device each local sweep worker runs on (``ddimbench sweep [--workers N] [--devices LIST]``).

``worker_devices`` is a pure function of the sweep's ``device`` key, the worker count, the number of
visible CUDA devices and the optional ``--devices`` list; ``assign_devices`` asks torch for that number.
The rule, as ``--help`` states it (``WORKERS_HELP``, ``DEVICES_HELP``): a ``--devices`` list gets one worker
per entry unless ``--workers`` asks for more (then they share the list round-robin); fewer workers than
listed devices is refused rather than leaving some unused. ``sweep --dry-run`` checks it (``DRY_RUN_HELP``).
"""

from __future__ import annotations

import re

from ddim.errors import DDIMError

__all__ = ["DEVICES_HELP", "DRY_RUN_HELP", "WORKERS_HELP", "assign_devices", "worker_devices"]

WORKERS_HELP = "Worker processes on this machine (default: one per --devices entry, else 1; one GPU each when several)."
DEVICES_HELP = "The workers' devices, e.g. cuda:0,cuda:2: one worker each (more --workers share them; fewer: refused)."
# ``sweep --dry-run`` (``bench.sweep.runner.place_workers``, ``workers_devices``): it places the workers as a run would.
DRY_RUN_HELP = ("Check --workers, --devices, memory and a stored sweep of this name as the run would (a refusal "
                "exits 2), print the workers and their devices (stderr) and the resolved sweep (stdout), "
                "and exit.")  # fmt: skip

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def _parse(devices: str, visible: int) -> list[str]:
    names = [d.strip().lower() for d in devices.split(",")]
    for name in names:
        if not _DEVICE.fullmatch(name):
            raise DDIMError(f"--devices {devices}: {name!r} is not a device; list cpu or cuda:N, e.g. cuda:0,cuda:2")
        index = 0 if name == "cuda" else int(name[5:]) if name.startswith("cuda:") else None
        if index is not None and index >= visible:
            if not visible:
                raise DDIMError(f"--devices {devices}: this machine has no CUDA device; drop --devices or run there")
            raise DDIMError(f"--devices {devices}: {name} is not visible (CUDA devices here: cuda:0 to "
                            f"cuda:{visible - 1}); list those")  # fmt: skip
    if len(set(names)) != len(names):
        raise DDIMError(f"--devices {devices} repeats a device; list each once (workers share them round-robin)")
    return names


def worker_devices(device: str, workers: int | None, visible: int, devices: str | None = None) -> list[str]:
    """The device of worker 0 … ``workers`` − 1 (``workers`` None: not given).

    ``devices`` (comma-separated, e.g. ``cuda:0,cuda:2``) are dealt out round-robin, one worker per entry when
    ``workers`` is None; fewer ``workers`` than entries is a DDIMError. Without it, a sweep on ``auto`` or
    ``cuda`` with several visible GPUs puts worker i on ``cuda:(i mod visible)``; any other ``device`` (``cpu``,
    one chosen ``cuda:N``, or one GPU or none) is every worker's; ``workers`` None is one worker.
    """
    if workers is not None and workers < 1:
        raise DDIMError(f"--workers must be ≥ 1, got {workers}")
    if devices:
        pool = _parse(devices, visible)
        if workers is not None and workers < len(pool):
            raise DDIMError(f"--devices lists {len(pool)} devices but --workers is {workers}; drop --workers (one "
                            f"worker per device) or list {workers} device{'s' * (workers > 1)}")  # fmt: skip
    elif device in ("auto", "cuda") and visible > 1:
        pool = [f"cuda:{i}" for i in range(visible)]
    else:
        pool = [device]
    count = workers if workers is not None else len(pool) if devices else 1
    return [pool[i % len(pool)] for i in range(count)]


def assign_devices(device: str, workers: int | None, devices: str | None = None) -> list[str]:
    """``worker_devices`` for the CUDA devices this process sees."""
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return worker_devices(device, workers, visible, devices)
