"""Samplers as pure functions on tensors, and their registry; the ε-model is an argument.

Notation and the single steps are in ``ddim.steps``:

    x̂₀       = (x_t − √(1−ᾱ_t) ε_θ(x_t, t)) / √ᾱ_t                                   (eq. 12, "predicted x₀")
    x_{prev}  = √ᾱ_prev x̂₀ + √(1 − ᾱ_prev − σ²) ε_θ + σ z                           (eq. 12)
    σ(η)      = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev)                             (eq. 16)
    σ̂         = √(1 − ᾱ_t/ᾱ_prev)                                  (the paper's "larger variance")

Samplers (``REGISTRY``; ``SAMPLERS`` lists their names):
- ``ddim``      eq. 12 with σ(η), η ≥ 0 (η = 0 deterministic DDIM, η = 1 DDPM posterior σ). Eq. 12 needs
                σ² ≤ 1 − ᾱ_prev at every step: always true for η ≤ 1; a larger η is refused (``check_eta``)
                where it breaks that, rather than silently leaving the paper's family.
- ``sigma_hat`` the official ``ddpm_steps`` over τ: DDPM posterior mean from x̂₀ and x_t, std σ̂.
- ``ddpm``      ancestral DDPM over all T steps: posterior mean, posterior variance β̃.
- ``dpmpp_2m``, ``plms``, ``pndm``: deterministic baselines from ``ddim.solvers`` (DPM-Solver++(2M), PLMS,
  F-PNDM) over the same τ and final step; they take no η and no noise, and cannot clip x̂₀.
Each entry records what its function takes (η, noise, clipping) and its cost rule (``nfe``): one network
evaluation per timestep, T for ``ddpm``, more for the multistep warm-ups. Defaults follow the official
code: ``ddim`` does not clip x̂₀, the ancestral samplers clamp it to [−1, 1]. The final step (to ᾱ = 1)
never adds noise.

Randomness is explicit: x_T and every z come from ``SeededNoise`` (one generator per sample, so a
sample's pixels depend only on its own seed, never on batch size) or from any ``noise(i, x)``
callable — a test can inject the exact z another implementation used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ddim import solvers
from ddim.errors import DDIMError
from ddim.steps import (
    Model,
    NoiseFn,
    Step,
    StepCallback,
    ancestral_step,
    ddim_sigma,
    ddim_step,
    eval_eps,
    host_alpha_bar,
    leaves_eq12,
    predict_x0,
    walk,
)

MAX_SEED = 2**32 - 1  # torch's CPU generator (mt19937) keeps 32 bits: seeds 2³² apart draw the same noise


class SeededNoise:
    """Per-sample Gaussian streams: sample i draws x_T and then each z from ``Generator(seed_i)``.

    Streams live on the CPU so the same seed gives the same numbers on every device. Each draw writes
    every stream's numbers straight into one (B, C, H, W) host buffer, in page-locked memory when the
    device is CUDA, and copies it with one asynchronous host→device copy: the host then queues the next
    step while the GPU computes this one (a copy from pageable memory would make it wait every step).
    """

    def __init__(self, seeds: Sequence[int], shape: Sequence[int], device: str | torch.device = "cpu"):
        self.seeds = [int(s) for s in seeds]
        self.shape = tuple(shape)  # (C, H, W) of one sample
        self.device = torch.device(device)
        self._gens = [torch.Generator().manual_seed(s) for s in self.seeds]

    def _draw(self) -> torch.Tensor:
        # A fresh buffer per draw: the caching host allocator keeps a pinned block until its copy is done.
        z = torch.empty((len(self._gens), *self.shape), pin_memory=self.device.type == "cuda")
        for row, g in zip(z, self._gens):  # each row is contiguous: the same numbers as randn(shape, generator=g)
            torch.randn(self.shape, generator=g, out=row)
        return z.to(self.device, non_blocking=True)

    def initial(self) -> torch.Tensor:
        """x_T: the first draw of every stream."""
        return self._draw()

    def __call__(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self._draw().to(x.dtype)


def noise_batches(seed_batches: Iterable[Sequence[int]], shape: Sequence[int],
                  device: str | torch.device = "cpu") -> Iterator[tuple[SeededNoise, torch.Tensor]]:  # fmt: skip
    """For each batch of seeds, its ``SeededNoise`` and x_T, drawn when the iterator is advanced: a loop that
    advances it right after queueing a batch on a GPU draws the next x_T while the GPU computes (no pixel changes:
    each sample's stream is its own)."""
    for seeds in seed_batches:
        noise = SeededNoise(seeds, shape, device)
        yield noise, noise.initial()


def _run(
    model: Model,
    x_T: torch.Tensor,
    alpha_bar: torch.Tensor,
    timesteps: torch.Tensor,
    step_fn: Callable[[torch.Tensor, torch.Tensor, Step, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]],
    draws: Callable[[Step], bool],
    noise: NoiseFn | None,
    callback: StepCallback | None,
) -> torch.Tensor:
    """The loop of the one-evaluation-per-step samplers: ε at τ_i, z where ``draws(step)``, then ``step_fn``."""
    x = x_T
    for step in walk(host_alpha_bar(alpha_bar), timesteps):
        eps = eval_eps(model, x, step.t)
        z = None
        if draws(step):
            if noise is None:
                raise ValueError("this sampler draws fresh noise: pass a noise source (e.g. SeededNoise)")
            z = noise(step.i, x)
        x, x0 = step_fn(x, eps, step, z)
        if callback is not None:
            callback(step.i, step.t, x, x0)
    return x


@torch.no_grad()
def ddim(
    model: Model,
    x_T: torch.Tensor,
    alpha_bar: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    eta: float = 0.0,
    clip_x0: bool = False,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """The generalised DDIM sampler (eq. 12, σ(η) from eq. 16) from x_T along τ, then to ᾱ = 1."""

    def sigma(s: Step) -> float:
        return ddim_sigma(s.ab_t, s.ab_prev, eta)

    def step_fn(x: torch.Tensor, eps: torch.Tensor, s: Step, z: torch.Tensor | None) -> tuple:
        return ddim_step(x, eps, s.ab_t, s.ab_prev, sigma(s), z, clip_x0)

    return _run(model, x_T, alpha_bar, timesteps, step_fn, lambda s: sigma(s) > 0, noise, callback)


@torch.no_grad()
def ancestral(
    model: Model,
    x_T: torch.Tensor,
    alpha_bar: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    variance: str = "large",
    clip_x0: bool = True,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DDPM ancestral steps over τ: posterior mean from x̂₀, std σ̂ (``"large"``) or √β̃ (``"posterior"``)."""

    def step_fn(x: torch.Tensor, eps: torch.Tensor, s: Step, z: torch.Tensor | None) -> tuple:
        return ancestral_step(x, eps, s.ab_t, s.ab_prev, variance, z, clip_x0)

    return _run(model, x_T, alpha_bar, timesteps, step_fn, lambda s: not s.final, noise, callback)


@dataclass(frozen=True)
class SamplerInfo:
    """A registered sampler: its function, what it takes, and its cost rule."""

    fn: Callable[..., torch.Tensor]  # fn(model, x_T, alpha_bar, timesteps, **kwargs)
    takes_eta: bool = False
    takes_noise: bool = False
    clip_default: bool | None = None  # None: the sampler cannot clip x̂₀
    extra_evals: Callable[[int], int] = lambda S: 0  # network evaluations beyond one per timestep
    all_steps: bool = False  # runs all T steps whatever S is asked (DDPM)
    kwargs: tuple[tuple[str, object], ...] = ()  # fixed keyword arguments of ``fn``


REGISTRY: dict[str, SamplerInfo] = {
    "ddim": SamplerInfo(ddim, takes_eta=True, takes_noise=True, clip_default=False),
    "sigma_hat": SamplerInfo(ancestral, takes_noise=True, clip_default=True, kwargs=(("variance", "large"),)),
    "ddpm": SamplerInfo(
        ancestral, takes_noise=True, clip_default=True, all_steps=True, kwargs=(("variance", "posterior"),)
    ),
    "dpmpp_2m": SamplerInfo(solvers.dpmpp_2m),
    "plms": SamplerInfo(solvers.plms, extra_evals=lambda S: min(1, S - 1)),  # the improved-Euler first step
    "pndm": SamplerInfo(solvers.pndm, extra_evals=lambda S: 3 * min(3, S - 1)),  # three per Runge–Kutta step
}
SAMPLERS = tuple(REGISTRY)


def nfe(S: int, T: int = 1000, sampler: str = "ddim") -> int:
    """Network evaluations one sample costs with S timesteps (every spacing gives exactly S of them)."""
    if sampler not in REGISTRY:
        raise DDIMError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    info = REGISTRY[sampler]
    return T if info.all_steps else S + info.extra_evals(S)


def check_args(sampler: str, eta: float, clip_x0: bool | None = None) -> None:
    """Refuse a sampler setting in one line before any work (``sample`` calls it too)."""
    if sampler not in REGISTRY:
        raise DDIMError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if not (eta >= 0 and math.isfinite(eta)):
        raise DDIMError(f"eta must be a finite number ≥ 0, got {eta!r}")
    if REGISTRY[sampler].clip_default is None and clip_x0:
        raise DDIMError(f"the {sampler} sampler does not clip x̂₀; leave clip_x0 unset")


def check_eta(alpha_bar: torch.Tensor, timesteps: torch.Tensor, eta: float) -> None:
    """Refuse an η whose σ(η) (eq. 16) gives σ² > 1 − ᾱ_prev at some step of τ (eq. 12 then has no real
    direction term); the message names the largest η these timesteps allow (η ≤ 1 always passes).
    """
    steps = walk(host_alpha_bar(alpha_bar), timesteps)
    for step in steps:
        if leaves_eq12(step.ab_prev, ddim_sigma(step.ab_t, step.ab_prev, eta)):
            # σ² ≤ 1 − ᾱ_prev ⟺ η² ≤ (1 − ᾱ_t)/(1 − ᾱ_t/ᾱ_prev) (≥ 1); take the tightest step, rounded down.
            limit = min(math.sqrt((1 - s.ab_t) / (1 - s.ab_t / s.ab_prev)) for s in steps if not s.final)
            raise DDIMError(
                f"eta={eta:g} gives σ² > 1 − ᾱ_prev at t={step.t}→{step.t_prev}, outside eq. 12;"
                f" use eta ≤ {math.floor(limit * 1e4) / 1e4:g} with these timesteps (eta ≤ 1 always works)"
            )


def sample(
    model: Model,
    x_T: torch.Tensor,
    alpha_bar: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    eta: float = 0.0,
    sampler: str = "ddim",
    clip_x0: bool | None = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Generate x₀ from x_T along τ = ``timesteps`` with a registered sampler (see the module doc).

    ``alpha_bar`` is the float64 ᾱ table of the trained model (length T); ``noise(i, x)`` supplies z
    for step i whenever σ > 0 (e.g. a ``SeededNoise``); samplers that take no η or noise ignore them.
    Cost: ``nfe(len(timesteps), T, sampler)`` network evaluations.
    """
    check_args(sampler, eta, clip_x0)
    info = REGISTRY[sampler]
    kwargs = dict(info.kwargs)
    if info.takes_eta:
        check_eta(alpha_bar, timesteps, eta)
        kwargs["eta"] = eta
    if info.takes_noise:
        kwargs["noise"] = noise
    if info.clip_default is not None:
        kwargs["clip_x0"] = info.clip_default if clip_x0 is None else clip_x0
    return info.fn(model, x_T, alpha_bar, timesteps, callback=callback, **kwargs)


def ddpm_sample(
    model: Model,
    x_T: torch.Tensor,
    alpha_bar: torch.Tensor,
    noise: NoiseFn,
    *,
    clip_x0: bool = True,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DDPM ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2; posterior variance β̃).

    Unlike Algorithm 2, which forms the posterior mean from ε_θ directly, x̂₀ is clamped to [−1, 1] by
    default (``clip_x0=True``, the official DDIM code's ``ddpm_steps`` default); pass ``clip_x0=False``
    for Algorithm 2 itself.
    """
    ts = torch.arange(len(alpha_bar) - 1, -1, -1)
    return sample(model, x_T, alpha_bar, ts, sampler="ddpm", clip_x0=clip_x0, noise=noise, callback=callback)


@torch.no_grad()
def invert(
    model: Model,
    x0: torch.Tensor,
    alpha_bar: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Encode x₀ → x_T by running η = 0 DDIM backwards (section 4.3: Euler steps of the ODE).

    Walks the decoding steps of ``timesteps`` in reverse, from ᾱ = 1 up to τ_S, with ε evaluated at
    the current point (at τ₀ for the first step, which starts from x₀ itself). Decoding the result
    with ``sample(..., eta=0)`` over the same timesteps reconstructs x₀; the error falls as S grows.
    """
    x = x0
    for i, step in enumerate(reversed(walk(host_alpha_bar(alpha_bar), timesteps))):
        # Decoding went t → t_prev; encoding goes back from ᾱ_prev (1 on the final step) up to ᾱ_t.
        eps = eval_eps(model, x, step.t if step.final else step.t_prev)
        x0_pred = x if step.final else predict_x0(x, eps, step.ab_prev)
        x = math.sqrt(step.ab_t) * x0_pred + math.sqrt(1 - step.ab_t) * eps
        if callback is not None:
            callback(i, step.t, x, x0_pred)
    return x


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation between two latents of the same shape (section 5.3).

    Each tensor is treated as one vector; falls back to linear interpolation when they are parallel.
    """
    f0, f1 = z0.double().flatten(), z1.double().flatten()
    cos = float(f0 @ f1 / (f0.norm() * f1.norm()))
    theta = math.acos(max(-1.0, min(1.0, cos)))
    if math.sin(theta) < 1e-6:
        w0, w1 = 1 - alpha, alpha
    else:
        w0 = math.sin((1 - alpha) * theta) / math.sin(theta)
        w1 = math.sin(alpha * theta) / math.sin(theta)
    return (w0 * f0 + w1 * f1).reshape(z0.shape).to(z0.dtype)


def interpolate(
    model: Model,
    z0: torch.Tensor,
    z1: torch.Tensor,
    alpha_bar: torch.Tensor,
    timesteps: torch.Tensor,
    n: int = 8,
) -> torch.Tensor:
    """Decode ``n`` slerp points between two single latents (C, H, W) with η = 0 → (n, C, H, W)."""
    if n < 2:
        raise DDIMError(f"interpolation needs at least 2 points, got {n}")
    zs = torch.stack([slerp(z0, z1, i / (n - 1)) for i in range(n)])  # (n, C, H, W)
    return sample(model, zs, alpha_bar, timesteps, eta=0.0)
