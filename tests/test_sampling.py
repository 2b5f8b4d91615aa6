"""Samplers: properties of eq. 12/16 and agreement with diffusers' DDIMScheduler (an independent implementation)."""

import math

import pytest
import torch

from ddim import sampling, schedules
from ddim.errors import DDIMError

T = 1000
AB = schedules.alpha_bar("linear", T)


class TinyEps(torch.nn.Module):
    """A fixed, nonlinear, batch-independent ε-model that depends on t (stands in for a UNet)."""

    def __init__(self, c=1, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(c, c, 3, 3, generator=g) * 0.3)

    def forward(self, x, t):
        h = torch.nn.functional.conv2d(x, self.w, padding=1)
        return torch.tanh(h + torch.sin(t.float() / 97.0)[:, None, None, None])


def oracle_for(x0):
    """The ε consistent with a known x₀: a step given the true ε must recover x₀ exactly."""

    def model(x, t):
        ab = AB.to(x.device)[t].to(x.dtype)[:, None, None, None]
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()

    return model


def gaussian_data_eps(s2):
    """Exact E[ε | x_t] for data x₀ ~ N(0, s²I): a perfectly trained model for that data."""

    def model(x, t):
        ab = AB.double()[t].to(x.dtype)[:, None, None, None]
        return (1 - ab).sqrt() * x / (ab * s2 + 1 - ab)

    return model


def listed_noise(zs):
    return lambda i, x: zs[i]


@pytest.mark.parametrize("S", [10, 20, 50, 100])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_matches_diffusers_ddim_scheduler(S, eta):
    from diffusers import DDIMScheduler

    sch = DDIMScheduler(
        num_train_timesteps=T,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        timestep_spacing="leading",
        steps_offset=0,
        set_alpha_to_one=True,
        clip_sample=False,
    )
    sch.set_timesteps(S)
    model = TinyEps(c=2).eval()
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(3, 2, 8, 8, generator=g)
    zs = [torch.randn(3, 2, 8, 8, generator=g) for _ in range(S)]
    ts = schedules.timesteps(S, T, "uniform")
    assert ts.tolist() == sch.timesteps.tolist()
    # diffusers keeps ᾱ in float32; feed ours the same table so the comparison tests the algorithm.
    ab = sch.alphas_cumprod.double()
    ours = sampling.sample(model, x_T, ab, ts, eta=eta, noise=listed_noise(zs))
    x = x_T.clone()
    with torch.no_grad():
        for i, t in enumerate(sch.timesteps):
            eps = model(x, t.expand(3))
            x = sch.step(eps, t, x, eta=eta, variance_noise=zs[i]).prev_sample
    assert torch.allclose(ours, x, atol=2e-5, rtol=1e-4), (ours - x).abs().max()


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
@pytest.mark.parametrize("spacing", schedules.SPACINGS)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0, 2.0])
def test_true_eps_recovers_x0_exactly(sampler, spacing, eta):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    ts = torch.arange(T - 1, -1, -1) if sampler == "ddpm" else schedules.timesteps(10, T, spacing)
    noise = sampling.SeededNoise([0, 1], (1, 4, 4))
    x_T = noise.initial().double()
    seen = []
    out = sampling.sample(
        oracle_for(x0),
        x_T,
        AB,
        ts,
        eta=eta,
        sampler=sampler,
        noise=lambda i, x: noise(i, x),
        callback=lambda i, t, x, x0p: seen.append((x0p - x0).abs().max()),
    )
    assert max(seen) < 1e-9, "every step's x̂₀ equals the true x₀"
    assert torch.allclose(out, x0, atol=1e-9)


def test_single_step_given_true_eps():
    g = torch.Generator().manual_seed(3)
    x0, eps = (
        torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64),
        torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64),
    )
    ab_t, ab_prev = float(AB[700]), float(AB[400])
    x_t = math.sqrt(ab_t) * x0 + math.sqrt(1 - ab_t) * eps
    x_prev, x0_pred = sampling.ddim_step(x_t, eps, ab_t, ab_prev, sigma=0.0)
    assert torch.allclose(x0_pred, x0, atol=1e-12)
    # η = 0 keeps the same ε: x_prev lies on the same forward-process "line" at ᾱ_prev.
    assert torch.allclose(x_prev, math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps, atol=1e-12)


@pytest.mark.parametrize("t", [1, 10, 500, 999])
def test_eta_one_is_ddpm_posterior_sigma(t):
    betas = schedules.betas("linear", T)
    ab_t, ab_prev = float(AB[t]), float(AB[t - 1])
    posterior_var = float(betas[t]) * (1 - ab_prev) / (1 - ab_t)  # DDPM eq. 7, β̃_t
    assert math.isclose(sampling.ddim_sigma(ab_t, ab_prev, 1.0) ** 2, posterior_var, rel_tol=1e-9)
    assert math.isclose(sampling.sigma_hat(ab_t, ab_prev) ** 2, float(betas[t]), rel_tol=1e-9)
    assert sampling.ddim_sigma(ab_t, ab_prev, 0.0) == 0.0


@pytest.mark.parametrize("t,t_prev", [(999, 899), (500, 10), (50, 0)])
def test_eta_one_mean_equals_ddpm_posterior_mean(t, t_prev):
    g = torch.Generator().manual_seed(5)
    x, eps = (
        torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64),
        torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64),
    )
    ab_t, ab_prev = float(AB[t]), float(AB[t_prev])
    zero = torch.zeros_like(x)
    sigma = sampling.ddim_sigma(ab_t, ab_prev, 1.0)
    mean_ddim, _ = sampling.ddim_step(x, eps, ab_t, ab_prev, sigma, z=zero)
    mean_post, _ = sampling.ancestral_step(x, eps, ab_t, ab_prev, "posterior", z=zero, clip_x0=False)
    assert torch.allclose(mean_ddim, mean_post, atol=1e-10)
    # σ̂ uses the same mean with std √β: check through the noise term alone.
    z = torch.ones_like(x)
    out_hat, _ = sampling.ancestral_step(x, eps, ab_t, ab_prev, "large", z=z, clip_x0=False)
    assert torch.allclose(out_hat - mean_post, torch.full_like(x, math.sqrt(1 - ab_t / ab_prev)), atol=1e-10)


def test_eta_zero_is_deterministic_and_draws_no_noise():
    model = TinyEps()
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def no_noise(i, x):
        raise AssertionError("η = 0 must not draw noise")

    ts = schedules.timesteps(20, T)
    a = sampling.sample(model, x_T, AB, ts, eta=0.0, noise=no_noise)
    b = sampling.sample(model, x_T.clone(), AB, ts, eta=0.0, noise=no_noise)
    assert torch.equal(a, b)


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("sigma_hat", 0.0)])
def test_sample_does_not_depend_on_batch_size(sampler, eta):
    model = TinyEps().eval()
    ts = schedules.timesteps(10, T)
    big = sampling.SeededNoise(range(100, 108), (1, 8, 8))
    out_big = sampling.sample(model, big.initial(), AB, ts, eta=eta, sampler=sampler, noise=big)
    for k in (0, 5):
        one = sampling.SeededNoise([100 + k], (1, 8, 8))
        out_one = sampling.sample(model, one.initial(), AB, ts, eta=eta, sampler=sampler, noise=one)
        assert torch.allclose(out_one[0], out_big[k], rtol=1e-5, atol=1e-5)
    # Same seed, same numbers; a different seed, different numbers.
    again = sampling.SeededNoise(range(100, 108), (1, 8, 8))
    assert torch.equal(sampling.sample(model, again.initial(), AB, ts, eta=eta, sampler=sampler, noise=again), out_big)
    assert not torch.allclose(out_big[0], out_big[1])


def test_ddpm_sample_walks_all_T_steps():
    calls = []

    def model(x, t):
        calls.append(int(t[0]))
        return torch.zeros_like(x)

    noise = sampling.SeededNoise([0], (1, 2, 2))
    sampling.ddpm_sample(model, noise.initial(), schedules.alpha_bar("linear", 50), noise)
    assert calls == list(range(49, -1, -1))


def test_inversion_error_shrinks_with_steps():
    s2 = 0.25
    model = gaussian_data_eps(s2)
    x0 = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * math.sqrt(s2)
    errs = []
    for S in [10, 20, 50, 100]:
        ts = schedules.timesteps(S, T)
        x_T = sampling.invert(model, x0, AB, ts)
        rec = sampling.sample(model, x_T, AB, ts, eta=0.0)
        errs.append(float(((rec - x0) ** 2).mean()))
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-3


def test_slerp_endpoints_and_norm():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(1, 8, 8, generator=g), torch.randn(1, 8, 8, generator=g)
    assert torch.allclose(sampling.slerp(z0, z1, 0.0), z0, atol=1e-6)
    assert torch.allclose(sampling.slerp(z0, z1, 1.0), z1, atol=1e-6)
    mid = sampling.slerp(z0, z1, 0.5)
    # Gaussian latents are nearly orthogonal with similar norms: slerp keeps the norm, lerp shrinks it.
    assert abs(mid.norm() - (z0.norm() + z1.norm()) / 2) < 0.05 * z0.norm()
    assert (0.5 * (z0 + z1)).norm() < 0.85 * mid.norm()
    assert torch.allclose(sampling.slerp(z0, z0, 0.3), z0, atol=1e-6)


def test_interpolate_decodes_endpoints():
    model = TinyEps()
    ts = schedules.timesteps(10, T)
    noise = sampling.SeededNoise([1, 2], (1, 8, 8))
    z = noise.initial()
    strip = sampling.interpolate(model, z[0], z[1], AB, ts, n=5)
    ends = sampling.sample(model, z, AB, ts)
    assert strip.shape == (5, 1, 8, 8)
    assert torch.allclose(strip[0], ends[0], atol=1e-5) and torch.allclose(strip[-1], ends[1], atol=1e-5)


def test_bad_arguments():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(DDIMError, match="eta"):
        sampling.sample(TinyEps(), x, AB, schedules.timesteps(5, T), eta=-1.0)
    with pytest.raises(DDIMError, match="sampler"):
        sampling.sample(TinyEps(), x, AB, schedules.timesteps(5, T), sampler="euler")
    with pytest.raises(DDIMError, match="outside"):
        sampling.sample(TinyEps(), x, schedules.alpha_bar("linear", 100), schedules.timesteps(5, T))
