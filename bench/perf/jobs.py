"""The measurements of ``bench.perf.run``, one function per job; each also runs as a fresh subprocess.

A job is a JSON-able dict (``kind`` plus its parameters) and returns a JSON-able dict. Run alone,
``python -m bench.perf.jobs '<job json>'`` prints its result on the last line after ``PERF_RESULT``:
``bench.perf.run`` starts one such process per memory measurement, so a peak RSS belongs to one model.

- ``train``:  forward + backward + Adam step of ours and diffusers' twin, interleaved (or one
  model's peak memory when ``memory`` is set), and beside them the step's convolutions alone in
  both memory formats (``bench.perf.floor``), whose time bounds what any exact rewrite of the rest could gain.
- ``sample``: ``ddim.sampling.sample`` with ``SeededNoise`` at each (S, η), with ours and with
  diffusers' twin, interleaved with S bare network evaluations of ours (the sampler's overhead).
- ``eval``, ``compile``: one network evaluation against its convolution floor, and the compiled
  network against eager (``bench.perf.network``).
- ``sweep``:  see ``bench.perf.sweep``; ``table1``: see ``bench.perf.table1``; ``malloc``: one side of
  ``bench.perf.malloc``'s comparison.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import torch

from bench.perf import floor
from bench.perf.models import RunSettings, autocast, build, n_params, prepare
from bench.perf.timing import PeakMemory, interleave, ratio, sync
from bench.perf.workload import batch_data, run_sampler, sampling_models, setup, time_basis, train_step, unet_config
from ddim import schedules
from ddim.allocator import keep_freed_memory
from ddim.errors import DDIMError
from ddim.sampling import SeededNoise
from ddim.unet import UNetConfig

RESULT_TAG = "PERF_RESULT "


def train_job(job: dict[str, Any]) -> dict[str, Any]:
    """Training throughput of ``job["models"]`` (interleaved), or the peak memory of one model."""
    settings = setup(job)
    config, batch = unet_config(job["preset"]), int(job["batch"])
    names = list(job.get("models", ["ours", "diffusers"]))
    data = batch_data(config, batch, settings)
    if job.get("memory"):
        (name,) = names
        with PeakMemory(settings.device) as mem:
            torch.manual_seed(0)
            model = prepare(build(name, config).train(), settings)
            opt = torch.optim.Adam(model.parameters(), lr=2e-4)
            for _ in range(2):
                train_step(model, opt, settings, data)
        return {"model": name, "peak_mb": round(mem.mb, 1), "memory_kind": mem.kind}

    models, fns, params = {}, {}, {}
    for name in names:
        torch.manual_seed(0)
        model = build(name, config).train()
        params[name] = n_params(model)
        model = prepare(model, settings)
        opt = torch.optim.Adam(model.parameters(), lr=2e-4)
        models[name] = (model, opt)
        fns[name] = lambda m=model, o=opt: train_step(m, o, settings, data)
    replays = {}
    if "ours" in models:
        replays = floor.floors(models["ours"][0], settings, data, backward=True)
        key, other = floor.other_format(settings)  # ours in the other memory format too
        torch.manual_seed(0)
        m = prepare(build("ours", config).train(), other)
        o, d = torch.optim.Adam(m.parameters(), lr=2e-4), batch_data(config, batch, other)
        fns[key] = lambda: train_step(m, o, other, d)
        floor.unfused_candidate(fns, settings)
    fns.update(replays)
    times = interleave(fns, reps=int(job["reps"]), warmup=int(job.get("warmup", 1)), device=settings.device)
    out: dict[str, Any] = {"preset": job["preset"], "batch": batch, "params": params, "times": times}
    basis = out["basis"] = time_basis(settings)
    out["images_per_s"] = {k: batch / times[k][basis] for k in fns if k not in replays}  # the models, not replays
    out["images_per_s_wall"] = {k: batch / times[k]["wall_s"] for k in fns if k not in replays}
    if "ours" in times and "diffusers" in times:
        out["speedup"] = ratio(times["diffusers"][basis], times["ours"][basis])
        out["speedup_wall"] = ratio(times["diffusers"]["wall_s"], times["ours"]["wall_s"])
        out["speedup_cpu"] = ratio(times["diffusers"]["cpu_s"], times["ours"]["cpu_s"])
    if replays:
        out.update(floor.summary(times, basis, replays, settings))
    return out


@torch.no_grad()
def _bare(model: torch.nn.Module, x: torch.Tensor, t_batches: list[torch.Tensor], settings: RunSettings) -> None:
    with autocast(settings):
        for t in t_batches:
            model(x, t)


class _Timed:
    """A model that adds up its own evaluation time: the sampler's overhead measured inside one call."""

    def __init__(self, model: torch.nn.Module, device: str) -> None:
        self.model, self.device, self.seconds = model, device, 0.0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sync(self.device)
        start = time.perf_counter()
        out = self.model(x, t)
        sync(self.device)
        self.seconds += time.perf_counter() - start
        return out


def _sample_row(models: dict[str, torch.nn.Module], first: str, config: UNetConfig, batch: int, S: int, eta: float,
                x: torch.Tensor, reps: int, settings: RunSettings) -> dict[str, Any]:  # fmt: skip
    """One (S, η): every model's ``sample`` call, S bare evaluations of the first model, and a ``sample``
    call whose evaluations are timed inside it, interleaved.

    Two overheads of ``sample`` over its network evaluations: against the interleaved bare evaluations
    (``overhead_pct_wall``), and inside one call (``overhead_pct_in_situ``: call time over the time
    spent in the model, both under the same load). The in-situ figure is the primary one on the CPU,
    where other processes' load moves between repeats; on CUDA the per-evaluation synchronisation it
    needs would serialise host and GPU, so there the bare comparison is primary.
    """
    ts = schedules.timesteps(S, 1000)
    t_batches = [torch.full((batch,), int(t), device=settings.device, dtype=torch.long) for t in ts]
    timed, in_situ = _Timed(models[first], settings.device), []

    def sample_in_situ() -> None:
        timed.seconds, start = 0.0, time.perf_counter()
        run_sampler(timed, config, batch, ts, eta, settings)
        sync(settings.device)
        in_situ.append(100 * ((time.perf_counter() - start) / timed.seconds - 1))

    fns = {name: (lambda m=m: run_sampler(m, config, batch, ts, eta, settings)) for name, m in models.items()}
    fns["bare"] = lambda: _bare(models[first], x, t_batches, settings)
    fns["in_situ"] = sample_in_situ
    times = interleave(fns, reps=reps, warmup=1, device=settings.device)
    row: dict[str, Any] = {"steps": S, "eta": eta, "times": times}
    basis = row["basis"] = time_basis(settings)
    row["images_per_s"] = {k: batch / times[k][basis] for k in models}
    row["images_per_s_wall"] = {k: batch / times[k]["wall_s"] for k in models}
    row["overhead_pct_wall"] = 100 * (times[first]["wall_s"] / times["bare"]["wall_s"] - 1)
    row["overhead_pct_cpu"] = 100 * (times[first]["cpu_s"] / times["bare"]["cpu_s"] - 1)
    row["overhead_pct_in_situ"] = statistics.median(in_situ[1:])  # the first run was the warm-up
    cuda = settings.device.startswith("cuda")
    row["overhead_pct"] = row["overhead_pct_wall"] if cuda else row["overhead_pct_in_situ"]
    row["overhead_primary"] = "bare" if cuda else "in_situ"
    if "ours" in times and "diffusers" in times:
        row["speedup"] = ratio(times["diffusers"][basis], times["ours"][basis])
        row["speedup_wall"] = ratio(times["diffusers"]["wall_s"], times["ours"]["wall_s"])
    return row


def sample_job(job: dict[str, Any]) -> dict[str, Any]:
    """Sampling images/s at each (S, η) for ours and diffusers' twin, and the sampler's overhead."""
    settings = setup(job)
    config, models, batch = sampling_models(job, settings)
    names = list(models)
    if job.get("memory"):
        (name,) = names
        ts = schedules.timesteps(int(job["steps"][0]), 1000)
        with PeakMemory(settings.device) as mem:
            run_sampler(models[name], config, batch, ts, 1.0, settings)
        return {"model": name, "batch": batch, "peak_mb": round(mem.mb, 1), "memory_kind": mem.kind}

    # NCHW like the sampler's x_T (SeededNoise), so bare and sampled evaluations see the same input layout.
    x = torch.randn(batch, config.in_channels, config.resolution, config.resolution, device=settings.device)
    rows = []
    for S in job["steps"]:
        for eta in job["etas"]:
            rows.append(_sample_row(models, names[0], config, batch, int(S), float(eta), x, int(job["reps"]), settings))
    host = _host_noise_ms(config, batch, settings)
    return {"preset": job["preset"], "batch": batch, "rows": rows, "host_noise_ms": host}


def _host_noise_ms(config: UNetConfig, batch: int, settings: RunSettings, reps: int = 7) -> dict[str, float]:
    """Medians (ms) of the host's noise work for one ``sample`` call of ``batch``: seeding the per-sample generators,
    drawing x_T and one step's z (each copied to the device and waited for). The first two come before the first
    network call, so the GPU waits for them; a step's z is drawn while the GPU computes the step."""
    shape, device = (config.in_channels, config.resolution, config.resolution), settings.device
    x = torch.zeros((batch, *shape), device=device)
    times: dict[str, list[float]] = {"generators": [], "x_T": [], "step_z": []}
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        noise = SeededNoise(range(batch), shape, device)
        t1 = time.perf_counter()
        noise.initial()
        sync(device)
        t2 = time.perf_counter()
        noise(0, x)
        sync(device)
        t3 = time.perf_counter()
        for key, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            times[key].append(1e3 * seconds)
    return {key: round(statistics.median(v), 3) for key, v in times.items()}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    kind = job.get("kind")
    if kind == "train":
        return train_job(job)
    if kind == "sample":
        return sample_job(job)
    if kind in ("eval", "compile"):
        from bench.perf import network

        return network.eval_job(job) if kind == "eval" else network.compile_job(job)
    if kind == "table1":
        from bench.perf.table1 import table1_job

        return table1_job(job)
    if kind == "malloc":
        from bench.perf.malloc import malloc_job

        return malloc_job(job)
    if kind == "sweep":
        from bench.perf.sweep import sweep_job

        setup(job)
        return sweep_job(job)
    raise DDIMError(f"unknown benchmark job kind {kind!r}")


def job_error(err: BaseException) -> dict[str, str]:
    """A failed job's result: the exception's type and message on one line (CUDA's messages span several)."""
    return {"error": " ".join(f"{type(err).__name__}: {err}".split())}


def main(argv: list[str]) -> int:
    keep_freed_memory()  # a job's own process allocates as the CLI's do (ddim.allocator)
    job = json.loads(argv[0])
    try:
        result = run_job(job)
        sync(job["settings"]["device"])
    except Exception as err:  # the parent reads this line; the traceback's last line alone can hide the cause
        result = job_error(err)
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
