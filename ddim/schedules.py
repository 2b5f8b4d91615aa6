"""The forward process (``DiffusionConfig``: β schedule, T), its ᾱ, and timestep sub-sequences τ (DDIM
paper, eq. 1 and appendix D.2).

Notation: the paper's α_t is the cumulative product ᾱ_t = ∏_{s≤t} (1 − β_s); code says ``alpha_bar``.
Both β and the product ᾱ are computed in float64 and only cast at use: training casts ᾱ to float32,
the samplers read it as float64 Python floats. The official code computes β in float64 numpy too, but
casts β to float32 (``torch.from_numpy(betas).float()``) before taking ``(1 − β).cumprod`` in float32,
for training and sampling alike; its ᾱ therefore differs from ours by a few float32 roundings (at most
3e-7 relative for linear, T = 1000; up to 1e-5 in cosine's last, tiny ᾱ).

Timestep sub-sequences are returned as ONE strictly decreasing ``LongTensor`` inside [0, T) with
exactly S entries, so a setting's cost is always S network evaluations (NFE = S). Where the
official code deviates from that we document the rule instead of silently costing more or less:

- ``uniform``  τ_i = i·⌊T/S⌋ (the official ``range(0, T, T // S)``). When T % S ≠ 0 the official
  range has more than S entries; we keep its first S (same start 0, same stride).
- ``quad``     τ_i = ⌊(i·√(0.8T)/(S−1))²⌋ (the official ``linspace(0, √(0.8T), S)²``). Rounding
  repeats small timesteps for large S (a zero-length step that still costs an evaluation; T = 1000:
  every S ≥ 30); we take τ_i = max(official τ_i, τ_{i−1} + 1), so a repeat becomes its predecessor + 1
  and a bump can push the next few small values up too (S = 50: 0, 0, 1, 2, 5 → 0, 1, 2, 3, 5). The
  sequence is strictly increasing, NFE = S, and it equals the official one for every S whose official
  sequence has no repeats, and otherwise from the end of that leading run of small timesteps on.
- ``trailing`` τ = round(T − i·T/S) − 1 (diffusers' "trailing": 999, 899, …, 99 for S = 10).
- ``linspace`` τ = round(linspace(0, T − 1, S)) (diffusers' "linspace": 999 … 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ddim.errors import DDIMError
from ddim.names import BETA_SCHEDULES, MAX_T, SPACINGS


def betas(name: str = "linear", T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """β_1..β_T (float64, shape (T,)) for a named schedule; the official definitions plus cosine."""
    if T < 1:
        raise DDIMError(f"T must be a positive number of diffusion steps, got {T}")
    f64 = torch.float64
    if name == "linear":
        b = torch.linspace(beta_start, beta_end, T, dtype=f64)
    elif name == "quad":
        b = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=f64) ** 2
    elif name == "const":
        b = torch.full((T,), beta_end, dtype=f64)
    elif name == "jsd":
        # 1/T, 1/(T-1), ..., 1: the official "jsd" schedule, except that its last β = 1 would make
        # ᾱ_{T-1} = 0 and x̂₀ = x/√ᾱ infinite; it is capped at 0.999 like cosine's.
        b = (1.0 / torch.linspace(T, 1, T, dtype=f64)).clamp(max=0.999)
    elif name == "sigmoid":
        b = torch.sigmoid(torch.linspace(-6, 6, T, dtype=f64)) * (beta_end - beta_start) + beta_start
    elif name == "cosine":
        # Nichol & Dhariwal 2021, eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s))·π/2).
        s = 0.008
        steps = torch.arange(T + 1, dtype=f64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        b = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    else:
        raise DDIMError(f"unknown beta schedule {name!r}; choose one of {', '.join(BETA_SCHEDULES)}")
    return b


def alpha_bar(name: str = "linear", T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """ᾱ_t = ∏_{s≤t}(1 − β_s) for t = 0..T−1 (float64, shape (T,), strictly decreasing in (0, 1))."""
    return torch.cumprod(1.0 - betas(name, T, beta_start, beta_end), dim=0)


def _strictly_increasing(ts: list[int]) -> list[int]:
    """Bump each repeated (or smaller) value to its predecessor + 1."""
    out: list[int] = []
    for t in ts:
        out.append(t if not out or t > out[-1] else out[-1] + 1)
    return out


def timesteps(S: int, T: int = 1000, spacing: str = "uniform") -> torch.Tensor:
    """The sub-sequence τ as a strictly decreasing LongTensor of exactly S timesteps in [0, T).

    Walk it as pairs ``zip(ts[:-1], ts[1:])`` followed by a last step to ᾱ = 1 (see module doc
    for how each spacing relates to the official code).
    """
    if spacing not in SPACINGS:
        raise DDIMError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if not isinstance(S, int) or isinstance(S, bool) or S < 1 or S > T:
        raise DDIMError(f"steps must be an integer in 1..{T} (T = {T}), got {S!r}")
    # numpy float64 arithmetic, as in the official code and diffusers, so rounding agrees exactly.
    if spacing == "uniform":
        ts = [i * (T // S) for i in range(S)]
    elif spacing == "quad":
        raw = np.linspace(0, np.sqrt(T * 0.8), S) ** 2
        ts = _strictly_increasing([int(v) for v in raw])
    elif spacing == "trailing":
        # A float step can make arange yield S + 1 values (the last rounding to 0): keep exactly S.
        ts = sorted(int(v) - 1 for v in np.round(np.arange(T, 0, -T / S))[:S])
    else:  # linspace
        ts = sorted(int(v) for v in np.linspace(0, T - 1, S).round())
    out = torch.tensor(ts[::-1], dtype=torch.long)
    # Guard the contract every sampler relies on (one line, never a bare assert).
    if not (out.numel() == S and bool((out[:-1] > out[1:]).all()) and 0 <= int(out[-1]) and int(out[0]) < T):
        raise DDIMError(f"{spacing} spacing cannot give {S} distinct timesteps in [0, {T}); choose another spacing")
    return out


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process a model was trained with; sampling must use the same ᾱ table."""

    beta_schedule: str = "linear"
    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def alpha_bar(self) -> torch.Tensor:
        return alpha_bar(self.beta_schedule, self.T, self.beta_start, self.beta_end)

    def problem(self, name: Callable[[str], str] = str) -> str | None:
        """Why this forward process is unusable (None when it is fine): the one rule per field that
        ``train`` applies to its settings and the loader to a checkpoint's. ``name`` spells a field
        (``train`` says ``--beta-end``). β must lie in (0, 1) (eq. 1 of the paper's forward process:
        ᾱ_t = ∏(1 − β_s) must stay in (0, 1))."""
        T, lo, hi = self.T, self.beta_start, self.beta_end
        if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= MAX_T:
            return f"{name('T')} must be an integer in 1..{MAX_T}, got {T!r}"
        try:
            betas(self.beta_schedule, 2)  # raises on an unknown name
        except DDIMError as exc:
            return str(exc)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi))
        if not (numbers and 0 < lo <= hi < 1):  # NaN fails too
            return f"need 0 < {name('beta_start')} ≤ {name('beta_end')} < 1, got {lo!r}, {hi!r}"
        return None
