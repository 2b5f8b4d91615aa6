"""Samplers as pure functions on tensors; the ε-model is an argument.

Notation (DDIM paper, Song et al. 2020): ᾱ_t is the cumulative product of (1 − β) (the paper's α_t),
τ is a strictly decreasing sub-sequence of timesteps (``ddim.schedules.timesteps``), walked as pairs
(τ_i, τ_{i−1}) and finally to ᾱ = 1, so the last step outputs x̂₀ itself (as the official code does).

    x̂₀       = (x_t − √(1−ᾱ_t) ε_θ(x_t, t)) / √ᾱ_t                                   (eq. 12, "predicted x₀")
    x_{prev}  = √ᾱ_prev x̂₀ + √(1 − ᾱ_prev − σ²) ε_θ + σ z                           (eq. 12)
    σ(η)      = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev)                             (eq. 16)
    σ̂         = √(1 − ᾱ_t/ᾱ_prev)                                  (the paper's "larger variance")

Samplers (``SAMPLERS``):
- ``ddim``      eq. 12 with σ(η), η ≥ 0 (η = 0 deterministic DDIM, η = 1 DDPM posterior σ). Eq. 12 needs
                σ² ≤ 1 − ᾱ_prev at every step: always true for η ≤ 1; a larger η is refused (``check_eta``)
                where it breaks that, rather than silently leaving the paper's family.
- ``sigma_hat`` the official ``ddpm_steps`` over τ: DDPM posterior mean from x̂₀ and x_t, std σ̂.
- ``ddpm``      ancestral DDPM over all T steps: posterior mean, posterior variance β̃.
- ``dpmpp_2m``, ``plms``, ``pndm``: deterministic baselines from ``ddim.solvers`` (DPM-Solver++(2M), PLMS,
  F-PNDM) over the same τ and final step; they ignore η and ``noise`` (as ``sigma_hat`` and ``ddpm`` ignore η)
  and refuse ``clip_x0=True``. Their cost is ``schedules.nfe(S, T, spacing, sampler)``, not always S.
Defaults follow the official code: ``ddim`` does not clip x̂₀, the ancestral samplers clamp it to
[−1, 1]. The final step (to ᾱ = 1) never adds noise.

Randomness is explicit: x_T and every z come from ``SeededNoise`` (one generator per sample, so a
sample's pixels depend only on its own seed, never on batch size) or from any ``noise(i, x)``
callable — a test can inject the exact z another implementation used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ddim.errors import DDIMError

SAMPLERS = ("ddim", "sigma_hat", "ddpm", "dpmpp_2m", "plms", "pndm")
SOLVER_SAMPLERS = ("dpmpp_2m", "plms", "pndm")  # implemented in ddim.solvers

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> ε_θ
NoiseFn = Callable[[int, torch.Tensor], torch.Tensor]  # (step index, x) -> z shaped like x
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]  # (i, t, x_prev, x0_pred)


class SeededNoise:
    """Per-sample Gaussian streams: sample i draws x_T and then each z from ``Generator(seed_i)``.

    Streams live on the CPU so the same seed gives the same numbers on every device.
    """

    def __init__(self, seeds: Sequence[int], shape: Sequence[int], device: str | torch.device = "cpu"):
        self.seeds = [int(s) for s in seeds]
        self.shape = tuple(shape)  # (C, H, W) of one sample
        self.device = torch.device(device)
        self._gens = [torch.Generator().manual_seed(s) for s in self.seeds]

    def _draw(self) -> torch.Tensor:
        z = torch.stack([torch.randn(self.shape, generator=g) for g in self._gens])  # (B, C, H, W)
        if self.device.type == "cuda":
            z = z.pin_memory()  # a pageable host→device copy is synchronous: the GPU would wait every step
        return z.to(self.device, non_blocking=True)

    def initial(self) -> torch.Tensor:
        """x_T: the first draw of every stream."""
        return self._draw()

    def __call__(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self._draw().to(x.dtype)


def ddim_sigma(ab_t: float, ab_prev: float, eta: float) -> float:
    """σ_τi(η) of eq. 16."""
    return eta * math.sqrt((1 - ab_prev) / (1 - ab_t)) * math.sqrt(1 - ab_t / ab_prev)


def sigma_hat(ab_t: float, ab_prev: float) -> float:
    """σ̂ = √(1 − ᾱ_t/ᾱ_prev), the "larger variance" of the paper's σ̂ rows."""
    return math.sqrt(1 - ab_t / ab_prev)


_SIGMA2_RTOL = 1e-12  # σ² may exceed 1 − ᾱ_prev by this much (rounding at the largest valid η)


def _leaves_eq12(ab_prev: float, sigma: float) -> bool:
    """Whether σ² > 1 − ᾱ_prev: eq. 12's direction coefficient √(1 − ᾱ_prev − σ²) is then not real."""
    return sigma**2 > (1 - ab_prev) * (1 + _SIGMA2_RTOL)


def predict_x0(x: torch.Tensor, eps: torch.Tensor, ab_t: float) -> torch.Tensor:
    """x̂₀ = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t."""
    return (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)


def ddim_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    ab_t: float,
    ab_prev: float,
    sigma: float,
    z: torch.Tensor | None = None,
    clip_x0: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One generalised step x_τi → x_τ(i−1) (DDIM eq. 12). Returns (x_prev, x̂₀)."""
    # 1. predicted x₀; when clipping, ε is recomputed from the clipped x̂₀ so both terms agree.
    x0 = predict_x0(x, eps, ab_t)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = (x - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
    # 2. direction pointing to x_t; the floor only absorbs rounding (σ² ≤ 1 − ᾱ_prev up to _SIGMA2_RTOL).
    if _leaves_eq12(ab_prev, sigma):
        raise ValueError(f"sigma={sigma!r} exceeds √(1 − ᾱ_prev) = {math.sqrt(1 - ab_prev)!r}: not an eq. 12 step")
    dir_coef = math.sqrt(max(1 - ab_prev - sigma**2, 0.0))
    x_prev = math.sqrt(ab_prev) * x0 + dir_coef * eps
    # 3. fresh noise.
    if sigma > 0:
        if z is None:
            raise ValueError("ddim_step needs z when sigma > 0")
        x_prev = x_prev + sigma * z
    return x_prev, x0


def ancestral_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    ab_t: float,
    ab_prev: float,
    variance: str = "large",
    z: torch.Tensor | None = None,
    clip_x0: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDPM step over (t, t_prev): posterior mean μ̃(x_t, x̂₀) plus std σ̂ ("large") or √β̃ ("posterior").

    μ̃ = [√ᾱ_prev β / (1−ᾱ_t)] x̂₀ + [√(1−β) (1−ᾱ_prev) / (1−ᾱ_t)] x_t, with β = 1 − ᾱ_t/ᾱ_prev.
    With x̂₀ unclipped, μ̃ equals the η = 1 mean of eq. 12.
    """
    beta = 1 - ab_t / ab_prev
    x0 = predict_x0(x, eps, ab_t)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    mean = (math.sqrt(ab_prev) * beta / (1 - ab_t)) * x0 + (math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t)) * x
    if variance == "large":
        std = math.sqrt(beta)
    elif variance == "posterior":
        std = math.sqrt(beta * (1 - ab_prev) / (1 - ab_t))
    else:
        raise ValueError(f"variance must be 'large' or 'posterior', got {variance!r}")
    if ab_prev >= 1.0 or std == 0:
        return mean, x0
    if z is None:
        raise ValueError("ancestral_step needs z")
    return mean + std * z, x0


def _eval(model: Model, x: torch.Tensor, t: int) -> torch.Tensor:
    t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    return model(x, t_batch).to(x.dtype)


def _pairs(ts: torch.Tensor) -> list[tuple[int, int]]:
    """(τ_i, τ_{i−1}) pairs of a decreasing sequence; −1 stands for ᾱ = 1 after the last one."""
    t_list = [int(t) for t in ts]
    if any(a <= b for a, b in zip(t_list[:-1], t_list[1:])) or (t_list and t_list[-1] < 0):
        raise DDIMError("timesteps must be strictly decreasing and non-negative")
    return list(zip(t_list, t_list[1:] + [-1]))


def check_args(sampler: str, eta: float, clip_x0: bool | None = None) -> None:
    """Refuse a sampler setting in one line before any work (``sample`` calls it too)."""
    if sampler not in SAMPLERS:
        raise DDIMError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if not (eta >= 0 and math.isfinite(eta)):
        raise DDIMError(f"eta must be a finite number ≥ 0, got {eta!r}")
    if sampler in SOLVER_SAMPLERS and clip_x0:
        raise DDIMError(f"the {sampler} sampler does not clip x̂₀; leave clip_x0 unset")


def check_eta(alpha_bar: torch.Tensor, timesteps: torch.Tensor, eta: float) -> None:
    """Refuse an η whose σ(η) (eq. 16) gives σ² > 1 − ᾱ_prev at some step of τ (eq. 12 then has no real
    direction term); the message names the largest η these timesteps allow (η ≤ 1 always passes).
    """
    ab = [float(a) for a in alpha_bar]
    for t, t_prev in _pairs(timesteps):
        ab_t, ab_prev = ab[t], (ab[t_prev] if t_prev >= 0 else 1.0)
        if _leaves_eq12(ab_prev, ddim_sigma(ab_t, ab_prev, eta)):
            # σ² ≤ 1 − ᾱ_prev ⟺ η² ≤ (1 − ᾱ_t)/(1 − ᾱ_t/ᾱ_prev) (≥ 1); take the tightest step, rounded down.
            limit = min(math.sqrt((1 - ab[a]) / (1 - ab[a] / ab[b])) for a, b in _pairs(timesteps) if b >= 0)
            raise DDIMError(
                f"eta={eta:g} gives σ² > 1 − ᾱ_prev at t={t}→{t_prev}, outside eq. 12;"
                f" use eta ≤ {math.floor(limit * 1e4) / 1e4:g} with these timesteps (eta ≤ 1 always works)"
            )


@torch.no_grad()
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
    """Generate x₀ from x_T along τ = ``timesteps`` (DDIM eq. 12, σ from eq. 16; see module doc).

    ``alpha_bar`` is the float64 ᾱ table of the trained model (length T); ``noise(i, x)`` supplies z
    for step i whenever σ > 0 (e.g. a ``SeededNoise``). Cost: one network evaluation per timestep, except for
    ``plms`` / ``pndm`` (``schedules.nfe``).
    """
    check_args(sampler, eta, clip_x0)
    if len(timesteps) and int(timesteps[0]) >= len(alpha_bar):
        raise DDIMError(f"timestep {int(timesteps[0])} is outside the model's T = {len(alpha_bar)}")
    if sampler == "ddim":
        check_eta(alpha_bar, timesteps, eta)
    if sampler in SOLVER_SAMPLERS:
        from ddim.solvers import SOLVERS  # imported here: ddim.solvers builds on this module

        return SOLVERS[sampler](model, x_T, alpha_bar, timesteps, callback=callback)
    if clip_x0 is None:
        clip_x0 = sampler != "ddim"
    ab = [float(a) for a in alpha_bar]  # host floats: no device syncs inside the loop
    x = x_T
    for i, (t, t_prev) in enumerate(_pairs(timesteps)):
        ab_t, ab_prev = ab[t], (ab[t_prev] if t_prev >= 0 else 1.0)
        eps = _eval(model, x, t)
        if sampler == "ddim":
            sigma = ddim_sigma(ab_t, ab_prev, eta)
            z = noise(i, x) if sigma > 0 and noise is not None else None
            if sigma > 0 and z is None:
                raise ValueError("sampling with eta > 0 needs a noise source")
            x, x0 = ddim_step(x, eps, ab_t, ab_prev, sigma, z, clip_x0)
        else:
            variance = "large" if sampler == "sigma_hat" else "posterior"
            z = noise(i, x) if t_prev >= 0 and noise is not None else None
            if t_prev >= 0 and z is None:
                raise ValueError(f"the {sampler} sampler needs a noise source")
            x, x0 = ancestral_step(x, eps, ab_t, ab_prev, variance, z, clip_x0)
        if callback is not None:
            callback(i, t, x, x0)
    return x


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

    Walks the decoding pairs of ``timesteps`` in reverse, from ᾱ = 1 up to τ_S, with ε evaluated at
    the current point (at τ₀ for the first step, which starts from x₀ itself). Decoding the result
    with ``sample(..., eta=0)`` over the same timesteps reconstructs x₀; the error falls as S grows.
    """
    ab = [float(a) for a in alpha_bar]
    first = int(timesteps[-1])
    x = x0
    for i, (t_next, t) in enumerate(reversed(_pairs(timesteps))):
        ab_t = ab[t] if t >= 0 else 1.0
        ab_next = ab[t_next]
        eps = _eval(model, x, max(t, first))
        x0_pred = x if t < 0 else predict_x0(x, eps, ab_t)
        x = math.sqrt(ab_next) * x0_pred + math.sqrt(1 - ab_next) * eps
        if callback is not None:
            callback(i, t_next, x, x0_pred)
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
