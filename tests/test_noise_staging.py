"""``SeededNoise`` writes each draw straight into one host buffer (page-locked on CUDA) instead of stacking
per-sample tensors: the pixels of every sample must not change for a given seed. The reference is the loop
``SeededNoise._draw`` ran before (one ``randn(shape)`` per stream, then ``torch.stack``), written out here."""

from __future__ import annotations

import pytest
import torch

from ddim import sampling, schedules
from ddim.unet import UNet, UNetConfig


class OldNoise:
    """The draw loop of ``SeededNoise`` as it was: per-stream ``randn`` then ``stack``, on the CPU."""

    def __init__(self, seeds, shape) -> None:
        self.shape, self.gens = tuple(shape), [torch.Generator().manual_seed(int(s)) for s in seeds]

    def initial(self) -> torch.Tensor:
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.gens])

    def __call__(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.initial().to(x.dtype)


# numel 1 and 105 take torch's scalar / tail paths of the normal sampler; 256 and 3072 its 16-wide one.
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (1, 16, 16), (3, 32, 32)])
def test_every_draw_is_bit_identical_to_the_old_loop(shape) -> None:
    seeds = [0, 1, 12345, 2**32 - 1]
    new, old = sampling.SeededNoise(seeds, shape), OldNoise(seeds, shape)
    assert torch.equal(new.initial(), old.initial())
    x = torch.zeros(1)
    for i in range(4):
        a, b = new(i, x), old(i, x)
        assert a.shape == (len(seeds), *shape) and a.is_contiguous()
        assert torch.equal(a, b), f"draw {i + 1} changed"


@pytest.mark.parametrize(("sampler", "eta"), [("ddim", 1.0), ("ddim", 0.5), ("sigma_hat", 0.0)])
def test_sampled_pixels_unchanged_for_the_same_seeds(sampler: str, eta: float) -> None:
    torch.manual_seed(0)
    cfg = UNetConfig(resolution=8, in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                     dropout=0.0, num_groups=4)  # fmt: skip
    model = UNet(cfg).eval()
    ab, ts = schedules.alpha_bar(), schedules.timesteps(6, 1000)
    seeds, shape = range(40, 45), (1, 8, 8)
    out = []
    for noise in (sampling.SeededNoise(seeds, shape), OldNoise(seeds, shape)):
        x = sampling.sample(model, noise.initial(), ab, ts, eta=eta, sampler=sampler, noise=noise)
        out.append(x)
    assert torch.equal(out[0], out[1])
    assert not torch.equal(out[0][0], out[0][1])  # the samples differ: the check could fail


def test_an_empty_batch_draws_nothing() -> None:
    assert sampling.SeededNoise([], (1, 4, 4)).initial().shape == (0, 1, 4, 4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_host_alpha_bar_reads_the_same_floats_in_one_copy(dtype: torch.dtype) -> None:
    from torch.profiler import profile

    from ddim.steps import host_alpha_bar

    ab = schedules.alpha_bar().to(dtype)
    assert host_alpha_bar(ab) == [float(a) for a in ab]  # exactly the floats one `item` each gave
    ts = schedules.timesteps(5, 1000)
    noise = sampling.SeededNoise(range(2), (1, 4, 4))
    with profile() as prof:  # a sampling call reads ᾱ (T = 1000 entries) without one `item` per entry
        sampling.sample(lambda x, t: torch.zeros_like(x), noise.initial(), ab, ts, eta=1.0, noise=noise)
    items = sum(1 for e in prof.events() if e.name == "aten::item")
    assert items < 50, f"{items} item() calls: ᾱ is read one entry at a time"
