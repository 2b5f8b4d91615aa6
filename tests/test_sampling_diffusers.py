"""Samplers against diffusers' DDIMScheduler and DDPMScheduler (independent implementations): eq. 12 with σ(η) of
eq. 16, σ̂ over a sub-sequence τ, and ancestral DDPM over all T steps agree step by step in float64."""

import pytest
import torch
from helpers.sampling import AB, T, TinyEps, listed_noise

from ddim import sampling, schedules


@pytest.mark.parametrize("S", [10, 20, 50, 100])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("spacing,diffusers_spacing", [("uniform", "leading"), ("trailing", "trailing")])
def test_matches_diffusers_ddim_scheduler(S, eta, clip, spacing, diffusers_spacing):
    from diffusers import DDIMScheduler

    assert T % S == 0  # diffusers steps to t − T//S, which is the next τ only when S divides T
    sch = DDIMScheduler(
        num_train_timesteps=T,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        timestep_spacing=diffusers_spacing,
        steps_offset=0,
        set_alpha_to_one=True,
        clip_sample=clip,
    )
    # diffusers keeps ᾱ in float32: give it our float64 table (and ᾱ = 1 after the last step) and run both in
    # float64, so any difference is the algorithm's, not rounding amplified along the trajectory.
    assert torch.allclose(sch.alphas_cumprod.double(), AB, rtol=1e-6)
    sch.alphas_cumprod, sch.final_alpha_cumprod = AB.clone(), torch.tensor(1.0, dtype=torch.float64)
    sch.set_timesteps(S)
    model = TinyEps(c=2).eval()
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(3, 2, 8, 8, generator=g, dtype=torch.float64)
    zs = [torch.randn(3, 2, 8, 8, generator=g, dtype=torch.float64) for _ in range(S)]
    ts = schedules.timesteps(S, T, spacing)
    assert ts.tolist() == sch.timesteps.tolist()
    ours = sampling.sample(model, x_T, AB, ts, eta=eta, clip_x0=clip, noise=listed_noise(zs))
    x = x_T.clone()
    with torch.no_grad():
        for i, t in enumerate(sch.timesteps):
            eps = model(x, t.expand(3))
            # Ours recomputes ε from the clipped x̂₀ (GLIDE's rule); diffusers does so only when asked.
            x = sch.step(eps, t, x, eta=eta, variance_noise=zs[i], use_clipped_model_output=clip).prev_sample
    assert torch.allclose(ours, x, atol=1e-10, rtol=1e-12), (ours - x).abs().max()
    if clip:  # the clamp is active on this trajectory, so the comparison above exercised it
        unclipped = sampling.sample(model, x_T, AB, ts, eta=eta, clip_x0=False, noise=listed_noise(zs))
        assert (unclipped - ours).abs().max() > 1e-2


class Float64Noise:
    """The draws diffusers' ``step(..., generator=g)`` makes: one ``randn(x.shape)`` per noisy step, in order."""

    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)
        self.calls = 0

    def __call__(self, i, x):
        self.calls += 1
        return torch.randn(x.shape, generator=self.g, dtype=x.dtype)


def _diffusers_ddpm(variance_type, alpha_bar, ts, model, x_T, seed):
    """diffusers' DDPMScheduler over the timesteps ``ts`` on our float64 ᾱ table; returns every step's output."""
    from diffusers import DDPMScheduler

    sch = DDPMScheduler(
        num_train_timesteps=len(alpha_bar), beta_schedule="linear", variance_type=variance_type, clip_sample=True
    )
    sch.alphas_cumprod = alpha_bar.clone()
    sch.one = torch.tensor(1.0, dtype=torch.float64)
    sch.set_timesteps(timesteps=ts.tolist())
    assert sch.timesteps.tolist() == ts.tolist()
    g = torch.Generator().manual_seed(seed)
    x, traj = x_T.clone(), []
    with torch.no_grad():
        for t in sch.timesteps:
            # diffusers draws randn(shape, generator=g, dtype) at every t > 0, ours at every step but the last:
            # the same draws in the same order when τ ends at 0 (asserted by the callers).
            x = sch.step(model(x, t.expand(x.shape[0])), t, x, generator=g).prev_sample
            traj.append(x)
    return traj


@pytest.mark.parametrize("S,spacing", [(10, "uniform"), (20, "quad")])
def test_sigma_hat_matches_diffusers_ddpm_fixed_large(S, spacing):
    """σ̂ (the official ``ddpm_steps`` over τ) is diffusers' DDPMScheduler with variance "fixed_large" on custom
    timesteps τ, clamping x̂₀ by default."""
    model = TinyEps(c=2).eval()
    ts = schedules.timesteps(S, T, spacing)
    assert int(ts[-1]) == 0
    x_T = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    noise, traj = Float64Noise(7), []
    ours = sampling.sample(
        model, x_T, AB, ts, sampler="sigma_hat", noise=noise, callback=lambda i, t, x, x0p: traj.append(x)
    )
    ref = _diffusers_ddpm("fixed_large", AB, ts, model, x_T, seed=7)
    assert noise.calls == S - 1
    assert len(traj) == len(ref) == S
    for i, (a, b) in enumerate(zip(traj, ref)):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), (i, (a - b).abs().max())
    assert torch.equal(ours, traj[-1])


def test_ddpm_sample_matches_diffusers_ddpm_fixed_small():
    """Ancestral DDPM over all T steps is diffusers' DDPMScheduler with variance "fixed_small" (β̃), clamping x̂₀."""
    model = TinyEps(c=2).eval()
    ts = torch.arange(T - 1, -1, -1)
    x_T = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = _diffusers_ddpm("fixed_small", AB, ts, model, x_T, seed=11)
    for run in ("sample", "ddpm_sample"):
        noise, traj = Float64Noise(11), []

        def keep(i, t, x, x0p, traj=traj):
            traj.append(x)

        if run == "sample":
            out = sampling.sample(model, x_T, AB, ts, sampler="ddpm", noise=noise, callback=keep)
        else:
            out = sampling.ddpm_sample(model, x_T, AB, noise, callback=keep)
        assert noise.calls == T - 1 and len(traj) == T
        worst = max(float((a - b).abs().max()) for a, b in zip(traj, ref))
        assert worst < 1e-12, (run, worst)
        assert torch.equal(out, traj[-1])
