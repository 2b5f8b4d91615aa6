"""The paper's whole Table 1 on this machine: sampling images/s at S = 10 / 50 / 1000 and the wall time it would take.

Song et al. (2020), Table 1 and Section 5.1: 50,000 samples per cell, S ∈ {10, 20, 50, 100, 1000} and
five η rows (η = 0, 0.2, 0.5, 1 and σ̂), FID from Inception-v3 features of every sample and of the
training set. The grid is read from ``sweeps/paper-table1.yaml`` (the sweep users run), never restated.

One ``sample`` call of a batch costs ``a + b·S``: ``b`` the S network evaluations plus the sampler's
per-step work, ``a`` the fixed part (the initial noise, setup). ``a`` and ``b`` are fitted per model
from interleaved calls at S = 10 and 50; S = 1000 is the fit's prediction (a measured call there
would take minutes per repeat), and each cell costs ⌈n / batch⌉ such calls. η changes only the
noise draws, which the sampler-overhead rows of the benchmark measure, so η = 0 stands for every row.
Feature extraction is timed on torchvision's Inception-v3 with random weights at 299 × 299, as FID
computes it: the time does not depend on the weights, and torch-fidelity's extractor (a port of the
TensorFlow FID graph) is the same architecture family with a comparable cost, not the identical network.
The job runs the network as the sweep file does: float32, NCHW, the file's batch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.perf.timing import interleave
from bench.perf.workload import run_sampler, sampling_models, setup
from ddim import memory, schedules

GRID = Path(__file__).resolve().parents[2] / "sweeps" / "paper-table1.yaml"
FIT_STEPS = (10, 50)  # measured; the table also shows S = 1000 from the fit
SHOWN_STEPS = (10, 50, 1000)
INCEPTION_SIDE = 299
REFERENCE_IMAGES = 50_000  # CIFAR-10's training split, the reference FID compares against (Section 5.1)


def paper_grid(path: Path = GRID) -> dict[str, Any]:
    """The Table 1 sweep's cells (every seed block) as ``(S, count)`` pairs, its samples per cell and its
    sampling batch (an int, or ``"auto"``), from the sweep file."""
    from bench.sweep.overrides import load_config
    from bench.sweep.spec import SweepSpec

    values = load_config(path)
    axes = {k: tuple(values[k]) for k in ("steps", "eta", "sampler", "seeds") if k in values}
    spec = SweepSpec(name="table1", checkpoint="", dataset="cifar10", T=1000, n=int(values.get("n", SweepSpec.n)),
                     batch=values.get("batch", SweepSpec.batch), **axes)  # fmt: skip
    counts: dict[int, int] = {}
    for cell in spec.cells():
        counts[cell.steps] = counts.get(cell.steps, 0) + 1
    return {"cells": sorted(counts.items()), "n_cells": sum(counts.values()), "n": spec.n, "batch": spec.batch}


def fit(seconds: dict[int, float]) -> tuple[float, float]:
    """``(a, b)`` with ``seconds[S] = a + b·S`` through the two measured S; ``b`` is floored at 0, so the cost
    stays positive from the smaller S up (``a`` may come out slightly negative from timing noise)."""
    (s0, t0), (s1, t1) = sorted(seconds.items())
    b = max((t1 - t0) / (s1 - s0), 0.0)
    return t0 - b * s0, b


def estimate(a: float, b: float, batch: int, grid: dict[str, Any]) -> float:
    """Seconds of sampling for every cell of ``grid`` with one call of ``batch`` costing ``a + b·S``."""
    calls = math.ceil(grid["n"] / batch)
    return sum(count * calls * (a + b * steps) for steps, count in grid["cells"])


def _inception(device: str) -> torch.nn.Module:
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=False, init_weights=False)
    net.fc = torch.nn.Identity()  # the 2048-d pool features FID uses
    return net.eval().to(device)


@torch.no_grad()
def _features(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    x = F.interpolate(images, size=(INCEPTION_SIDE, INCEPTION_SIDE), mode="bilinear", align_corners=False)
    return net(x)


def table1_job(job: dict[str, Any]) -> dict[str, Any]:
    """images/s of ``sample`` at S = 10 / 50 (measured) and 1000 (fitted) per model, Inception features/s,
    and the estimated wall time of the paper's Table 1 grid at the sweep file's batch (``job["batch"]`` if given;
    ``auto``: ``ddim.memory.sampling_batch`` as the sweep's workers size it)."""
    settings = setup(job)
    grid = paper_grid(Path(job["grid"]) if job.get("grid") else GRID)
    batch = job.get("batch") or grid["batch"]
    config, models, _ = sampling_models({**job, "batch": 1}, settings)
    names = list(models)
    if batch == "auto":  # as each sweep worker sizes it (bench.sweep.evaluate)
        shape = (config.in_channels, config.resolution, config.resolution)
        batch = memory.sampling_batch(models[names[0]], shape, torch.device(settings.device))
    batch = int(batch)
    fns = {}
    for name, model in models.items():
        for S in FIT_STEPS:
            ts = schedules.timesteps(S, 1000)
            fns[f"{name}_S{S}"] = lambda m=model, ts=ts: run_sampler(m, config, batch, ts, 0.0, settings)
    feature_batch = int(job.get("feature_batch") or batch)
    net = _inception(settings.device)
    gen = torch.Generator().manual_seed(0)
    shape = (feature_batch, 3, config.resolution, config.resolution)
    images = (torch.rand(shape, generator=gen) * 2 - 1).to(settings.device)
    fns["inception"] = lambda: _features(net, images)
    times = interleave(fns, reps=int(job["reps"]), warmup=1, device=settings.device)
    inception_s = times["inception"]["wall_s"]
    features = grid["n_cells"] * grid["n"] + REFERENCE_IMAGES
    feature_hours = features * inception_s / feature_batch / 3600
    rows = {}
    for name in names:
        a, b = fit({S: times[f"{name}_S{S}"]["wall_s"] for S in FIT_STEPS})
        sampling_hours = estimate(a, b, batch, grid) / 3600
        rows[name] = {
            "fit_a_s": a,
            "fit_b_s": b,
            "images_per_s": {str(S): batch / (a + b * S) for S in SHOWN_STEPS},
            "measured_images_per_s": {str(S): batch / times[f"{name}_S{S}"]["wall_s"] for S in FIT_STEPS},
            "sampling_hours": sampling_hours,
            "total_hours": sampling_hours + feature_hours,
        }
    return {
        "preset": job["preset"], "batch": batch, "feature_batch": feature_batch, "times": times, "models": rows,
        "fit_steps": list(FIT_STEPS), "reference_images": REFERENCE_IMAGES,
        "inception_images_per_s": feature_batch / inception_s, "feature_hours": feature_hours,
        "grid": {**grid, "file": str(job.get("grid") or GRID.relative_to(GRID.parents[1])),
                 "feature_images": features},
    }  # fmt: skip
