"""Algorithm 1 (DDPM's L_simple): the ε-prediction loss, and a resumable, data-parallel train loop.

As in the paper's Algorithm 1 and the official code (ermongroup/ddim ``runners/diffusion.py``, ``functions/losses.py``):
Adam (lr 2e-4, eps 1e-8), grad-norm clip 1.0, batch 128, random horizontal flip where the dataset
allows it, data in [-1, 1], antithetic t (B//2 + 1 free draws t, the rest T−1−t of the first ones),
squared error summed over pixels and averaged over images, an EMA of the weights with μ = ``ema_decay``
(default 0.9999, the official CIFAR-10 / CelebA rate).

Deliberate deviations (defaults), because our runs are short: thousands of steps, not the hundreds of
thousands behind the paper's models.

- Linear lr warm-up over ``warmup`` steps (default 100; ``warmup=0`` gives the official constant lr).
  The official DDIM code has no warm-up and no lr schedule, and the paper (Appendix D.1) names none.
- The EMA decay ramps: update n (0-based) uses d = min(μ, (1+n)/(10+n)) (TensorFlow's ``num_updates``
  rule), so ema₁ = 0.1·θ₀ + 0.9·θ₁ and ema₂ = (2/11)·ema₁ + (9/11)·θ₂. The official EMA uses the fixed
  μ from the first update, so after 2000 steps it still holds 0.9999²⁰⁰⁰ ≈ 82% of the random
  initialisation. The ramp cannot be switched off; from update 89 990 on both rules use d = μ.
- ``digits`` (not a paper dataset) defaults to lr 1e-3 (``train_config.DEFAULT_LR``).
- Each step draws B image indices with replacement (``ddim.batches``) instead of walking epochs of a
  shuffled loader, so that a step's batch is a pure function of (seed, step) and resume is exact.
  ``epochs`` therefore counts images, not passes: epoch k ends at step ceil(k·N/B) of N training
  images (``TrainConfig.with_epochs``), where an EMA sample grid is written.
- ᾱ is the float64 product cast to float32 (``ddim.schedules``), not the official float32 product.

Guarantees (tested in tests/test_training.py and tests/test_distributed.py):

- Randomness is a pure function of (seed, step): images, flips, t and ε come from per-step generators
  (``ddim.batches``) and the global RNG (dropout) is reseeded every step. A run killed at any moment
  and resumed from its newest checkpoint follows the uninterrupted run bit for bit on the CPU (same
  thread count) and on CUDA with ``deterministic=True``.
- SIGINT/SIGTERM finish the current step, write a checkpoint and return ``interrupted=True``; under
  torchrun a signal on any rank stops every rank at the same step. A second SIGINT aborts at once.
- A non-finite loss or gradient norm stops the run with a ``DDIMError``. On CUDA the check is read
  back only at host points (log, checkpoint, grid, stop), so steps never wait for the GPU; a checkpoint
  is written only after that check passed, so no checkpoint ever holds weights from a bad step and the
  last good checkpoint stays as it was.
- Under ``torchrun --nproc_per_node N`` the same call trains with DDP: ``batch_size`` is the global
  batch, every rank draws the same global batch and keeps its 1/N slice, only rank 0 writes. Rank 0
  also reads the checkpoint to resume from and sends it to the others, so only rank 0's node needs
  the run directory. Dropout masks differ per rank (seeded by rank), so DDP matches one process
  exactly in data and noise but not in dropout; with dropout 0 it matches up to float summation order.
"""

from __future__ import annotations

import copy
import gc
import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ddim import data as ddata
from ddim import sampling, schedules
from ddim.batches import DROPOUT, Batches, step_seed
from ddim.checkpoint import checkpoint_path, list_checkpoints, restore_optimizer, save_checkpoint
from ddim.distributed import Context, shard
from ddim.errors import DDIMError
from ddim.files import write_error
from ddim.images import save_grid
from ddim.rundir import abandon_run, append_metrics, open_run, start_run
from ddim.runtime import compiled, numerics
from ddim.train_config import TrainConfig
from ddim.unet import UNet

__all__ = ["TrainResult", "diffusion_loss", "train"]

LogFn = Callable[[dict[str, float], int], None]


def diffusion_loss(
    model: Callable, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor
) -> torch.Tensor:
    """L_simple: ‖ε − ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t)‖² summed over pixels, mean over the batch."""
    ab = alpha_bar[t].to(x0.dtype)[:, None, None, None]  # (B, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    return (eps - model(x_t, t).float()).square().sum(dim=(1, 2, 3)).mean()


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # optimiser steps completed
    checkpoint: Path | None  # the newest checkpoint (written at ``step`` unless nothing ran)
    interrupted: bool  # stopped early by SIGINT/SIGTERM (a checkpoint at ``step`` was written)
    last_loss: float | None  # mean loss over the last log window


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to checkpoint and stop after the current step; a second SIGINT aborts."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @contextmanager
    def installed(self) -> Iterator[_StopFlag]:
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

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum


class _Monitor:
    """Loss / grad-norm sums and the first non-finite step, kept on the device: no host sync per step."""

    NONE = 1 << 62

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.grad_norm = torch.zeros((), device=device)
        self.first_bad = torch.full((), self.NONE, dtype=torch.int64, device=device)
        self.n = 0

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, step: int) -> None:
        ok = torch.isfinite(loss) & torch.isfinite(grad_norm)
        self.first_bad = torch.where(ok, self.first_bad, self.first_bad.clamp(max=step))
        self.loss += loss.detach()
        self.grad_norm += grad_norm.detach()
        self.n += 1

    def check(self, ctx: Context, last_ckpt: Path | None) -> None:
        """Raise (on every rank) if any rank saw a non-finite loss or gradient since the start."""
        bad = int(ctx.all_reduce(self.first_bad.clone(), "min"))
        if bad != self.NONE:
            raise DDIMError(
                f"loss or gradient became non-finite (nan/inf) at step {bad}; nothing after it was saved "
                f"(last good checkpoint: {last_ckpt or 'none'}); lower --lr or check the data"
            )

    def read(self, ctx: Context) -> tuple[float, float]:
        """Mean loss (over ranks and the steps since the last read) and mean grad norm; resets the sums."""
        loss = float(ctx.all_reduce(self.loss.clone())) / max(self.n * ctx.world, 1)
        grad_norm = float(self.grad_norm) / max(self.n, 1)  # already identical on every rank
        self.loss.zero_()
        self.grad_norm.zero_()
        self.n = 0
        return loss, grad_norm


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    log: LogFn | None = None,
    on_grid: Callable[[Path, int], None] | None = None,
    progress: Callable[[int, dict[str, float | None]], None] | None = None,
    on_checkpoint: Callable[[Path, int], None] | None = None,
    on_data: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ε_θ with Algorithm 1 up to ``cfg.max_steps`` optimiser steps (see the module doc).

    ``resume`` continues from the newest checkpoint in ``cfg.run_dir`` (or starts fresh if it has
    none); without it an existing run directory is refused. Callbacks run on rank 0 only:
    ``log(metrics, step)`` every ``log_every`` steps (mean loss and grad norm over the window, lr,
    images/s), ``progress(step, {"loss": last logged loss, "lr": lr})`` every step without waiting for
    the GPU, ``on_grid(path, step)`` after each sample grid, ``on_checkpoint(path, step)`` after each
    checkpoint is written (older ones beyond ``keep`` are already removed), ``on_data(n)`` once the n training
    images are found, before the model is built (a caller's memory warning then never precedes a missing-data
    error).
    """
    cfg.validate()
    with Context.from_env(cfg.device) as ctx:
        device = ctx.device
        # torch.manual_seed reseeds every visible GPU, so fork_rng restores them all (not only the one used).
        gpus = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
        with numerics(device, tf32=cfg.tf32, deterministic=cfg.deterministic), torch.random.fork_rng(gpus):
            return _train(cfg, ctx, resume, log, on_grid, progress, on_checkpoint, on_data)


def _train(
    cfg: TrainConfig,
    ctx: Context,
    resume: bool,
    log: LogFn | None,
    on_grid: Callable[[Path, int], None] | None,
    progress: Callable[[int, dict[str, float | None]], None] | None,
    on_checkpoint: Callable[[Path, int], None] | None = None,
    on_data: Callable[[int], None] | None = None,
) -> TrainResult:
    device, run_dir = ctx.device, Path(cfg.run_dir)
    part = shard(cfg.batch_size, ctx.rank, ctx.world)
    info = ddata.dataset_info(cfg.dataset, cfg.resolution)
    unet_cfg, diffusion = cfg.unet_config(), cfg.diffusion()
    expect = {"unet": unet_cfg, "dataset": cfg.dataset, "resolution": info.resolution, "diffusion": diffusion}
    # 0. Rank 0 decides fresh vs resume and reads the checkpoint; every rank gets the same one.
    ck = ctx.share(lambda: open_run(run_dir, resume=resume, train=cfg.to_dict(), expect=expect))
    ds = ddata.load_dataset(cfg.dataset, cfg.data_root, "train", cfg.resolution, cfg.download)
    cfg = cfg.with_epochs(len(ds))  # --epochs: max_steps = the end of the last epoch
    epoch_ends = cfg.epoch_ends(len(ds))  # a sample grid at each (the seed trainer's per-epoch outputs)
    fingerprint = ddata.data_fingerprint(ds)  # --data-root may move between runs; the images may not change
    if ck is not None and ck.dataset.get("fingerprint") not in (None, fingerprint):
        raise DDIMError(
            f"the training data under {cfg.data_root} ({fingerprint}) is not what the run in {run_dir} trained on "
            f"({ck.dataset['fingerprint']}); resume with the original images or start a new --run-dir"
        )
    if on_data is not None and ctx.is_main:
        on_data(len(ds))

    torch.manual_seed(cfg.seed)
    model = UNet(unet_cfg)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
    model.to(device, memory_format=memory_format)
    ema.to(device, memory_format=memory_format)
    # The fused CUDA kernel does the same update in one launch (Adam was ~13% of an H200 step).
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-8, fused=device.type == "cuda")
    step, last_ckpt = 0, None
    if ck is not None:
        try:  # load_checkpoint has checked the weights against the UNet
            model.load_state_dict(ck.state["model"])
            ema.load_state_dict(ck.state["ema"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise DDIMError(f"checkpoint {ck.path} cannot be resumed ({type(exc).__name__}); it is damaged") from None
        restore_optimizer(opt, ck.state["optimizer"], ck.path)
        step, last_ckpt = ck.step, ck.path
    del ck  # the broadcast copy of the weights is no longer needed

    net: Any = model
    if ctx.enabled:  # gradients all-reduced (averaged) across ranks inside backward()
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    net = compiled(net, device, cfg.compile, cfg.compile_backend)  # the checkpoints save ``model``, not ``net``
    alpha_bar = diffusion.alpha_bar().to(device=device, dtype=torch.float32)
    use_bf16 = cfg.bf16 and device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()
    params, ema_params = list(model.parameters()), list(ema.parameters())
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    batches = Batches(
        ds,
        batch_size=cfg.batch_size,
        part=part,
        seed=cfg.seed,
        T=cfg.T,
        device=device,
        hflip=info.hflip,
        num_workers=cfg.num_workers,
        steps=range(step, cfg.max_steps),
    )
    meta = {"unet": unet_cfg.to_dict(), "diffusion": asdict(diffusion), "train": cfg.to_dict(),
            "dataset": {**asdict(info), "fingerprint": fingerprint}}  # fmt: skip

    def write_checkpoint() -> None:
        payload = {
            "step": step,
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": _rng_state(device),
            **meta,
        }
        save_checkpoint(checkpoint_path(run_dir, step), payload)
        for _, old in list_checkpoints(run_dir)[: -cfg.keep]:
            try:
                old.unlink(missing_ok=True)
            except OSError as exc:
                raise write_error("old checkpoint", old, exc, verb="remove") from None
        if on_checkpoint is not None:
            on_checkpoint(checkpoint_path(run_dir, step), step)

    def write_grid() -> None:
        path = _grid(ema, cfg, alpha_bar, run_dir, step, device)
        if on_grid is not None:
            on_grid(path, step)

    monitor, stop = _Monitor(device), _StopFlag()
    last_loss: float | None = None
    stopping = False
    window_t, window_n = time.perf_counter(), 0
    model.train()
    begun: list[Path] = []  # what this process began in the run directory (start_run)
    try:
        begun = (
            ctx.on_main(lambda: start_run(run_dir, {"train": cfg.to_dict(), "unet": unet_cfg.to_dict()}, step)) or []
        )
        with stop.installed():
            while step < cfg.max_steps:
                torch.manual_seed(step_seed(cfg.seed, step, DROPOUT + ctx.rank))  # dropout masks
                x0 = batches.x0(step)
                t, eps = batches.noise(step)
                if cfg.channels_last:
                    x0, eps = (v.contiguous(memory_format=torch.channels_last) for v in (x0, eps))
                # 1. linear warm-up of the learning rate (ours, for short runs: the official code has none).
                lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr
                for group in opt.param_groups:
                    group["lr"] = lr
                # 2. L_simple, backward (DDP averages the gradients), clip the global norm, Adam.
                with autocast:
                    loss = diffusion_loss(net, x0, t, eps, alpha_bar)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
                monitor.add(loss, grad_norm, step + 1)  # read back below, at host points only
                opt.step()
                # 3. EMA with the (1+n)/(10+n) ramp (the official code uses the fixed μ from the first step).
                decay = min(cfg.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    torch._foreach_lerp_(ema_params, params, 1 - decay)
                step += 1
                window_n += cfg.batch_size
                # 4. host points (the only places that wait for the device): check finiteness before
                # anything is logged or saved, log, then agree on stopping and save / sample.
                at_log = step % cfg.log_every == 0 or step == cfg.max_steps
                if at_log:
                    monitor.check(ctx, last_ckpt)
                    loss_mean, grad_norm_mean = monitor.read(ctx)
                    now = time.perf_counter()
                    metrics = {
                        "loss": loss_mean,
                        "mse": loss_mean / x0[0].numel(),
                        "lr": lr,
                        "grad_norm": grad_norm_mean,
                        "images_per_s": window_n / max(now - window_t, 1e-9),
                    }
                    window_n, last_loss = 0, loss_mean
                    ctx.on_main(lambda s=step, m=metrics: append_metrics(run_dir, s, m))
                    if log is not None and ctx.is_main:
                        log(metrics, step)  # may start a W&B run: not counted in the next window's images/s
                    window_t = time.perf_counter()
                if progress is not None and ctx.is_main:
                    progress(step, {"loss": last_loss, "lr": lr})
                stopping = ctx.any(stop.signal is not None)  # a signal on any rank stops all at this step
                at_save = step % cfg.save_every == 0 or step == cfg.max_steps or stopping
                at_grid = bool(cfg.sample_every) and (step % cfg.sample_every == 0 or step == cfg.max_steps)
                at_grid = (at_grid or step in epoch_ends) and not stopping
                if (at_save or at_grid) and not at_log:
                    monitor.check(ctx, last_ckpt)
                if at_save:
                    ctx.on_main(write_checkpoint)
                    last_ckpt = checkpoint_path(run_dir, step)
                if at_grid:
                    ctx.on_main(write_grid)
                if stopping:
                    break
    except BaseException:
        if last_ckpt is None and begun:  # e.g. an unreadable image: rerunning must not need --resume
            abandon_run(begun)
        raise
    finally:
        batches.close()
        if ctx.enabled:  # free DDP (its reducer holds the process group) before the group goes away:
            del net  # a gloo group destroyed later, at interpreter exit, can abort the process
            gc.collect()
    return TrainResult(run_dir, step, last_ckpt, stopping and step < cfg.max_steps, last_loss)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """For the record only: every step reseeds its generators, so resuming needs no RNG state."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


@torch.no_grad()
def _grid(ema: UNet, cfg: TrainConfig, alpha_bar: torch.Tensor, run_dir: Path, step: int, device: torch.device) -> Path:
    """A fixed-seed η = 0 grid from the EMA model, so grids over training are comparable."""
    c = ema.config
    noise = sampling.SeededNoise(range(cfg.grid_size), (c.in_channels, c.resolution, c.resolution), device)
    ts = schedules.timesteps(cfg.grid_steps, cfg.T, "uniform")
    x = sampling.sample(ema, noise.initial(), alpha_bar.double().cpu(), ts, eta=0.0)
    path = run_dir / "samples" / f"step-{step:07d}.png"
    try:
        return save_grid(x, path)
    except OSError as exc:
        raise write_error("sample grid", path, exc) from None
