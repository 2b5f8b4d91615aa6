"""Sweep overhead: a small grid's wall time against its network-evaluation + feature-extraction time.

The grid (digits, S × η cells of n samples each, FID/IS/KID with the classifier extractor) runs
twice, each time with a fresh reference-statistics cache so the first cell computes the
reference statistics and every later cell must hit the cache:

- ``bench.sweep.runner``: the real ``run_sweep`` (Optuna, SQLite, grids, the result store), one worker;
- ``loop``: a bare loop of ``ddim.sampling.sample`` + ``bench.metrics.fidelity.compute_metrics`` per cell,
  the floor any harness pays.

``UNet.forward`` and the classifier extractor's ``forward`` are timed in place while the grid runs
(on a GPU each is synchronised), so "compute" is exactly the time spent in them, and
overhead = (wall − compute) / wall; imports happen before the clock starts (reported as
``imports_s``). The number of images that pass through the extractor shows the
reference was extracted once: cells·n + reference count (a miss per cell would add the reference
count to every cell). The model has random weights: the time of an evaluation does not depend on them.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from bench.perf.timing import PeakMemory, sync
from ddim.errors import DDIMError

DATASET = "digits"


class Meter:
    """Accumulates the time spent in wrapped calls and how many images went through them."""

    def __init__(self, device: str) -> None:
        self.device, self.seconds, self.calls, self.images = device, 0.0, 0, 0

    def wrap(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(module: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            sync(self.device)
            start = time.perf_counter()
            out = fn(module, x, *args, **kwargs)
            sync(self.device)
            self.seconds += time.perf_counter() - start
            self.calls += 1
            self.images += len(x)
            return out

        return timed


@contextlib.contextmanager
def patched(cls: type, meter: Meter) -> Iterator[None]:
    """Time ``cls.forward`` into ``meter`` for the duration of the block."""
    original = cls.forward
    cls.forward = meter.wrap(original)
    try:
        yield
    finally:
        cls.forward = original


def _write_checkpoint(path: Path, preset_name: str) -> Path:
    from ddim.checkpoint import save_checkpoint
    from ddim.data import dataset_info
    from ddim.schedules import DiffusionConfig
    from ddim.unet import UNet, preset

    torch.manual_seed(0)
    config = preset(preset_name)
    payload = {
        "step": 0,
        "model": UNet(config).state_dict(),
        "unet": config.to_dict(),
        "diffusion": asdict(DiffusionConfig()),
        "dataset": asdict(dataset_info(DATASET)),
        "train": {},
    }
    return save_checkpoint(path, payload)


def _fresh_cache(src: Path, dst: Path) -> dict[str, Any]:
    """A cache dir holding only the (trained once, cached) classifier: reference statistics start cold."""
    from bench.metrics.classifier import ensure_classifier

    start = time.perf_counter()
    weights, info = ensure_classifier(DATASET, cache_dir=src)
    seconds = time.perf_counter() - start
    (dst / "classifier").mkdir(parents=True, exist_ok=True)
    for f in (weights, weights.with_suffix(".json")):
        shutil.copy2(f, dst / "classifier" / f.name)
    return {"classifier_seconds": round(seconds, 2), "classifier_accuracy": info.get("accuracy")}


def _loop_grid(ck: Path, cells: list[tuple[int, float]], n: int, batch: int, cache: Path, device: str) -> None:
    """The faithful loop: per cell, sample n images in batches, then one compute_metrics call."""
    from bench.metrics.fidelity import compute_metrics
    from ddim import schedules
    from ddim.checkpoint import load_checkpoint
    from ddim.images import to_uint8
    from ddim.sampling import SeededNoise, sample

    checkpoint = load_checkpoint(ck)
    model, alpha_bar = checkpoint.build_model(device), checkpoint.alpha_bar()
    shape = (checkpoint.unet.in_channels, checkpoint.unet.resolution, checkpoint.unet.resolution)
    for steps, eta in cells:
        ts = schedules.timesteps(steps, checkpoint.diffusion.T)
        out = torch.empty((n, *shape), dtype=torch.uint8)
        for lo in range(0, n, batch):
            noise = SeededNoise(range(lo, min(n, lo + batch)), shape, device)
            x = sample(model, noise.initial(), alpha_bar, ts, eta=eta, noise=noise)
            out[lo : lo + len(x)] = to_uint8(x).cpu()
        compute_metrics(out, dataset=DATASET, extractor="classifier", n_expected=n, device=device, cache_dir=cache)


def _sweep_grid(ck: Path, steps: list[int], etas: list[float], n: int, batch: int, root: Path, device: str) -> int:
    """The grid through ``bench.sweep.runner.run_sweep`` (one worker, no W&B, no progress bar)."""
    from bench.sweep.resolve import resolve_spec
    from bench.sweep.runner import run_sweep

    tokens = [f"checkpoint={ck}", f"steps={','.join(map(str, steps))}", f"eta={','.join(map(str, etas))}",
              f"n={n}", f"batch={batch}", f"cache_dir={root / 'cache'}", f"device={device}", "interpolation=false",
              f"artifacts={root / 'artifacts'}", "name=perf"]  # fmt: skip
    spec = resolve_spec(tokens)
    summary = run_sweep(spec, storage=f"sqlite:///{root / 'sweep.db'}", wandb="disabled", progress=False)
    if summary.failed or summary.complete != len(steps) * len(etas):
        raise DDIMError(f"the benchmark sweep finished {summary.complete} cells and failed {summary.failed}")
    return summary.complete


def warm_imports(mode: str) -> float:
    """Import what the grid uses before the clock starts: a once-per-process cost, reported apart. Optuna imports
    SQLAlchemy, Alembic and its storage's table models only when its first database storage opens (≈ 1 s on a
    2-core CPU), so for ``bench.sweep`` one in memory is opened here."""
    import importlib

    start = time.perf_counter()
    for name in ["torch_fidelity", "torch_fidelity.metrics", "bench.metrics.fidelity"] + (
        ["bench.sweep.runner", "optuna"] if mode != "loop" else []
    ):
        importlib.import_module(name)
    if mode != "loop":
        from bench.store.storage import open_storage

        open_storage("sqlite:///:memory:")
    return time.perf_counter() - start


def _measure(mode: str, job: dict[str, Any], ck: Path, root: Path) -> dict[str, Any]:
    from bench.metrics.classifier import feature_extractor_class
    from ddim.data import load_dataset
    from ddim.unet import UNet

    device, n, batch = job["settings"]["device"], int(job["n"]), int(job["batch"])
    steps, etas = [int(s) for s in job["steps"]], [float(e) for e in job["etas"]]
    cells = [(s, e) for s in steps for e in etas]
    ref_n = len(load_dataset(DATASET, split="train", download=False))
    imports_s = warm_imports(mode)
    net, ext = Meter(device), Meter(device)
    with patched(UNet, net), patched(feature_extractor_class(), ext), PeakMemory(device) as mem:
        sync(device)
        start = time.perf_counter()
        if mode == "loop":
            _loop_grid(ck, cells, n, batch, root / "cache", device)
        else:
            _sweep_grid(ck, steps, etas, n, batch, root, device)
        sync(device)
        wall = time.perf_counter() - start
    stats = sorted(p.name for p in (root / "cache" / "reference").glob("*stat-fid*"))
    compute = net.seconds + ext.seconds
    return {
        "mode": mode,
        "cells": len(cells),
        "n": n,
        "batch": batch,
        "wall_s": wall,
        "network_s": net.seconds,
        "network_calls": net.calls,
        "extractor_s": ext.seconds,
        "extractor_images": ext.images,
        "extractor_images_expected_one_reference": len(cells) * n + ref_n,
        "reference_count": ref_n,
        "imports_s": imports_s,
        "reference_computed_once": ext.images == len(cells) * n + ref_n and len(stats) == 1,
        "reference_stat_files": stats,
        "overhead_pct": 100 * (wall - compute) / wall,
        "peak_mb": round(mem.mb, 1),
        "memory_kind": mem.kind,
    }


def sweep_job(job: dict[str, Any]) -> dict[str, Any]:
    """Both grid runs (``modes``: ``loop`` and/or ``bench.sweep``), each with a cold reference cache."""
    out: dict[str, Any] = {"dataset": DATASET, "runs": []}
    with tempfile.TemporaryDirectory(prefix="ddimbench-perf-") as tmp:
        tmp_path = Path(tmp)
        ck = _write_checkpoint(tmp_path / "random.pt", "digits")
        for mode in job.get("modes", ["loop", "bench.sweep"]):
            root = tmp_path / mode
            out.update(_fresh_cache(Path(job.get("cache_dir", ".cache/ddimbench")), root / "cache"))
            try:
                out["runs"].append(_measure(mode, job, ck, root))
            except (ImportError, DDIMError) as err:  # bench.sweep.runner is optional here: record why it did not run
                out["runs"].append({"mode": mode, "error": f"{type(err).__name__}: {err}"})
    return out
