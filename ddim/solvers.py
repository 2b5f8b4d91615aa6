"""Baseline ODE samplers beside DDIM: DPM-Solver++(2M), PLMS and PNDM, as pure functions of the ε-model.

Conventions are those of ``ddim.sampling``: ᾱ_t is the cumulative product of (1 − β) (the DDIM paper's α_t),
τ = ``timesteps`` is strictly decreasing and walked as pairs (τ_i, τ_{i−1}), then one last step to ᾱ = 1
(``ddim.steps.walk``), whose output is a data prediction x̂₀, as DDIM's last step is. All three are deterministic:
they draw no noise and take no η. Network evaluations per sample
(``sampling.nfe``): ``dpmpp_2m`` S, ``plms`` S + 1 (S ≥ 2), ``pndm`` S + 3·min(3, S − 1).

DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Algorithm 2), data-prediction form::

    α_t = √ᾱ_t,  σ_t = √(1 − ᾱ_t),  λ_t = log(α_t / σ_t),  h_i = λ_{τ_{i−1}} − λ_{τ_i}
    x̂₀_i = (x_{τ_i} − σ_{τ_i} ε_θ(x_{τ_i}, τ_i)) / α_{τ_i}
    x_{τ_{i−1}} = (σ_{τ_{i−1}} / σ_{τ_i}) x_{τ_i} − α_{τ_{i−1}} (e^{−h_i} − 1) D_i
    D_i = x̂₀_i on the first step (DPM-Solver++1, identical to DDIM η = 0), else
    D_i = (1 + 1/(2 r_i)) x̂₀_i − 1/(2 r_i) x̂₀_{i+1},  r_i = h_{i+1} / h_i   (x̂₀_{i+1}: the previous step's)

  The last step goes to σ = 0 (λ = ∞): h = ∞ and r = 0, so the second-order term is undefined there; it is
  taken first order, which returns x̂₀ exactly. diffusers' ``DPMSolverMultistepScheduler`` does the same with
  ``final_sigmas_type="zero"``, which also makes its ``lower_order_final`` (< 15 steps) moot for order 2.

PNDM (Liu et al. 2022, arXiv 2202.09778) splits a step into a transfer part φ and a gradient part ε′::

    φ(x_t, ε, t, t′) = √(ᾱ_t′/ᾱ_t) x_t − (ᾱ_t′ − ᾱ_t) / (√ᾱ_t (√((1−ᾱ_t′) ᾱ_t) + √((1−ᾱ_t) ᾱ_t′))) ε    (eq. 9)

  φ is exactly DDIM's η = 0 step, written without cancellation. ε′ is a pseudo linear multistep
  (Adams–Bashforth, eq. 13) combination of the ε at earlier accepted points: order 4 is
  ε′ = (55 e_i − 59 e_{i+1} + 37 e_{i+2} − 9 e_{i+3}) / 24. The two variants differ in the warm-up:

  - ``plms``: a pseudo improved-Euler (Heun) first step, ε′ = (ε(x_τ0) + ε(φ(x_τ0, ε(x_τ0), τ0, τ1)))/2,
    then Adams–Bashforth of order 2, 3, 4 as history accumulates (S-PNDM's first step; the PLMS of
    latent-diffusion and diffusers' ``PNDMScheduler(skip_prk_steps=True)``).
  - ``pndm``: F-PNDM, three pseudo fourth-order Runge–Kutta steps (eq. 12) with the midpoint
    ⌊(τ_i + τ_{i−1})/2⌋, then order-4 Adams–Bashforth (diffusers' ``PNDMScheduler()`` default).
  Only the first ε of each warm-up step enters the history, as in the official code and diffusers.
"""

from __future__ import annotations

import math

import torch

from ddim.errors import DDIMError
from ddim.steps import Model, StepCallback, eval_eps, host_alpha_bar, predict_x0, walk

__all__ = ["dpmpp_2m", "plms", "plms_transfer", "pndm"]

# Adams–Bashforth weights, newest ε first (PNDM eq. 13 is the order-4 row).
_ADAMS_BASHFORTH: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def _vp(ab: float) -> tuple[float, float, float]:
    """(α, σ, λ) of the marginal with ᾱ = ``ab``; ᾱ = 1 gives σ = 0 and λ = +∞."""
    alpha, sigma = math.sqrt(ab), math.sqrt(1.0 - ab)
    return alpha, sigma, (math.inf if sigma == 0.0 else math.log(alpha / sigma))


@torch.no_grad()
def dpmpp_2m(
    model: Model,
    x_T: torch.Tensor,
    alpha_bar: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) from x_T along τ, then to ᾱ = 1 (Lu et al. 2022, Algorithm 2; see module doc).

    One network evaluation per timestep. ``callback(i, τ_i, x_{τ_{i−1}}, x̂₀_i)`` after each step.
    """
    x = x_T
    x0_last: torch.Tensor | None = None  # x̂₀ of the previous step
    h_last = 0.0
    for step in walk(host_alpha_bar(alpha_bar), timesteps):
        alpha_s, sigma_s, lam_s = _vp(step.ab_t)
        alpha_t, sigma_t, lam_t = _vp(step.ab_prev)
        h = lam_t - lam_s
        # 1. data prediction from the ε-model.
        x0 = predict_x0(x, eval_eps(model, x, step.t), step.ab_t)
        if sigma_t == 0.0:
            # 2a. last step, to σ = 0: first order, which is x̂₀ itself.
            x = x0
        else:
            # 2b. multistep D_i: first order on the first step, else the 2M combination.
            if x0_last is None:
                d = x0
            else:
                half_inv_r = h / (2.0 * h_last)  # 1/(2 r_i)
                d = (1.0 + half_inv_r) * x0 - half_inv_r * x0_last
            # 3. exponential-integrator update of the data-prediction ODE.
            x = (sigma_t / sigma_s) * x - (alpha_t * math.expm1(-h)) * d
        x0_last, h_last = x0, h
        if callback is not None:
            callback(step.i, step.t, x, x0)
    return x


def plms_transfer(x: torch.Tensor, eps: torch.Tensor, ab_t: float, ab_prev: float) -> torch.Tensor:
    """The transfer part φ(x_t, ε, t, t_prev) of PNDM eq. 9 (= the DDIM η = 0 step)."""
    denom = math.sqrt(ab_t) * (math.sqrt((1.0 - ab_prev) * ab_t) + math.sqrt((1.0 - ab_t) * ab_prev))
    return math.sqrt(ab_prev / ab_t) * x - ((ab_prev - ab_t) / denom) * eps


def _prk_eps(model: Model, x: torch.Tensor, e1: torch.Tensor, t: int, t_prev: int, ab: list[float]) -> torch.Tensor:
    """ε′ of one pseudo Runge–Kutta step t → t_prev (PNDM eq. 12); three more network evaluations."""
    t_mid = (t + t_prev) // 2
    x1 = plms_transfer(x, e1, ab[t], ab[t_mid])
    e2 = eval_eps(model, x1, t_mid)
    x2 = plms_transfer(x, e2, ab[t], ab[t_mid])
    e3 = eval_eps(model, x2, t_mid)
    x3 = plms_transfer(x, e3, ab[t], ab[t_prev])
    e4 = eval_eps(model, x3, t_prev)
    return (e1 + 2.0 * e2 + 2.0 * e3 + e4) / 6.0


@torch.no_grad()
def plms(
    model: Model,
    x_T: torch.Tensor,
    alpha_bar: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    warmup: str = "heun",
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Pseudo linear multistep sampling (PNDM eqs. 9, 13) from x_T along τ, then to ᾱ = 1.

    ``warmup="heun"`` is PLMS (one pseudo improved-Euler step), ``warmup="prk"`` is F-PNDM (three pseudo
    Runge–Kutta steps, eq. 12); see the module doc. ``callback(i, τ_i, x_{τ_{i−1}}, x̂₀)`` after each step,
    with x̂₀ implied by the combined ε′.
    """
    if warmup not in ("heun", "prk"):
        raise DDIMError(f"warmup must be 'heun' or 'prk', got {warmup!r}")
    ab = host_alpha_bar(alpha_bar)
    steps = walk(ab, timesteps)
    # Warm-up steps never include the last step to ᾱ = 1 (it has no midpoint timestep).
    n_prk = min(3, len(steps) - 1) if warmup == "prk" else 0
    history: list[torch.Tensor] = []  # ε at the accepted points, oldest first
    x = x_T
    for i, t, t_prev, ab_t, ab_prev in steps:
        eps = eval_eps(model, x, t)
        if i < n_prk:
            # 1a. F-PNDM warm-up: pseudo Runge–Kutta (never the final step, so t_prev is a timestep).
            eps_prime = _prk_eps(model, x, eps, t, t_prev, ab)
        elif warmup == "heun" and not history and t_prev is not None:
            # 1b. PLMS warm-up: pseudo improved Euler (predict with ε, correct with ε at the prediction).
            eps_prime = (eps + eval_eps(model, plms_transfer(x, eps, ab_t, ab_prev), t_prev)) / 2.0
        else:
            # 1c. pseudo linear multistep: Adams–Bashforth of the highest order the history allows.
            recent = [eps, *reversed(history[-3:])]  # newest first
            eps_prime = sum(w * e for w, e in zip(_ADAMS_BASHFORTH[len(recent)], recent))
        history.append(eps)
        # 2. transfer part φ with the combined ε′.
        x0 = predict_x0(x, eps_prime, ab_t)
        x = plms_transfer(x, eps_prime, ab_t, ab_prev)
        if callback is not None:
            callback(i, t, x, x0)
    return x


def pndm(
    model: Model,
    x_T: torch.Tensor,
    alpha_bar: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """F-PNDM: ``plms`` with the pseudo Runge–Kutta warm-up (PNDM eqs. 9, 12, 13)."""
    return plms(model, x_T, alpha_bar, timesteps, warmup="prk", callback=callback)
