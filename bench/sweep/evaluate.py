"""One sweep cell's work: sample it, measure it, save its images; and the sweep's extras.

``Evaluator`` holds one worker's model (the checkpoint is loaded once per process) and turns a
``Cell`` into a ``bench.store.record.Measurement`` (``bench.sweep.runner`` stores it):
- common random numbers: sample i of seed block b starts from the seed ``seed_base + b·n + i``
  (``SeededNoise``: one generator per sample, so a sample depends neither on the batch size nor on
  the worker);
- exactly n samples, converted with the one uint8 rule and measured in memory (``bench.metrics.fidelity``);
  ``wall_s`` times sampling only; NFE comes from ``ddim.sampling.nfe``;
- the cell's 8x8 grid and its 8-sample strip (the same seeds in every cell) under ``cells/``;
- after the grid, the interpolation strip (section 5.3) and the inversion table (section 5.4).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bench.store.cell import Cell
from bench.store.record import BF16, Measurement, Protocol, Scores
from bench.store.untrusted import artifact_file
from bench.sweep.provenance import library_versions
from bench.sweep.spec import SweepSpec
from ddim import sampling, schedules
from ddim.errors import DDIMError
from ddim.images import save_grid, to_uint8

if TYPE_CHECKING:
    from bench.console import Display

__all__ = ["Evaluator", "device_name"]


class Evaluator:
    """One worker's model: the checkpoint is loaded once, then cells are sampled and measured."""

    def __init__(self, spec: SweepSpec, checkpoint_sha256: str, share: int = 1) -> None:
        """``share``: how many workers use this device; ``batch=auto`` takes that share of its memory."""
        from ddim.checkpoint import load_checkpoint
        from ddim.memory import sampling_batch
        from ddim.runtime import resolve_device, sampling_network, use_compile, warm_up

        self.spec, self.sha256 = spec, checkpoint_sha256
        self.device = resolve_device(spec.device)
        ck = load_checkpoint(spec.checkpoint, map_location="cpu")
        # bf16: every network call of the sweep (cells, interpolation, inversion) alike
        self.model, eager = sampling_network(ck.build_model(self.device), self.device, compile=spec.compile,
                                             channels_last=spec.channels_last, bf16=spec.bf16)  # fmt: skip
        self.alpha_bar, self.T = ck.alpha_bar(), ck.diffusion.T  # float64 ᾱ table, on the CPU
        self.shape = (ck.unet.in_channels, ck.unet.resolution, ck.unet.resolution)  # (C, H, W)
        # batch=auto: sized to this worker's device (the eager model probes: no compiling for the probe's shape)
        auto = not isinstance(spec.batch, int)
        budget = 0.5 / max(1, share)  # half the free memory, split between the workers on this device
        self.batch = min(
            spec.n, sampling_batch(eager, self.shape, self.device, fraction=budget) if auto else spec.batch
        )
        if use_compile(spec.compile, self.device):  # compile every batch shape now, not inside a cell's wall time
            warm_up(self.model, sorted({self.batch, spec.n % self.batch} - {0}), self.shape, self.device)
        self.root, self.versions = Path(spec.artifacts), library_versions()
        self.device_name = device_name(self.device)

    def generate(self, cell: Cell, on_step: Any = None) -> tuple[torch.Tensor, float]:
        """The cell's n samples as uint8 (N, C, H, W) and the sampling wall time in seconds."""
        spec, ts = self.spec, schedules.timesteps(cell.steps, self.T, cell.spacing)
        first, _ = spec.seed_range(cell.seed_block)
        out = torch.empty((spec.n, *self.shape), dtype=torch.uint8)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        batches = [(lo, min(spec.n, lo + self.batch)) for lo in range(0, spec.n, self.batch)]
        # CRN: sample i of every cell draws from seed first + i.
        streams = sampling.noise_batches((range(first + lo, first + hi) for lo, hi in batches), self.shape, self.device)
        drawn = next(streams)
        for lo, hi in batches:
            noise, x_T = drawn
            x = sampling.sample(self.model, x_T, self.alpha_bar, ts, eta=cell.eta or 0.0, sampler=cell.sampler,
                                noise=noise, callback=on_step)  # fmt: skip
            drawn = next(streams, None)  # the next x_T on the host while a GPU still runs this batch's last steps
            out[lo:hi] = to_uint8(x).cpu()  # .cpu() also waits for the GPU
        return out, time.perf_counter() - start

    def evaluate(self, cell: Cell, display: Display) -> Measurement:
        """Sample a cell, save its grid and strip, measure it."""
        from bench.metrics.fidelity import compute_metrics

        spec = self.spec
        batches = -(-spec.n // self.batch)
        display.cell_start(cell.label, batches * len(schedules.timesteps(cell.steps, self.T, cell.spacing)))
        u8, wall = self.generate(cell, lambda *_: display.step())
        grid, strip = f"cells/{cell.slug}.png", f"cells/{cell.slug}-strip.png"
        save_grid(u8[:64], self.root / grid)
        save_grid(u8[:8], self.root / strip, nrow=8)  # same seeds in every cell: consistency rows
        display.phase("metrics")
        m = compute_metrics(u8, dataset=spec.dataset, data_root=spec.data_root, resolution=self.shape[-1],
                            extractor=spec.extractor, metrics=spec.metrics, n_expected=spec.n,
                            device=str(self.device), cache_dir=spec.cache_dir,
                            inception_weights=spec.inception_weights)  # fmt: skip
        first, last = spec.seed_range(cell.seed_block)
        protocol = Protocol(
            checkpoint_sha256=self.sha256,
            device=self.device_name,
            extractor=m["extractor"],
            extractor_sha256=m["extractor_sha256"],
            ref_key=m["ref_key"],
            ref_sha256=m["ref_sha256"],
            precision=BF16 if spec.bf16 else None,
        )
        return Measurement(nfe=sampling.nfe(cell.steps, self.T, cell.sampler), n=spec.n, seeds=f"{first}-{last}",
                           scores=Scores.split(m)[0], wall_s=wall, images_per_s=spec.n / max(wall, 1e-9), grid=grid,
                           strip=strip, protocol=protocol, versions=self.versions)  # fmt: skip

    @staticmethod
    def warm_metrics(spec: SweepSpec) -> None:
        """Build the extractor and the cached reference statistics once, before workers start."""
        from bench.metrics.fidelity import ISC_SPLITS, compute_metrics
        from ddim.data import dataset_info

        k, channels = max(ISC_SPLITS, min(spec.n, 64)), dataset_info(spec.dataset).channels
        shape = (k, channels, spec.resolution, spec.resolution)
        fake = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        compute_metrics(
            fake, dataset=spec.dataset, data_root=spec.data_root, resolution=spec.resolution,
            extractor=spec.extractor, metrics=spec.metrics, cache_dir=spec.cache_dir,
            inception_weights=spec.inception_weights,
        )  # fmt: skip

    def extras(self, study: Any, display: Display) -> dict[str, Any]:
        """Interpolation strip (slerp of two seeds' x_T, η = 0, largest S; section 5.3) and, when
        asked, the inversion table (section 5.4, Table 2), stored as the study's ``extras``."""
        spec = self.spec
        steps = (
            sorted(spec.steps) if isinstance(spec.steps, tuple) else sorted({int(spec.steps.lo), int(spec.steps.hi)})
        )
        key = {"steps": steps, "spacing": spec.spacing[0], "interpolation": spec.interpolation,
               "inversion": spec.inversion, "inversion_n": spec.inversion_n}  # fmt: skip
        old = study.user_attrs.get("extras") or {}
        if old.get("key") == key and (not old.get("interpolation") or artifact_file(self.root, old["interpolation"])):
            return old
        out: dict[str, Any] = {"key": key}
        ts = {s: schedules.timesteps(s, self.T, spec.spacing[0]) for s in steps}
        if spec.interpolation:
            display.note("extras: interpolation strip")
            z = sampling.SeededNoise([spec.seed_base, spec.seed_base + 1], self.shape, self.device).initial()
            x = sampling.interpolate(self.model, z[0], z[1], self.alpha_bar, ts[steps[-1]], n=8)
            save_grid(x, self.root / "extras/interpolation.png", nrow=8)
            out["interpolation"] = "extras/interpolation.png"
        if spec.inversion:
            display.note(f"extras: inversion table at S = {', '.join(map(str, steps))}")
            x0 = self._real_images(spec.inversion_n)
            out["inversion"] = [{"steps": s, "mse": self._inversion_mse(ts[s], x0)} for s in steps]
        study.set_user_attr("extras", out)
        return out

    def _real_images(self, k: int) -> torch.Tensor:
        from ddim.data import load_dataset

        try:
            ds = load_dataset(self.spec.dataset, self.spec.data_root, "test", self.shape[-1])
        except DDIMError:  # a dataset without a test split
            ds = load_dataset(self.spec.dataset, self.spec.data_root, "train", self.shape[-1])
        return torch.stack([ds[i][0] for i in range(min(k, len(ds)))])  # (k, C, H, W) in [-1, 1]

    def _inversion_mse(self, ts: torch.Tensor, x0: torch.Tensor) -> float:
        """Per-dimension MSE (pixels in [0, 1]) of encode (η = 0, S steps) then decode."""
        total = 0.0
        for lo in range(0, len(x0), self.batch):
            x = x0[lo : lo + self.batch].to(self.device)
            x_T = sampling.invert(self.model, x, self.alpha_bar, ts)
            rec = sampling.sample(self.model, x_T, self.alpha_bar, ts, eta=0.0)
            total += float(((rec.clamp(-1, 1) - x) / 2).square().sum())
        return total / x0.numel()


def device_name(device: torch.device) -> str:
    """The device as stored with each trial: ``cuda:0 (<GPU model>)`` on CUDA, else ``cpu``."""
    return f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
