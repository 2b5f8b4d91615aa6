"""What the benchmark's jobs run: the UNet configs, a fixed noisy batch, one training step, the time basis.

Shared by ``bench.perf.jobs`` (training, sampling), ``bench.perf.network`` (one evaluation, the
compiled network), ``bench.perf.table1`` (the paper's Table 1 on this machine) and ``bench.perf.profile``.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.perf.models import RunSettings, apply_backend_flags, autocast, build, prepare, prepare_input
from ddim import memory, schedules
from ddim.sampling import SeededNoise, sample
from ddim.unet import UNetConfig, preset

# A few-second stand-in for the presets, used by tests and --quick smoke runs.
TINY = UNetConfig(resolution=8, in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                  dropout=0.0, num_groups=4)  # fmt: skip


def unet_config(name: str) -> UNetConfig:
    """A ``ddim.unet`` preset, or ``tiny``."""
    return TINY if name == "tiny" else preset(name)


def time_basis(settings: RunSettings) -> str:
    """The timing a ratio is taken from: process CPU time for one CPU thread, else wall time.

    With one intra-op thread the process's CPU time is the time the work takes on a core it has to
    itself: it leaves out the time spent waiting while other processes run, which on a shared
    machine moves the wall time by 2x between repeats. With several threads (OpenMP workers spin)
    or a GPU, only the wall time means what it says.
    """
    return "cpu_s" if not settings.device.startswith("cuda") and torch.get_num_threads() == 1 else "wall_s"


def setup(job: dict[str, Any]) -> RunSettings:
    """A job's thread count and backend flags applied; its ``RunSettings``."""
    threads = int(job.get("threads", 0))
    if threads > 0:
        torch.set_num_threads(threads)
    settings = RunSettings(**job["settings"])
    apply_backend_flags(settings)
    return settings


def batch_data(config: UNetConfig, batch: int, settings: RunSettings) -> tuple[torch.Tensor, ...]:
    """A fixed noisy batch: x_t = √ᾱ x₀ + √(1−ᾱ) ε with antithetic-free uniform t (as the trainer draws)."""
    g = torch.Generator().manual_seed(0)
    shape = (batch, config.in_channels, config.resolution, config.resolution)
    x0, eps = torch.rand(shape, generator=g) * 2 - 1, torch.randn(shape, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    ab = schedules.alpha_bar()[t].float()[:, None, None, None]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    return prepare_input(x_t, settings), prepare_input(eps, settings), t.to(settings.device)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, settings: RunSettings, data: tuple) -> None:
    """Forward, L_simple (Algorithm 1), backward, Adam step."""
    x_t, eps, t = data
    with autocast(settings):
        eps_pred = model(x_t, t)
    loss = (eps_pred.float() - eps).square().sum() / len(x_t)  # L_simple: summed over pixels, mean over images
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


@torch.no_grad()
def evaluate(model: torch.nn.Module, settings: RunSettings, data: tuple) -> torch.Tensor:
    """One network evaluation ε_θ(x_t, t), as the sampler makes it."""
    with autocast(settings):
        return model(data[0], data[2])


def sampling_models(job: dict[str, Any], settings: RunSettings) -> tuple[UNetConfig, dict[str, torch.nn.Module], int]:
    """The job's preset, its models (``job["models"]``, default ours and diffusers' twin; seeded alike, in eval
    mode, prepared for ``settings``) and the sampling batch (``_job_batch``, probed on the first model)."""
    config = unet_config(job["preset"])
    models = {}
    for name in job.get("models", ["ours", "diffusers"]):
        torch.manual_seed(0)
        models[name] = prepare(build(name, config).eval(), settings)
    return config, models, _job_batch(job, config, settings, next(iter(models.values())))


def _job_batch(job: dict[str, Any], config: UNetConfig, settings: RunSettings, model: torch.nn.Module) -> int:
    """``job["batch"]``, or (0) ``ddim.memory.sampling_batch`` under the run's autocast (a benchmark run caps it
    at ``job["batch_cap"]``, default 512, and uses 64 on a CPU, where the sampling section times batches of 64)."""
    if int(job["batch"]) > 0:
        return int(job["batch"])
    shape = (config.in_channels, config.resolution, config.resolution)
    with autocast(settings):
        return memory.sampling_batch(model, shape, torch.device(settings.device), cap=int(job.get("batch_cap", 512)),
                                     cpu_default=64)  # fmt: skip


def run_sampler(model: Any, config: UNetConfig, batch: int, ts: torch.Tensor, eta: float,
                settings: RunSettings) -> torch.Tensor:  # fmt: skip
    """``ddim.sampling.sample`` over the timesteps ``ts`` from per-sample noise streams, as sweeps draw them."""
    shape = (config.in_channels, config.resolution, config.resolution)
    noise = SeededNoise(range(batch), shape, settings.device)  # per-sample streams, as the sweeps draw them
    with autocast(settings):
        return sample(model, noise.initial(), schedules.alpha_bar(), ts, eta=eta, noise=noise)
