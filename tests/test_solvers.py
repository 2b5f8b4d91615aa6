"""DPM-Solver++(2M), PLMS and PNDM: agreement with diffusers' schedulers, convergence and NFE properties."""

import math

import pytest
import torch

from ddim import sampling, schedules, solvers
from ddim.errors import DDIMError
from ddim.steps import ddim_step

# diffusers' DPM scheduler trips a numpy-2 DeprecationWarning in its own set_timesteps.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

T = 1000
AB = schedules.alpha_bar("linear", T)
SOLVER_NAMES = ("dpmpp_2m", "plms", "pndm")


def gaussian_eps(mu: float, s2: float):
    """Exact E[ε | x_t] for data x₀ ~ N(μ, s²I): a perfectly trained model for that data."""

    def model(x, t):
        ab = AB[t].to(x.dtype)[:, None, None, None]
        return (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * s2 + 1 - ab)

    return model


class PerturbedEps(torch.nn.Module):
    """Gaussian-data ε plus a fixed nonlinear, t-dependent term: realistic magnitudes, nothing solves it exactly."""

    def __init__(self, c: int = 2, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(c, c, 3, 3, generator=g, dtype=torch.float64) * 0.5
        self.base = gaussian_eps(0.0, 0.25)

    def forward(self, x, t):
        h = torch.nn.functional.conv2d(x, self.w.to(x.dtype), padding=1)
        return self.base(x, t) + 0.2 * torch.tanh(h + torch.sin(t.to(x.dtype) / 97.0)[:, None, None, None])


class Counting:
    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.model(x, t)


def x_T_for(c: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(3, c, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run_diffusers(sch, model, x):
    with torch.no_grad():
        for t in sch.timesteps:
            x = sch.step(model(x, t.expand(x.shape[0])), t, x).prev_sample
    return x


def dpm_scheduler():
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        num_train_timesteps=T,
        beta_schedule="linear",
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",  # Algorithm 2's D_i = (1 + 1/2r) x̂₀_i − 1/2r x̂₀_{i+1}
        lower_order_final=True,
        final_sigmas_type="zero",  # the last step goes to ᾱ = 1, as ours does
        prediction_type="epsilon",
    )


@pytest.mark.parametrize("S", [10, 20, 50])
@pytest.mark.parametrize("spacing", schedules.SPACINGS)
def test_dpmpp_2m_matches_diffusers(spacing, S):
    """Our τ passed to diffusers as custom timesteps; its σ table replaced by the float64 one from the same ᾱ."""
    model, x_T = PerturbedEps(), x_T_for()
    ts = schedules.timesteps(S, T, spacing)
    sch = dpm_scheduler()
    sch.set_timesteps(timesteps=ts.tolist())
    ab = AB[ts]
    sch.sigmas = torch.cat([((1 - ab) / ab).sqrt(), torch.zeros(1, dtype=torch.float64)])  # σ = 0 at the end
    ours = sampling.sample(model, x_T, AB, ts, sampler="dpmpp_2m")
    theirs = run_diffusers(sch, model, x_T.clone())
    # diffusers' step() casts x to float32 before the update: ~1e-6 is its rounding, not a disagreement
    # (with that cast disabled the two agree to 3e-13).
    assert ours.abs().max() > 1.0
    torch.testing.assert_close(ours, theirs, atol=5e-6, rtol=0)


@pytest.mark.parametrize("S", [10, 20, 50])
def test_dpmpp_2m_matches_stock_diffusers_trailing(S):
    """diffusers' own spacing and float32 ᾱ table, untouched: "trailing" equals ours."""
    model, x_T = PerturbedEps(), x_T_for()
    sch = dpm_scheduler()
    sch.register_to_config(timestep_spacing="trailing")
    sch.set_timesteps(S)
    ts = schedules.timesteps(S, T, "trailing")
    assert sch.timesteps.tolist() == ts.tolist()
    ours = sampling.sample(model, x_T, sch.alphas_cumprod.double(), ts, sampler="dpmpp_2m")
    torch.testing.assert_close(ours, run_diffusers(sch, model, x_T.clone()), atol=5e-6, rtol=0)


@pytest.mark.parametrize("S", [10, 20, 50])
@pytest.mark.parametrize("spacing,diffusers_spacing", [("uniform", "leading"), ("trailing", "trailing")])
@pytest.mark.parametrize("sampler", ["plms", "pndm"])
def test_plms_and_pndm_match_diffusers(sampler, spacing, diffusers_spacing, S):
    """PNDMScheduler(skip_prk_steps=True) is PLMS, its default is F-PNDM; both walk T//S strides, so S | T here."""
    from diffusers import PNDMScheduler

    model, x_T = PerturbedEps(), x_T_for()
    sch = PNDMScheduler(
        num_train_timesteps=T,
        beta_schedule="linear",
        skip_prk_steps=sampler == "plms",
        set_alpha_to_one=True,  # the last step goes to ᾱ = 1, as ours does
        timestep_spacing=diffusers_spacing,
        steps_offset=0,
    )
    sch.set_timesteps(S)
    # Same ᾱ on both sides, in float64, so the comparison tests the algorithm, not float32 rounding.
    sch.alphas_cumprod, sch.final_alpha_cumprod = AB.clone(), torch.tensor(1.0, dtype=torch.float64)
    ts = schedules.timesteps(S, T, spacing)
    assert sorted(set(sch.timesteps.tolist()) & set(ts.tolist())) == sorted(ts.tolist())
    counted = Counting(model)
    ours = sampling.sample(counted, x_T, AB, ts, sampler=sampler)
    theirs = run_diffusers(sch, model, x_T.clone())
    assert ours.abs().max() > 1.0
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)
    assert counted.calls == len(sch.timesteps) == sampling.nfe(S, T, sampler)


@pytest.mark.parametrize("sampler", [*SOLVER_NAMES, "ddim"])
@pytest.mark.parametrize("spacing", schedules.SPACINGS)
@pytest.mark.parametrize("S", [1, 2, 3, 4, 5, 10])
def test_nfe_counts_model_calls(sampler, spacing, S):
    counted = Counting(PerturbedEps(c=1))
    sampling.sample(counted, x_T_for(c=1), AB, schedules.timesteps(S, T, spacing), sampler=sampler)
    assert counted.calls == sampling.nfe(S, T, sampler)


def test_nfe_formulas():
    assert [sampling.nfe(S, T, "dpmpp_2m") for S in (1, 10, 50)] == [1, 10, 50]
    assert [sampling.nfe(S, T, "plms") for S in (1, 2, 10, 50)] == [1, 3, 11, 51]
    assert [sampling.nfe(S, T, "pndm") for S in (1, 2, 3, 4, 10, 50)] == [1, 5, 9, 13, 19, 59]


def _flow_then_denoise(x_T, ts, mu, s2):
    """Exact probability-flow ODE solution for N(μ, s²I) data from τ_0 to τ_{S−1}, then its x̂₀ (the last step)."""
    a0, a1 = float(AB[ts[0]]), float(AB[ts[-1]])
    v0, v1 = a0 * s2 + 1 - a0, a1 * s2 + 1 - a1
    x_last = math.sqrt(a1) * mu + math.sqrt(v1 / v0) * (x_T - math.sqrt(a0) * mu)  # the affine ODE flow
    return mu + math.sqrt(a1) * s2 * (x_last - math.sqrt(a1) * mu) / v1  # E[x₀ | x_last]


def test_converge_to_the_exact_ode_solution_faster_than_ddim():
    """With the true ε of Gaussian data, errors shrink with S: DDIM at first order, DPM-Solver++(2M) at second."""
    mu, s2 = 0.3, 0.25
    model = gaussian_eps(mu, s2)
    x_T = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errs = {}
    for name in ("ddim", *SOLVER_NAMES):
        errs[name] = []
        for S in (10, 20, 40, 80):
            ts = schedules.timesteps(S, T, "quad")
            out = sampling.sample(model, x_T, AB, ts, sampler=name)
            errs[name].append(float((out - _flow_then_denoise(x_T, ts, mu, s2)).abs().max()))
    for name, e in errs.items():
        assert all(a > b for a, b in zip(e, e[1:])), (name, e)
    ddim_ratio = errs["ddim"][-2] / errs["ddim"][-1]
    assert 1.8 < ddim_ratio < 2.2, errs["ddim"]  # first order: halving the step halves the error
    assert errs["dpmpp_2m"][-2] / errs["dpmpp_2m"][-1] > 3.5, errs["dpmpp_2m"]  # second order: ~4x
    for name in SOLVER_NAMES:
        assert errs[name][-1] < errs["ddim"][-1] / 10, (name, errs)


@pytest.mark.parametrize("t,t_prev", [(999, 899), (500, 10), (50, 0)])
def test_plms_transfer_is_the_ddim_eta0_step(t, t_prev):
    g = torch.Generator().manual_seed(2)
    x, eps = (torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    ab_t, ab_prev = float(AB[t]), float(AB[t_prev])
    ddim, _ = ddim_step(x, eps, ab_t, ab_prev, sigma=0.0)
    torch.testing.assert_close(solvers.plms_transfer(x, eps, ab_t, ab_prev), ddim, atol=1e-12, rtol=0)


@pytest.mark.parametrize("spacing", schedules.SPACINGS)
@pytest.mark.parametrize("S", [1, 2])
def test_dpmpp_2m_is_ddim_without_history(spacing, S):
    """Its first step is DPM-Solver++1 (= DDIM η = 0) and its last returns x̂₀, so for S ≤ 2 it is DDIM."""
    model, x_T = PerturbedEps(), x_T_for()
    ts = schedules.timesteps(S, T, spacing)
    ddim = sampling.sample(model, x_T, AB, ts, eta=0.0)
    torch.testing.assert_close(sampling.sample(model, x_T, AB, ts, sampler="dpmpp_2m"), ddim, atol=1e-10, rtol=0)


@pytest.mark.parametrize("sampler", SOLVER_NAMES)
def test_deterministic_and_ignore_eta_and_noise(sampler):
    def no_noise(i, x):
        raise AssertionError(f"{sampler} must not draw noise")

    model, x_T, ts = PerturbedEps(), x_T_for(), schedules.timesteps(10, T, "quad")
    a = sampling.sample(model, x_T, AB, ts, sampler=sampler)
    b = sampling.sample(model, x_T.clone(), AB, ts, sampler=sampler, eta=1.0, noise=no_noise)
    assert torch.equal(a, b)
    # Batch-independent: one sample alone gives the same result as inside the batch.
    torch.testing.assert_close(sampling.sample(model, x_T[1:2], AB, ts, sampler=sampler), a[1:2])


def test_callback_sees_every_step():
    seen = []
    ts = schedules.timesteps(6, T, "uniform")
    sampling.sample(PerturbedEps(), x_T_for(), AB, ts, sampler="pndm", callback=lambda i, t, x, x0: seen.append((i, t)))
    assert seen == list(enumerate(ts.tolist()))


def test_bad_arguments():
    x, ts = x_T_for(), schedules.timesteps(5, T)
    with pytest.raises(DDIMError, match="does not clip"):
        sampling.sample(PerturbedEps(), x, AB, ts, sampler="plms", clip_x0=True)
    with pytest.raises(DDIMError, match="outside"):
        sampling.sample(PerturbedEps(), x, schedules.alpha_bar("linear", 100), ts, sampler="dpmpp_2m")
    with pytest.raises(DDIMError, match="outside"):
        solvers.plms(PerturbedEps(), x, schedules.alpha_bar("linear", 100), ts)
    with pytest.raises(DDIMError, match="warmup"):
        solvers.plms(PerturbedEps(), x, AB, ts, warmup="euler")
    with pytest.raises(DDIMError, match="strictly decreasing"):
        solvers.dpmpp_2m(PerturbedEps(), x, AB, torch.tensor([500, 600]))
