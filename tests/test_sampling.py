"""Samplers: properties of eq. 12/16 (forward marginals, η = 1 as DDPM's posterior, σ̂), inversion, slerp and
interpolation, and the refusals. Agreement with diffusers' schedulers is in test_sampling_diffusers.py."""

import math

import pytest
import torch
from helpers.sampling import AB, T, TinyEps, listed_noise

from ddim import sampling, schedules
from ddim.errors import DDIMError
from ddim.steps import ancestral_step, ddim_sigma, ddim_step, sigma_hat


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


def test_true_eps_recovers_x0_exactly():
    """Smoke test only: with the oracle ε, x̂₀ = x₀ whatever x is, so this cannot see the update rule
    (test_step_matches_forward_marginals does)."""
    sampler, spacing, eta = "ddim", "quad", 0.5
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    ts = schedules.timesteps(10, T, spacing)
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


N_DRAWS = 100_000
PAIRS = [(999, 899), (500, 300), (100, 0)]


def _forward_draws(t, seed, x0=0.6):
    """x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε for one fixed x₀ and N_DRAWS independent ε, plus independent z."""
    eps, z = torch.randn(2, N_DRAWS, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ab_t = float(AB[t])
    return math.sqrt(ab_t) * x0 + math.sqrt(1 - ab_t) * eps, eps, z


def _assert_moments(x, mean, var, k=5.0):
    """Sample mean and variance of N_DRAWS Gaussian scalars within k standard errors of (mean, var)."""
    n = x.numel()
    m, v = float(x.mean()), float(x.var())
    assert abs(m - mean) < k * math.sqrt(var / n), (m, mean)
    assert abs(v - var) < k * var * math.sqrt(2 / (n - 1)), (v, var)


@pytest.mark.parametrize("t,t_prev", PAIRS)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_step_matches_forward_marginals(t, t_prev, eta):
    """Eq. 12's defining property: from x_t ~ q(x_t | x₀), one step with the true ε and σ(η) of eq. 16 lands
    on q(x_prev | x₀) = N(√ᾱ_prev x₀, 1 − ᾱ_prev) for every η (the direction term supplies 1 − ᾱ_prev − σ²)."""
    x0 = 0.6
    x_t, eps, z = _forward_draws(t, seed=t + int(10 * eta), x0=x0)
    ab_t, ab_prev = float(AB[t]), float(AB[t_prev])
    sigma = ddim_sigma(ab_t, ab_prev, eta)
    x_prev, _ = ddim_step(x_t, eps, ab_t, ab_prev, sigma, z=z)
    _assert_moments(x_prev, math.sqrt(ab_prev) * x0, 1 - ab_prev)


@pytest.mark.parametrize("t,t_prev", PAIRS)
def test_sigma_hat_step_adds_the_predicted_excess_variance(t, t_prev):
    """σ̂ keeps the η = 1 mean but replaces σ(1)² by σ̂²: the marginal variance exceeds 1 − ᾱ_prev by σ̂² − σ(1)²."""
    x0 = 0.6
    x_t, eps, z = _forward_draws(t, seed=t + 99, x0=x0)
    ab_t, ab_prev = float(AB[t]), float(AB[t_prev])
    x_prev, _ = ancestral_step(x_t, eps, ab_t, ab_prev, "large", z=z)
    excess = sigma_hat(ab_t, ab_prev) ** 2 - ddim_sigma(ab_t, ab_prev, 1.0) ** 2
    _assert_moments(x_prev, math.sqrt(ab_prev) * x0, 1 - ab_prev + excess)


def test_single_step_given_true_eps():
    g = torch.Generator().manual_seed(3)
    x0, eps = (
        torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64),
        torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64),
    )
    ab_t, ab_prev = float(AB[700]), float(AB[400])
    x_t = math.sqrt(ab_t) * x0 + math.sqrt(1 - ab_t) * eps
    x_prev, x0_pred = ddim_step(x_t, eps, ab_t, ab_prev, sigma=0.0)
    assert torch.allclose(x0_pred, x0, atol=1e-12)
    # η = 0 keeps the same ε: x_prev lies on the same forward-process "line" at ᾱ_prev.
    assert torch.allclose(x_prev, math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps, atol=1e-12)


@pytest.mark.parametrize("t", [1, 10, 500, 999])
def test_eta_one_is_ddpm_posterior_sigma(t):
    betas = schedules.betas("linear", T)
    ab_t, ab_prev = float(AB[t]), float(AB[t - 1])
    posterior_var = float(betas[t]) * (1 - ab_prev) / (1 - ab_t)  # DDPM eq. 7, β̃_t
    assert math.isclose(ddim_sigma(ab_t, ab_prev, 1.0) ** 2, posterior_var, rel_tol=1e-9)
    assert math.isclose(sigma_hat(ab_t, ab_prev) ** 2, float(betas[t]), rel_tol=1e-9)
    assert ddim_sigma(ab_t, ab_prev, 0.0) == 0.0


@pytest.mark.parametrize("t,t_prev", [(999, 899), (500, 10), (50, 0)])
def test_eta_one_mean_equals_ddpm_posterior_mean(t, t_prev):
    g = torch.Generator().manual_seed(5)
    x, eps = (
        torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64),
        torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64),
    )
    ab_t, ab_prev = float(AB[t]), float(AB[t_prev])
    zero = torch.zeros_like(x)
    sigma = ddim_sigma(ab_t, ab_prev, 1.0)
    mean_ddim, _ = ddim_step(x, eps, ab_t, ab_prev, sigma, z=zero)
    mean_post, _ = ancestral_step(x, eps, ab_t, ab_prev, "posterior", z=zero, clip_x0=False)
    assert torch.allclose(mean_ddim, mean_post, atol=1e-10)
    # σ̂ uses the same mean with std √β: check through the noise term alone.
    z = torch.ones_like(x)
    out_hat, _ = ancestral_step(x, eps, ab_t, ab_prev, "large", z=z, clip_x0=False)
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


def test_inversion_matches_probability_flow_ode_at_first_order():
    """For x₀ ~ N(0, s²) the exact ε makes the probability-flow ODE linear: x_t = x₀ √(v_t/s²), v = ᾱ s² + 1 − ᾱ.
    invert() is Euler on that ODE, so its error against the exact x_T halves when S doubles."""
    s2 = 0.25
    model = gaussian_data_eps(s2)
    x0 = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * math.sqrt(s2)
    errs = []
    for S in [10, 20, 40, 80, 160]:
        ts = schedules.timesteps(S, T, "uniform")
        ab_end = float(AB[ts[0]])  # inversion ends at τ_S, the first entry of the decreasing τ
        exact = x0 * math.sqrt((ab_end * s2 + 1 - ab_end) / s2)
        errs.append(float((sampling.invert(model, x0, AB, ts) - exact).abs().max()))
    ratios = [a / b for a, b in zip(errs, errs[1:])]
    assert all(1.7 < r < 2.3 for r in ratios), (errs, ratios)
    assert errs[-1] < 0.1, errs


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


@pytest.mark.parametrize("alpha", [0.1, 0.25, 0.5, 0.8])
def test_slerp_on_orthonormal_pair_is_a_great_circle(alpha):
    q, _ = torch.linalg.qr(torch.randn(64, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    e1, e2 = q[:, 0].reshape(1, 8, 8), q[:, 1].reshape(1, 8, 8)
    want = math.cos(alpha * math.pi / 2) * e1 + math.sin(alpha * math.pi / 2) * e2
    assert torch.allclose(sampling.slerp(e1, e2, alpha), want, atol=1e-12)


def _angle(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return math.acos(max(-1.0, min(1.0, float(a @ b / (a.norm() * b.norm())))))


@pytest.mark.parametrize("alpha", [0.2, 0.25, 0.7])
def test_slerp_angle_is_linear_in_alpha(alpha):
    """On the sphere of radius r the angle from z0 grows as α·θ and the norm stays r; a lerp, renormalised or
    not, turns slower near the ends (its angle is atan(α sin θ / (1 − α + α cos θ)))."""
    g = torch.Generator().manual_seed(5)
    z0 = torch.randn(1, 8, 8, generator=g, dtype=torch.float64)
    z1 = torch.randn(1, 8, 8, generator=g, dtype=torch.float64) + 0.8 * z0  # not orthogonal: θ ≈ 0.9 rad
    z1 = z1 * (z0.norm() / z1.norm())  # slerp (like the official code's) is the unit-sphere formula: equal norms
    theta = _angle(z0, z1)
    assert 0.5 < theta < 1.4
    mid = sampling.slerp(z0, z1, alpha)
    assert abs(_angle(z0, mid) - alpha * theta) < 1e-9
    assert abs(_angle(mid, z1) - (1 - alpha) * theta) < 1e-9
    assert math.isclose(float(mid.norm()), float(z0.norm()), rel_tol=1e-12)


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


def test_eta_beyond_eq12_is_refused_before_any_evaluation():
    x = torch.zeros(1, 1, 2, 2)
    ts = schedules.timesteps(10, T)

    def never(x, t):
        raise AssertionError("no network evaluation before the η check")

    with pytest.raises(DDIMError, match=r"^eta=1\.5 gives σ² > 1 − ᾱ_prev at t=\d+→\d+.*use eta ≤ 1\.\d+") as e:
        sampling.sample(never, x, AB, ts, eta=1.5, noise=listed_noise([x] * 10))
    assert "\n" not in str(e.value)
    # The suggested η is allowed (and still > 1 here); σ̂ ignores η, so nothing to refuse there.
    limit = float(str(e.value).split("use eta ≤ ")[1].split()[0])
    assert 1.0 < limit < 1.5
    sampling.check_eta(AB, ts, limit)
    with pytest.raises(DDIMError, match="eta="):
        sampling.check_eta(AB, ts, limit + 1e-3)
    sampling.sample(TinyEps(), x, AB, ts, eta=1.5, sampler="sigma_hat", noise=listed_noise([x] * 10))
    # Called directly, the step itself refuses σ > √(1 − ᾱ_prev) instead of flooring its direction term.
    with pytest.raises(ValueError, match="eq. 12"):
        ddim_step(x, x, float(AB[500]), float(AB[400]), math.sqrt(1 - float(AB[400])) * 1.01, z=x)


@pytest.mark.parametrize("spacing", schedules.SPACINGS)
@pytest.mark.parametrize("S", [1, 10, 100, 1000])
def test_eta_one_is_always_within_eq12(spacing, S):
    sampling.check_eta(AB, schedules.timesteps(S, T, spacing), 1.0)
    sampling.check_eta(schedules.alpha_bar("cosine", T), schedules.timesteps(S, T, spacing), 1.0)
