"""The pieces every sampler is built from: the walk over τ, one ε evaluation, and the single steps.

Notation (DDIM paper, Song et al. 2020): ᾱ_t is the cumulative product of (1 − β) (the paper's α_t); τ is
a strictly decreasing sub-sequence of timesteps (``ddim.schedules.timesteps``), walked as pairs
(τ_i, τ_{i−1}) and finally to ᾱ = 1, so the last step outputs x̂₀ itself (as the official code does).
``walk`` is the one place that knows about that final step: it yields ``Step``s whose ``ab_prev`` is
1.0 and whose ``t_prev`` is None there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from ddim.errors import DDIMError

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> ε_θ
NoiseFn = Callable[[int, torch.Tensor], torch.Tensor]  # (step index, x) -> z shaped like x
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]  # (i, t, x_prev, x0_pred)


class Step(NamedTuple):
    """One step of the walk: τ_i → τ_{i−1} (``t_prev`` None and ``ab_prev`` 1.0 on the final step)."""

    i: int
    t: int
    t_prev: int | None
    ab_t: float
    ab_prev: float

    @property
    def final(self) -> bool:
        return self.t_prev is None


def host_alpha_bar(alpha_bar: torch.Tensor | Sequence[float]) -> list[float]:
    """ᾱ as host floats: read once (one copy of a tensor, not one ``item`` per entry: T of those cost ≈ 0.5 ms
    per sampling call, several % of a short GPU sampling run), so a sampling loop never syncs with the device."""
    if isinstance(alpha_bar, torch.Tensor):
        return [float(a) for a in alpha_bar.detach().cpu().tolist()]
    return [float(a) for a in alpha_bar]


def walk(alpha_bar: Sequence[float], timesteps: torch.Tensor | Sequence[int]) -> list[Step]:
    """The steps of τ = ``timesteps`` (strictly decreasing, within the ᾱ table), then the step to ᾱ = 1."""
    ts = [int(t) for t in timesteps]
    if any(a <= b for a, b in zip(ts[:-1], ts[1:])) or (ts and ts[-1] < 0):
        raise DDIMError("timesteps must be strictly decreasing and non-negative")
    if ts and ts[0] >= len(alpha_bar):
        raise DDIMError(f"timestep {ts[0]} is outside the model's T = {len(alpha_bar)}")
    prevs: list[int | None] = [*ts[1:], None]
    return [Step(i, t, p, alpha_bar[t], 1.0 if p is None else alpha_bar[p]) for i, (t, p) in enumerate(zip(ts, prevs))]


def eval_eps(model: Model, x: torch.Tensor, t: int) -> torch.Tensor:
    """ε_θ(x, t) for a batch at one timestep, in x's dtype."""
    t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    return model(x, t_batch).to(x.dtype)


def ddim_sigma(ab_t: float, ab_prev: float, eta: float) -> float:
    """σ_τi(η) of eq. 16."""
    return eta * math.sqrt((1 - ab_prev) / (1 - ab_t)) * math.sqrt(1 - ab_t / ab_prev)


def sigma_hat(ab_t: float, ab_prev: float) -> float:
    """σ̂ = √(1 − ᾱ_t/ᾱ_prev), the "larger variance" of the paper's σ̂ rows."""
    return math.sqrt(1 - ab_t / ab_prev)


SIGMA2_RTOL = 1e-12  # σ² may exceed 1 − ᾱ_prev by this much (rounding at the largest valid η)


def leaves_eq12(ab_prev: float, sigma: float) -> bool:
    """Whether σ² > 1 − ᾱ_prev: eq. 12's direction coefficient √(1 − ᾱ_prev − σ²) is then not real."""
    return sigma**2 > (1 - ab_prev) * (1 + SIGMA2_RTOL)


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
    # 2. direction pointing to x_t; the floor only absorbs rounding (σ² ≤ 1 − ᾱ_prev up to SIGMA2_RTOL).
    if leaves_eq12(ab_prev, sigma):
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
