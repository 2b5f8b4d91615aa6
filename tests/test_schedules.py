"""Properties of β / ᾱ schedules and timestep sub-sequences, and agreement with diffusers' spacings."""

import numpy as np
import pytest
import torch

from ddim import schedules
from ddim.errors import DDIMError

STEPS = [1, 2, 3, 7, 10, 20, 30, 50, 100, 333, 999, 1000]


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


def test_cosine_matches_closed_form():
    T, s = 1000, 0.008
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
    expected = np.cumprod(1 - np.minimum(1 - f[1:] / f[:-1], 0.999))
    assert torch.allclose(schedules.alpha_bar("cosine", T), torch.from_numpy(expected))


@pytest.mark.parametrize("spacing", schedules.SPACINGS)
@pytest.mark.parametrize("S", STEPS)
def test_every_spacing_has_length_order_and_range(spacing, S):
    T = 1000
    ts = schedules.timesteps(S, T, spacing)
    assert ts.dtype == torch.long and ts.numel() == S
    assert bool((ts[:-1] > ts[1:]).all()), "strictly decreasing"
    assert int(ts.min()) >= 0 and int(ts.max()) < T
    assert schedules.nfe(S, T, spacing) == S


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


def test_quad_repeats_are_bumped_not_dropped():
    T, S = 1000, 50
    official = [int(s) for s in np.linspace(0, np.sqrt(T * 0.8), S) ** 2]
    assert len(set(official)) < S  # the official sequence repeats small timesteps
    ours = schedules.timesteps(S, T, "quad").flip(0).tolist()
    assert len(set(ours)) == S
    assert ours[-1] == official[-1] == 800
    assert all(o >= p for o, p in zip(ours, official))


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
    with pytest.raises(DDIMError, match="unknown timestep schedule"):
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
