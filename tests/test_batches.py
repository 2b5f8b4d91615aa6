"""ddim.batches: the antithetic t draw, the flipped x₀ batches and the per-step streams, against their
documented rules (the official antithetic pairing, flips of about half the rows, no repeated stream)."""

from __future__ import annotations

import pytest
import torch

from ddim.batches import Batches, antithetic_t

T = 1000


# --- antithetic t --------------------------------------------------------------------------------


@pytest.mark.parametrize("B", [1, 2, 3, 7, 8, 128])
def test_antithetic_t_pairs_t_with_T_minus_1_minus_t(B):
    """The official rule: draw k = B//2 + 1 values, then append T−1−t of the first B−k of them."""
    t = antithetic_t(B, T, torch.Generator().manual_seed(B))
    k = B // 2 + 1
    assert t.shape == (B,) and t.dtype == torch.long
    assert int(t.min()) >= 0 and int(t.max()) < T
    assert torch.equal(t[:k][: B - k] + t[k:], torch.full((B - k,), T - 1))


def test_antithetic_t_is_a_pure_function_of_the_generator():
    a = antithetic_t(64, T, torch.Generator().manual_seed(7))
    assert torch.equal(a, antithetic_t(64, T, torch.Generator().manual_seed(7)))
    assert not torch.equal(a, antithetic_t(64, T, torch.Generator().manual_seed(8)))


def test_antithetic_t_is_roughly_uniform():
    """Over 400 batches of 50 every t in 0..9 has 10% ± 1% of all 20,000 draws and of the 10,400 free ones."""
    g = torch.Generator().manual_seed(0)
    batches = torch.stack([antithetic_t(50, 10, g) for _ in range(400)])  # (400, 50)
    for t in (batches, batches[:, : 50 // 2 + 1]):  # all draws, then the free draws (the pairs' first halves)
        freq = torch.bincount(t.flatten(), minlength=10).double() / t.numel()
        assert freq.shape == (10,) and bool(((freq - 0.1).abs() < 0.01).all()), freq.tolist()


# --- horizontal flips ----------------------------------------------------------------------------


class _Images(torch.utils.data.Dataset):
    """Five random (hence asymmetric) 1×4×6 images; ``in_memory`` exposes ``.images`` like digits does."""

    def __init__(self, in_memory: bool):
        self.data = torch.rand(5, 1, 4, 6, generator=torch.Generator().manual_seed(0))
        if in_memory:
            self.images = self.data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.data[i], -1


def _flip_flags(batches: Batches, source: torch.Tensor, steps: int) -> list[list[bool]]:
    """Per step and row: True if the row is a source image mirrored by .flip(-1), False if it is one as is."""
    flags = []
    for step in range(steps):
        row_flags = []
        for row in batches.x0(step):
            plain = any(torch.equal(row, img) for img in source)
            flipped = any(torch.equal(row, img.flip(-1)) for img in source)
            assert plain != flipped, f"step {step}: a row must be exactly one of a source image or its mirror"
            row_flags.append(flipped)
        flags.append(row_flags)
    return flags


@pytest.mark.parametrize("in_memory", [True, False], ids=["in_memory", "file_backed"])
@pytest.mark.parametrize("hflip", [True, False])
def test_hflip_mirrors_about_half_the_rows_and_off_mirrors_none(in_memory, hflip):
    ds, steps = _Images(in_memory), 6
    batches = Batches(
        ds, batch_size=32, part=slice(0, 32), seed=1, T=T, device=torch.device("cpu"), hflip=hflip, steps=range(steps)
    )
    assert (batches.images is not None) == in_memory  # the two code paths of Batches.x0
    flags = _flip_flags(batches, ds.data, steps)
    batches.close()
    n_flipped = sum(map(sum, flags))
    if not hflip:
        assert n_flipped == 0
    else:
        assert 0.35 < n_flipped / (32 * steps) < 0.65, n_flipped
        assert all(0 < sum(f) < 32 for f in flags), "flips are drawn per image, not per batch"


def test_hflip_batches_are_the_same_in_memory_and_through_the_loader():
    common = dict(batch_size=16, part=slice(0, 16), seed=4, T=T, device=torch.device("cpu"), hflip=True)
    a, b = Batches(_Images(True), **common), Batches(_Images(False), **common, steps=range(3))
    for step in range(3):
        assert torch.equal(a.x0(step), b.x0(step)), step
    b.close()


def test_step_streams_never_repeat_in_the_32_bits_the_cpu_generator_keeps():
    """torch's CPU generator seeds mt19937 with the low 32 bits only: the per-step seeds must differ there."""
    from ddim.batches import DEVICE, DROPOUT, HOST, step_seed

    seeds = [step_seed(s, k, stream) for s in range(4) for k in (0, 1, 2, 16_963, 65_536, 65_537, 1 << 20)
             for stream in (HOST, DEVICE, DROPOUT, DROPOUT + 1)]  # fmt: skip
    assert all(0 <= x < 1 << 63 for x in seeds)
    assert len({x & 0xFFFFFFFF for x in seeds}) == len(seeds)
    # What the packed seed used to do: step k and k + 2^16 drew the same batch; seed 1 was seed 0 shifted.
    images = torch.arange(500, dtype=torch.float32).reshape(500, 1, 1, 1).expand(500, 1, 2, 2)

    class Data(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.images = images

        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int):
            return images[i], 0

    def batch(seed: int, step: int) -> torch.Tensor:
        kw = dict(batch_size=32, part=slice(None), seed=seed, T=1000, device=torch.device("cpu"), hflip=False)
        return Batches(Data(), **kw).x0(step)

    assert not torch.equal(batch(0, 3), batch(0, 3 + 65_536))
    assert not torch.equal(batch(1, 3), batch(0, 3 + 16_963))
    assert torch.equal(batch(0, 3), batch(0, 3))
