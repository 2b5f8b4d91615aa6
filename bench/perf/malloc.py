"""glibc malloc tuned (``ddim.allocator.keep_freed_memory``) against untuned, in fresh processes (``make bench``).

The tuning is process-wide and lasts the process's life, so it cannot be interleaved inside one process as the
other sections' candidates are: ``compare`` starts ``pairs`` pairs of fresh processes, one untuned
(``DDIM_MALLOC_TUNING=0``) and one tuned (the environment as it is), alternating which goes first, and each runs
``malloc_job``: one network evaluation, one DDIM sampling call and one training step of the same model, each as a
block of its own (a warm-up, then ``reps`` timed calls: process-CPU-time medians) and counted in minor page faults
per call. A pair's ratio is untuned over tuned; the section reports every pair's, their median and whether the
pairs agree on its side of 1: fresh processes on a shared machine differ by ±20 % among themselves (the same side,
the same code), so pairs that disagree mean the effect is within that noise.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

CALLS = ("eval", "sample", "train")
UNTUNED_ENV = {"DDIM_MALLOC_TUNING": "0"}
NOT_TUNED = ("the tuned processes' malloc was not tuned (DDIM_MALLOC_TUNING=0, a MALLOC_* variable or glibc.malloc. "
             "tunable, another allocator in LD_PRELOAD, or no glibc): nothing to compare")  # fmt: skip


def _minor_faults() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _block(fn: Callable[[], Any], reps: int) -> dict[str, Any]:
    """One warm-up call, then ``reps`` calls: medians of process CPU time, wall time and minor page faults."""
    fn()
    cpu, wall, faults = [], [], []
    for _ in range(reps):
        f0, c0, w0 = _minor_faults(), time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        f1 = _minor_faults()
        if f0 is not None and f1 is not None:
            faults.append(f1 - f0)
    return {"cpu_s": statistics.median(cpu), "wall_s": statistics.median(wall),
            "faults": statistics.median(faults) if faults else None}  # fmt: skip


def malloc_job(job: dict[str, Any]) -> dict[str, Any]:
    """One side of the comparison, in this (fresh) process: whatever ``keep_freed_memory`` did at its start."""
    import torch

    from bench.perf.models import build, prepare
    from bench.perf.workload import batch_data, evaluate, run_sampler, setup, train_step, unet_config
    from ddim import schedules
    from ddim.allocator import tuned

    settings = setup(job)
    config, reps = unet_config(job["preset"]), int(job["reps"])
    models = {}
    for mode in ("eval", "train"):  # the same weights, in each mode
        torch.manual_seed(0)
        model = build("ours", config)
        models[mode] = prepare(model.eval() if mode == "eval" else model.train(), settings)
    opt = torch.optim.Adam(models["train"].parameters(), lr=2e-4)
    eval_data = batch_data(config, int(job["eval_batch"]), settings)
    train_data = batch_data(config, int(job["train_batch"]), settings)
    ts = schedules.timesteps(int(job["sample_steps"]), 1000)
    fns = {
        "eval": lambda: evaluate(models["eval"], settings, eval_data),
        "sample": lambda: run_sampler(models["eval"], config, int(job["sample_batch"]), ts, 0.0, settings),
        "train": lambda: train_step(models["train"], opt, settings, train_data),
    }
    return {"tuned": tuned(), "calls": {name: _block(fns[name], reps) for name in CALLS}}


def compare(job: dict[str, Any], run: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """``job["pairs"]`` pairs of fresh processes (``run(job, env=...)``), untuned and tuned in alternating order."""
    sides: dict[str, list[dict[str, Any]]] = {"untuned": [], "tuned": []}
    for i in range(int(job["pairs"])):
        for side in ("untuned", "tuned") if i % 2 == 0 else ("tuned", "untuned"):
            res = run(job, env=UNTUNED_ENV if side == "untuned" else {})
            if "error" in res:
                return {"error": f"{side} process: {res['error']}"}
            if res["tuned"] != (side == "tuned"):  # off glibc, or the user's own malloc settings: stop at once
                return {"skipped": NOT_TUNED, "preset": job["preset"]}
            sides[side].append(res)
    out: dict[str, Any] = {k: job[k] for k in ("preset", "eval_batch", "sample_batch", "train_batch", "sample_steps")}
    out["pairs"], out["calls"] = len(sides["tuned"]), {}
    for name in CALLS:
        untuned = [r["calls"][name] for r in sides["untuned"]]
        tuned = [r["calls"][name] for r in sides["tuned"]]
        ratios = [u["cpu_s"] / t["cpu_s"] for u, t in zip(untuned, tuned)]
        out["calls"][name] = {
            "untuned_cpu_s": statistics.median(u["cpu_s"] for u in untuned),
            "tuned_cpu_s": statistics.median(t["cpu_s"] for t in tuned),
            "ratios": [round(r, 3) for r in ratios],
            "speedup": statistics.median(ratios),
            "pairs_agree": (all(r > 1 for r in ratios) or all(r < 1 for r in ratios)) if len(ratios) > 1 else None,
            "untuned_faults": _median([u["faults"] for u in untuned]),
            "tuned_faults": _median([t["faults"] for t in tuned]),
        }
    return out


def _median(values: list[Any]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None
