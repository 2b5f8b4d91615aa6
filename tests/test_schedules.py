"""Properties of β / ᾱ schedules and timestep sub-sequences, and agreement with diffusers' spacings."""

import numpy as np
import pytest
import torch

from ddim import sampling, schedules
from ddim.errors import DDIMError

STEPS = [1, 2, 3, 7, 10, 20, 30, 50, 100, 333, 999, 1000]
AB_LINEAR = schedules.alpha_bar("linear", 1000)


@pytest.mark.parametrize("name", schedules.BETA_SCHEDULES)
@pytest.mark.parametrize("T", [10, 1000])
def test_alpha_bar_decreasing_in_unit_interval(name, T):
    ab = schedules.alpha_bar(name, T)
    assert ab.dtype == torch.float64 and ab.shape == (T,)
    assert bool((ab > 0).all()) and bool((ab < 1).all())
    assert bool((ab[1:] < ab[:-1]).all())


def test_official_beta_definitions():
    T = 1000
    assert torch.allclose(schedules.betas("linear", T), torch.from_numpy(np.linspace(1e-4, 0.02, T)))
    quad = np.linspace(1e-4**0.5, 0.02**0.5, T) ** 2
    assert torch.allclose(schedules.betas("quad", T), torch.from_numpy(quad))
    assert bool((schedules.betas("const", T) == 0.02).all())
    sig = 1 / (1 + np.exp(-np.linspace(-6, 6, T))) * (0.02 - 1e-4) + 1e-4
    assert torch.allclose(schedules.betas("sigmoid", T), torch.from_numpy(sig))
    jsd = 1 / np.linspace(T, 1, T)
    assert torch.allclose(schedules.betas("jsd", T)[:-1], torch.from_numpy(jsd[:-1]))


@pytest.mark.parametrize("T", [10, 1000])
def test_cosine_properties(T):
    """Nichol & Dhariwal's cosine schedule: ᾱ starts just below 1, falls to ~0, β is capped at 0.999."""
    b, ab = schedules.betas("cosine", T), schedules.alpha_bar("cosine", T)
    assert bool((b > 0).all()) and float(b.max()) == 0.999  # the cap is reached, never exceeded
    assert float(b[-1]) == 0.999 and bool((b[:-1] < 0.999).all())  # only the last β needs it (f(T) = 0)
    assert bool((b[1:] > b[:-1]).all())  # β grows with t
    assert 0.95 < float(ab[0]) < 1 and float(ab[-1]) < 1e-4
    if T == 1000:  # s = 0.008 is chosen so that √β_0 is just below a pixel bin, 2/255 (Nichol & Dhariwal, 3.2)
        assert 1 - float(ab[0]) < 1e-4 and 0.8 * 2 / 255 < float(b[0]) ** 0.5 < 2 / 255
    torch.testing.assert_close(ab, torch.cumprod(1 - b, 0), atol=0, rtol=1e-12)


def test_cosine_equals_diffusers_squaredcos_cap_v2():
    diffusers = pytest.importorskip("diffusers")
    for T in (10, 1000):
        theirs = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2").betas  # float32
        torch.testing.assert_close(schedules.betas("cosine", T).float(), theirs, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("spacing", schedules.SPACINGS)
@pytest.mark.parametrize("S", STEPS)
def test_every_spacing_has_length_order_and_range(spacing, S):
    T = 1000
    ts = schedules.timesteps(S, T, spacing)
    assert ts.dtype == torch.long and ts.numel() == S
    assert bool((ts[:-1] > ts[1:]).all()), "strictly decreasing"
    assert int(ts.min()) >= 0 and int(ts.max()) < T
    # NFE = S, counted independently: the model calls one DDIM sampling run actually makes, and at which t.
    called: list[int] = []

    def model(x, t):
        called.extend(t.tolist())
        return torch.zeros_like(x)

    sampling.sample(model, torch.zeros(1, 1, 1, 1, dtype=torch.float64), AB_LINEAR, ts)
    assert called == ts.tolist() and sampling.nfe(S, T) == len(called) == S


def test_uniform_and_quad_equal_official_code_where_it_is_well_defined():
    T = 1000
    for S in [10, 20, 50, 100, 1000]:
        official = list(range(0, T, T // S))
        assert schedules.timesteps(S, T, "uniform").flip(0).tolist() == official
    for S in [10, 20]:
        official = [int(s) for s in np.linspace(0, np.sqrt(T * 0.8), S) ** 2]
        assert len(set(official)) == S
        assert schedules.timesteps(S, T, "quad").flip(0).tolist() == official
    assert schedules.timesteps(10, T, "uniform").tolist()[0] == 900
    assert schedules.timesteps(10, T, "quad").tolist()[0] == 800


def test_uniform_keeps_first_S_of_official_range_when_T_not_divisible():
    T, S = 1000, 30
    official = list(range(0, T, T // S))
    assert len(official) > S
    assert schedules.timesteps(S, T, "uniform").flip(0).tolist() == official[:S]


@pytest.mark.parametrize("S", [30, 50, 100, 200, 500, 1000])
def test_quad_repeats_are_bumped_not_dropped(S):
    """ours_i = max(official_i, ours_{i−1} + 1): a repeat becomes its predecessor + 1, other entries stay official
    unless an earlier bump has overtaken them (then they are bumped too), so NFE = S with nothing dropped."""
    T = 1000
    official = [int(s) for s in np.linspace(0, np.sqrt(T * 0.8), S) ** 2]
    repeats = [i for i in range(1, S) if official[i] == official[i - 1]]
    assert repeats  # the official sequence repeats small timesteps at these S
    ours = schedules.timesteps(S, T, "quad").flip(0).tolist()
    assert len(ours) == S and ours[0] == official[0] == 0
    for i in range(1, S):
        if official[i] > ours[i - 1]:
            assert ours[i] == official[i], (i, official[i], ours[i])  # not overtaken: the official value
        else:  # an official repeat, or a value that an earlier bump has overtaken
            assert ours[i] == ours[i - 1] + 1, (i, official[i - 1 : i + 1], ours[i - 1 : i + 1])
    assert all(ours[i] == ours[i - 1] + 1 for i in repeats)
    # Bumps only cascade through a leading run of small timesteps; from there on the sequences agree.
    changed = [i for i in range(S) if ours[i] != official[i]]
    assert changed == list(range(1, 1 + len(changed))) and set(repeats) <= set(changed)
    if S == 50:  # the official 0, 0, 1, 2, 5, 8 becomes 0, 1, 2, 3, 5, 8: the repeat at i = 1 pushes i = 2, 3 up
        assert (official[:6], ours[:6]) == ([0, 0, 1, 2, 5, 8], [0, 1, 2, 3, 5, 8])


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("S", [10, 20, 50, 100])
def test_spacings_equal_diffusers(spacing, S):
    from diffusers import DDIMScheduler

    sch = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=0)
    sch.set_timesteps(S)
    ours = schedules.timesteps(S, 1000, "uniform" if spacing == "leading" else spacing)
    assert ours.tolist() == sch.timesteps.tolist()


@pytest.mark.parametrize("bad", [0, -1, 1001, 2.5, True])
def test_bad_steps_raise(bad):
    with pytest.raises(DDIMError, match="steps must be"):
        schedules.timesteps(bad, 1000)


def test_unknown_names_raise():
    with pytest.raises(DDIMError, match="unknown timestep spacing"):
        schedules.timesteps(10, 1000, "cubic")
    with pytest.raises(DDIMError, match="unknown beta schedule"):
        schedules.betas("exp")


@pytest.mark.parametrize("T", [10, 100, 1000])
@pytest.mark.parametrize("spacing", schedules.SPACINGS)
def test_every_step_count_gives_exactly_S_timesteps(spacing, T):
    """Every S in 1..T, not a few round numbers: float steps in arange once gave S + 1 values for trailing."""
    for S in range(1, T + 1):
        ts = schedules.timesteps(S, T, spacing)
        assert len(ts) == S and int(ts[0]) < T and int(ts[-1]) >= 0, (S, ts)
        assert bool((ts[:-1] > ts[1:]).all()), (S, ts)
