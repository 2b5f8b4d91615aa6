"""One network evaluation against its convolution floor, and the compiled network against eager.

- ``eval``: one ε_θ(x_t, t) evaluation at the benchmark sweep's batch size (128 on the CPU; what each
  sampling step costs), of ours and of diffusers' twin, interleaved with the evaluation's convolutions
  replayed alone in both memory formats (``bench.perf.floor``): ours over the faster floor is the
  sampling target's ratio; ours also in the other precision (float32 / bf16 autocast, the sweep's ``bf16=true``),
  not part of the floor.
- ``compile``: ours eager against ``torch.compile(ours)`` (inductor), for a training step and for one
  evaluation. The first call of the compiled model compiles (from an empty on-disk cache, as a user's
  first run does); it is timed on its own and left out of the per-call medians, so *compile s* = first
  call − a steady call, and the speed-up is amortised.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch

from bench.perf import floor
from bench.perf.models import build, prepare
from bench.perf.timing import interleave, ratio, sync
from bench.perf.workload import batch_data, evaluate, setup, time_basis, train_step, unet_config


def eval_job(job: dict[str, Any]) -> dict[str, Any]:
    """One evaluation of ``job["models"]`` at ``job["batch"]``, interleaved with its convolution floors."""
    settings = setup(job)
    config, batch = unet_config(job["preset"]), int(job["batch"])
    data = batch_data(config, batch, settings)
    fns, models = {}, {}
    for name in job.get("models", ["ours", "diffusers"]):
        torch.manual_seed(0)
        models[name] = model = prepare(build(name, config).eval(), settings)
        fns[name] = lambda m=model: evaluate(m, settings, data)
    replays = floor.floors(models["ours"], settings, data, backward=False)
    key, other = floor.other_format(settings)  # ours in the other memory format too
    torch.manual_seed(0)
    m, d = prepare(build("ours", config).eval(), other), batch_data(config, batch, other)
    fns[key] = lambda: evaluate(m, other, d)
    floor.unfused_candidate(fns, settings)
    # Ours in the other precision too (float32 beside a bf16 run, as on CUDA; else bf16): what `sweep bf16=true` gains.
    precision = "fp32" if settings.bf16 else "bf16"
    flipped = replace(settings, bf16=not settings.bf16)
    fns[f"ours_{precision}"] = lambda: evaluate(models["ours"], flipped, data)
    times = interleave({**fns, **replays}, reps=int(job["reps"]), warmup=1, device=settings.device)
    basis = time_basis(settings)
    out: dict[str, Any] = {"preset": job["preset"], "batch": batch, "times": times, "basis": basis}
    out["images_per_s"] = {k: batch / times[k][basis] for k in fns}  # ours, diffusers, ours in the other format
    if "diffusers" in fns:
        out["speedup"] = ratio(times["diffusers"][basis], times["ours"][basis])
    fp32, bf16 = ("ours_fp32", "ours") if settings.bf16 else ("ours", "ours_bf16")
    out["bf16_speedup"] = ratio(times[fp32][basis], times[bf16][basis])
    return {**out, **floor.summary(times, basis, replays, settings)}


def _first_call(fn: Any, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def _compare(fns: dict[str, Any], what: str, batch: int, reps: int, settings: Any) -> dict[str, Any]:
    """The compiled candidate's first call (it compiles) on its own, then both interleaved."""
    first = _first_call(fns["compiled"], settings.device)
    times = interleave(fns, reps=reps, warmup=1, device=settings.device)
    basis = time_basis(settings)
    eager, fast = times["eager"]["wall_s"], times["compiled"]["wall_s"]  # wall: the time compiling took
    compile_s = max(0.0, first - fast)
    return {"what": what, "batch": batch, "times": times, "basis": basis, "first_call_s": first,
            "compile_s": compile_s, "speedup": ratio(times["eager"][basis], times["compiled"][basis]),
            "break_even_calls": break_even(compile_s, eager, fast)}  # fmt: skip


def break_even(compile_s: float, eager_s: float, compiled_s: float) -> int | None:
    """The calls after which compiling has paid for itself (None: compiled calls are not faster)."""
    saved = eager_s - compiled_s
    return math.ceil(compile_s / saved) if saved > 0 else None


@contextlib.contextmanager
def cold_compile_cache() -> Iterator[None]:
    """Inductor's (and Triton's) on-disk caches in a fresh folder: a compile is timed as a user's first one,
    not replayed from an earlier run's cache (which makes it 10× shorter)."""
    keys = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
    saved = {k: os.environ.get(k) for k in keys}
    with tempfile.TemporaryDirectory(prefix="ddimbench-inductor-") as folder:
        os.environ.update({k: os.path.join(folder, k.split("_")[0].lower()) for k in keys})
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def compile_job(job: dict[str, Any]) -> dict[str, Any]:
    """Ours eager vs compiled: a training step at ``job["batch"]``, then one evaluation at ``job["eval_batch"]``,
    each compiled from a cold cache."""
    with cold_compile_cache():
        return _compile_rows(job)


def _compile_rows(job: dict[str, Any]) -> dict[str, Any]:
    settings = replace(setup(job), compile=False)  # compiled here, once, beside its eager twin
    config, backend, reps = unet_config(job["preset"]), job.get("backend", "inductor"), int(job["reps"])
    torch.manual_seed(0)
    eager = prepare(build("ours", config).train(), settings)
    twin = copy.deepcopy(eager)
    fast = torch.compile(twin, backend=backend)
    batch, eval_batch = int(job["batch"]), int(job["eval_batch"])
    data = batch_data(config, batch, settings)
    opt_e, opt_c = (torch.optim.Adam(m.parameters(), lr=2e-4) for m in (eager, twin))
    fns = {"eager": lambda: train_step(eager, opt_e, settings, data),
           "compiled": lambda: train_step(fast, opt_c, settings, data)}  # fmt: skip
    rows = [_compare(fns, "train step", batch, reps, settings)]
    eager.eval(), twin.eval()
    # The evaluation compiles anew, as a sweep's model does: reusing the training step's compiled module would
    # recompile for the second batch size with a symbolic (dynamic) batch, which no fixed-batch sweep runs.
    torch.compiler.reset()
    fast = torch.compile(twin, backend=backend)
    x = batch_data(config, eval_batch, settings)
    fns = {"eager": lambda: evaluate(eager, settings, x), "compiled": lambda: evaluate(fast, settings, x)}
    rows.append(_compare(fns, "evaluation", eval_batch, reps, settings))
    return {"preset": job["preset"], "backend": backend, "rows": rows}
