"""The contents of the noise streams (issue 14): x_T and every z of eq. 12 are fresh standard-normal draws, each
sample's from its own seed, and the samplers use the z they are given at every step with σ > 0."""

from __future__ import annotations

import pytest
import torch

from ddim import sampling, schedules

SHAPE = (1, 8, 8)
AB = schedules.alpha_bar("linear", 1000)


def reference_draws(seed: int, k: int) -> list[torch.Tensor]:
    """The first ``k`` draws of one sample's stream, computed independently of SeededNoise."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g) for _ in range(k)]


def test_each_sample_draws_x_T_then_a_fresh_z_per_step_from_its_own_seed():
    seeds = [7, 8, 1000]
    noise = sampling.SeededNoise(seeds, SHAPE)
    x_T = noise.initial()
    zs = [noise(i, x_T) for i in range(3)]
    for b, seed in enumerate(seeds):
        ref = reference_draws(seed, 4)
        assert torch.equal(x_T[b], ref[0])
        for i, z in enumerate(zs):
            assert torch.equal(z[b], ref[i + 1]), f"sample {b}, step {i}: not the next draw of seed {seed}"
    draws = [x_T, *zs]
    for i in range(len(draws)):
        for j in range(i + 1, len(draws)):
            assert not torch.allclose(draws[i], draws[j]), f"draw {j} repeats draw {i} (z must be fresh, z != x_T)"
    flat = torch.stack(draws).flatten(2)  # (draw, sample, pixels)
    for b in range(len(seeds)):
        for c in range(b + 1, len(seeds)):
            assert not torch.allclose(flat[:, b], flat[:, c]), f"samples {b} and {c} share a stream"


def test_the_draws_are_independent_standard_normals():
    noise = sampling.SeededNoise(range(64), (1, 16, 16))
    x_T, z1, z2 = noise.initial(), noise(0, torch.zeros(1)), noise(1, torch.zeros(1))
    n = x_T.numel()
    for d in (x_T, z1, z2):
        assert abs(float(d.mean())) < 5 / n**0.5 and abs(float(d.var()) - 1) < 5 * (2 / n) ** 0.5
    for a, b in ((x_T, z1), (z1, z2), (x_T, z2)):
        assert abs(float((a * b).mean())) < 5 / n**0.5, "successive draws are correlated"
    per_sample = x_T.flatten(1)
    corr = torch.corrcoef(per_sample)[~torch.eye(64, dtype=torch.bool)]
    assert float(corr.abs().max()) < 5 / per_sample.shape[1] ** 0.5 + 0.1, "samples' x_T are correlated"


def _zero_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


class Stream:
    """x_T fixed; z drawn from its own generator; every z handed out is kept."""

    def __init__(self, x_T: torch.Tensor, z_seed: int) -> None:
        self.x_T, self.g, self.given = x_T, torch.Generator().manual_seed(z_seed), []

    def __call__(self, i: int, x: torch.Tensor) -> torch.Tensor:
        self.given.append(torch.randn(x.shape, generator=self.g, dtype=x.dtype))
        return self.given[-1]


@pytest.mark.parametrize(("sampler", "eta"), [("ddim", 1.0), ("ddim", 0.5), ("sigma_hat", 0.0), ("ddpm", 0.0)])
def test_samplers_use_a_fresh_z_at_every_noisy_step(sampler, eta):
    ts = torch.arange(49, -1, -1) if sampler == "ddpm" else schedules.timesteps(10, 1000, "uniform")
    ab = AB[:50] if sampler == "ddpm" else AB
    x_T = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b, c = Stream(x_T, 1), Stream(x_T, 2), Stream(x_T, 1)
    outs = [sampling.sample(_zero_model, x_T.clone(), ab, ts, eta=eta, sampler=sampler, noise=s) for s in (a, b, c)]
    assert len(a.given) == len(ts) - 1  # one z per step except the last (σ = 0 when ᾱ_prev = 1)
    assert torch.equal(outs[0], outs[2]), "the same z stream must give the same samples"
    assert not torch.allclose(outs[0], outs[1]), "the output ignores the z it was given (x_T reused?)"
    # Only the last z changed: the output still moves, so the last noisy step uses its own z too.
    d = Stream(x_T, 1)
    d.g = torch.Generator().manual_seed(1)
    last = len(ts) - 2

    def late(i: int, x: torch.Tensor) -> torch.Tensor:
        z = d(i, x)
        return -z if i == last else z

    assert not torch.allclose(sampling.sample(_zero_model, x_T.clone(), ab, ts, eta=eta, sampler=sampler,
                                              noise=late), outs[0])  # fmt: skip
