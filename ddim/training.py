"""Algorithm 1 (DDPM's L_simple): the ε-prediction loss, and a train loop with EMA and checkpoints.

Protocol of the official code (PAPER.md): Adam (lr 2e-4, eps 1e-8), linear warm-up, grad-norm clip
1.0, EMA of the weights, random horizontal flip where the dataset allows it, data in [-1, 1],
antithetic t (t and T−1−t in one batch), squared error summed over pixels and averaged over images.

Randomness is a pure function of (seed, step): every step draws its batch indices, flips, t and ε
from ``Generator(seed · 1_000_003 + step)``. A resumed run therefore follows the uninterrupted
one exactly (dropout's RNG state is saved in the checkpoint as well).
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ddim import data as ddata
from ddim import sampling, schedules
from ddim.checkpoint import (
    DiffusionConfig,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from ddim.errors import DDIMError
from ddim.runtime import atomic_write_json, resolve_device
from ddim.unet import PRESETS, UNet, UNetConfig, preset

LogFn = Callable[[dict[str, float], int], None]


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; written to ``<run_dir>/config.json``."""

    dataset: str = "digits"
    data_root: str = "data"
    resolution: int | None = None  # None: the dataset's default
    preset: str | None = None  # None: the preset named like the dataset
    run_dir: str = "runs/digits"
    max_steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-4
    warmup: int = 100  # steps of linear lr warm-up
    grad_clip: float = 1.0
    ema_decay: float = 0.9999  # with the usual (1+n)/(10+n) ramp so short runs get a useful EMA
    beta_schedule: str = "linear"
    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    seed: int = 0
    save_every: int = 500
    keep: int = 2  # checkpoints kept on disk (the newest ones)
    sample_every: int = 500  # a sample grid every N steps (0: never)
    grid_size: int = 64
    grid_steps: int = 20
    log_every: int = 25
    device: str = "auto"
    bf16: bool = True  # bf16 autocast, CUDA only
    num_workers: int = 2  # loader processes for file-backed datasets
    download: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        if self.dataset not in ddata.DATASETS:
            raise DDIMError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(ddata.DATASETS)}")
        positive = (
            "max_steps",
            "batch_size",
            "T",
            "save_every",
            "keep",
            "grid_size",
            "grid_steps",
            "log_every",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise DDIMError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        if not (self.lr > 0 and 0 <= self.ema_decay < 1 and self.grad_clip > 0 and self.warmup >= 0):
            raise DDIMError("need lr > 0, 0 ≤ ema-decay < 1, grad-clip > 0 and warmup ≥ 0")
        if self.grid_steps > self.T:
            raise DDIMError(f"--grid-steps {self.grid_steps} exceeds T = {self.T}")
        schedules.betas(self.beta_schedule, 2)  # raises on an unknown name
        resolve_device(self.device)

    def unet_config(self, channels: int, resolution: int) -> UNetConfig:
        name = self.preset or (self.dataset if self.dataset in PRESETS else None)
        if name is None:
            raise DDIMError(f"dataset {self.dataset!r} has no preset of its own; pass --preset ({', '.join(PRESETS)})")
        base = preset(name)
        # A preset fixes the architecture; the data decides channels and resolution.
        return UNetConfig.from_dict({**base.to_dict(), "in_channels": channels, "resolution": resolution})

    def diffusion(self) -> DiffusionConfig:
        return DiffusionConfig(self.beta_schedule, self.T, self.beta_start, self.beta_end)


def diffusion_loss(
    model: Callable, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor
) -> torch.Tensor:
    """L_simple: ‖ε − ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t)‖² summed over pixels, mean over the batch."""
    ab = alpha_bar[t].to(x0.dtype)[:, None, None, None]  # (B, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    return (eps - model(x_t, t).float()).square().sum(dim=(1, 2, 3)).mean()


def antithetic_t(B: int, T: int, generator: torch.Generator) -> torch.Tensor:
    """Half the batch t ~ U{0..T−1}, the other half T−1−t (the official code's variance reduction)."""
    t = torch.randint(0, T, (B // 2 + 1,), generator=generator)
    return torch.cat([t, T - 1 - t])[:B]


class _Batches:
    """Deterministic batches: step k's indices come from the per-step generator alone."""

    def __init__(self, dataset: Any, batch_size: int, device: torch.device, hflip: bool, num_workers: int):
        self.dataset, self.B, self.device, self.hflip = dataset, batch_size, device, hflip
        self.images = getattr(dataset, "images", None)
        if self.images is not None:
            self.images = self.images.to(device)
        self.num_workers = num_workers
        self.N = len(dataset)
        if self.N == 0:
            raise DDIMError("the training dataset is empty; check --dataset and --data-root")

    def get(self, g: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, self.N, (self.B,), generator=g)
        flip = torch.rand(self.B, generator=g) < 0.5
        if self.images is not None:
            x = self.images[idx.to(self.device)]
        else:
            x = torch.stack([self.dataset[int(i)][0] for i in idx]).to(self.device)
        if self.hflip:
            x = torch.where(flip.to(self.device)[:, None, None, None], x.flip(-1), x)
        return x


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to checkpoint and stop at the end of the current step."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @contextmanager
    def installed(self):
        old = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            pass
        try:
            yield self
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.signal = signum


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    interrupted: bool
    last_loss: float | None


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save (N, C, H, W) images in [-1, 1] as one PNG grid (atomic)."""
    from PIL import Image

    from ddim.runtime import atomic_write

    n, c, h, w = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / nrow))
    u8 = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pad = 1
    canvas = torch.zeros(c, rows * (h + pad) + pad, nrow * (w + pad) + pad, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[:, y : y + h, x : x + w] = u8[i]
    arr = canvas.permute(1, 2, 0).numpy()  # (H, W, C)
    img = Image.fromarray(arr[..., 0] if c == 1 else arr)
    return atomic_write(path, lambda f: img.save(f, format="PNG"))


def _config_matches(old: dict[str, Any], new: TrainConfig) -> None:
    """A resumed run must be the same experiment; only run-length / bookkeeping may change."""
    free = {
        "max_steps",
        "save_every",
        "keep",
        "sample_every",
        "log_every",
        "device",
        "num_workers",
        "run_dir",
    }
    free |= {"grid_size", "grid_steps", "download", "data_root"}
    diffs = [k for k, v in new.to_dict().items() if k not in free and old.get(k, v) != v]
    if diffs:
        k = diffs[0]
        raise DDIMError(
            f"--resume: {k} differs from the run's checkpoint ({old.get(k)!r} vs {getattr(new, k)!r}); "
            "use the original settings or a new --run-dir"
        )


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    log: LogFn | None = None,
    on_grid: Callable[[Path, int], None] | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ε_θ with Algorithm 1 until ``cfg.max_steps``; resumable, atomic checkpoints.

    ``log(metrics, step)`` receives loss, lr, grad-norm and throughput every ``log_every`` steps;
    ``progress(step, metrics)`` is called every step (cheap); ``on_grid(path, step)`` per grid.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    run_dir = Path(cfg.run_dir)
    existing = list_checkpoints(run_dir)
    if existing and not resume:
        raise DDIMError(f"{run_dir} already holds checkpoints; pass --resume to continue or choose another --run-dir")

    ds = ddata.load_dataset(cfg.dataset, cfg.data_root, "train", cfg.resolution, cfg.download)
    info = ds.info
    unet_cfg = cfg.unet_config(info.channels, info.resolution)
    diffusion = cfg.diffusion()
    alpha_bar = diffusion.alpha_bar().to(device=device, dtype=torch.float32)

    torch.manual_seed(cfg.seed)
    model = UNet(unet_cfg).to(device)
    ema = UNet(unet_cfg).to(device).eval()
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-8)
    step = 0

    if resume and existing:
        ck = load_checkpoint(run_dir, map_location=device)
        _config_matches(ck.train, cfg)
        if ck.unet != unet_cfg:
            raise DDIMError("--resume: the checkpoint's UNet differs from --preset/--dataset; use a new --run-dir")
        model.load_state_dict(ck.state["model"])
        ema.load_state_dict(ck.state["ema"])
        opt.load_state_dict(ck.state["optimizer"])
        _set_rng_state(ck.state["rng"], device)
        step = ck.step
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", {"train": cfg.to_dict(), "unet": unet_cfg.to_dict()})
    metrics_path = run_dir / "metrics.jsonl"
    _truncate_metrics(metrics_path, step)

    batches = _Batches(ds, cfg.batch_size, device, info.hflip, cfg.num_workers)
    use_bf16 = cfg.bf16 and device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()
    params = [p for p in model.parameters()]
    ema_params = [p for p in ema.parameters()]

    def payload() -> dict[str, Any]:
        return {
            "step": step,
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": _rng_state(device),
            "unet": unet_cfg.to_dict(),
            "diffusion": asdict(diffusion),
            "dataset": asdict(info),
            "train": cfg.to_dict(),
        }

    def checkpoint() -> Path:
        path = save_checkpoint(checkpoint_path(run_dir, step), payload())
        for _, old in list_checkpoints(run_dir)[: -cfg.keep]:
            old.unlink(missing_ok=True)
        return path

    last_ckpt: Path | None = existing[-1][1] if (resume and existing) else None
    last_loss: float | None = None
    window_t, window_n = time.perf_counter(), 0
    stop = _StopFlag()
    model.train()
    with stop.installed():
        while step < cfg.max_steps and stop.signal is None:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            x0 = batches.get(g)
            t = antithetic_t(cfg.batch_size, cfg.T, g).to(device)
            eps = torch.randn(x0.shape, generator=g).to(device)
            # 1. linear warm-up of the learning rate.
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr
            for group in opt.param_groups:
                group["lr"] = lr
            # 2. L_simple, backward, clip, Adam.
            with autocast:
                loss = diffusion_loss(model, x0, t, eps, alpha_bar)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            # 3. a NaN/inf loss stops the run before the optimiser spoils the weights.
            if not torch.isfinite(loss):
                raise DDIMError(
                    f"loss became {float(loss)} at step {step}; lower --lr or check the data "
                    f"(last good checkpoint: {last_ckpt or 'none'})"
                )
            opt.step()
            # 4. EMA with the (1+n)/(10+n) ramp.
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1 - decay)
            step += 1
            window_n += cfg.batch_size
            if progress is not None or step % cfg.log_every == 0:
                last_loss = float(loss)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                now = time.perf_counter()
                metrics = {
                    "loss": last_loss,
                    "mse": last_loss / x0[0].numel(),
                    "lr": lr,
                    "grad_norm": float(grad_norm),
                    "images_per_s": window_n / max(now - window_t, 1e-9),
                }
                window_t, window_n = now, 0
                _append_metrics(metrics_path, step, metrics)
                if log is not None:
                    log(metrics, step)
            if progress is not None:
                progress(step, {"loss": last_loss, "lr": lr})
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                last_ckpt = checkpoint()
            if cfg.sample_every and (step % cfg.sample_every == 0 or step == cfg.max_steps):
                path = _grid(ema, cfg, unet_cfg, alpha_bar, run_dir, step, device)
                if on_grid is not None:
                    on_grid(path, step)
        if stop.signal is not None and (last_ckpt is None or not last_ckpt.name.endswith(f"{step:07d}.pt")):
            last_ckpt = checkpoint()
    return TrainResult(run_dir, step, last_ckpt, stop.signal is not None, last_loss)


@torch.no_grad()
def _grid(ema, cfg, unet_cfg, alpha_bar, run_dir: Path, step: int, device) -> Path:
    """A fixed-seed η = 0 grid from the EMA model, so grids over training are comparable."""
    noise = sampling.SeededNoise(
        range(cfg.grid_size), (unet_cfg.in_channels, unet_cfg.resolution, unet_cfg.resolution), device
    )
    ts = schedules.timesteps(cfg.grid_steps, cfg.T, "uniform")
    x = sampling.sample(ema, noise.initial(), alpha_bar.double().cpu(), ts, eta=0.0)
    return save_grid(x, run_dir / "samples" / f"step-{step:07d}.png")


def _append_metrics(path: Path, step: int, metrics: dict[str, float]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, **metrics}) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log lines past the checkpoint so the log matches the weights."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError):
            continue  # a line cut by a kill
    from ddim.runtime import atomic_write_text

    atomic_write_text(path, "".join(k + "\n" for k in keep))
