"""Deterministic training batches: step k's images, flips, t and ε are a pure function of (seed, k).

Each step draws from fresh generators seeded by ``step_seed(seed, k, stream)``: the *host* stream
picks the global batch's image indices and flips (the CPU needs them to read files), the *device*
stream draws t and ε on the training device (no host-to-device copy of noise). The whole global
batch is drawn on every rank and each rank keeps its slice, so N ranks × B/N images see exactly the
images, t and ε of one process with batch B, and a resumed run draws what the uninterrupted one drew.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ddim.errors import DDIMError

HOST, DEVICE, DROPOUT = 0, 1, 2  # stream ids; DROPOUT + rank seeds a rank's global RNG (dropout)
_MASK64 = (1 << 64) - 1


def step_seed(seed: int, step: int, stream: int) -> int:
    """The seed of one random stream at one step: a 63-bit hash of (seed, step, stream).

    Hashed, not packed: torch's CPU generator (mt19937) keeps only the low 32 bits of a seed, so a packed
    value like ``(seed·P + step)·2¹⁶ + stream`` repeated its streams every 2¹⁶ steps and made seed s + 1
    a shifted copy of seed s. With a hash, CUDA generators (full 64 bits) get distinct streams and the
    CPU ones coincide only by chance (two of a run's ~10⁶ streams, with probability ~2⁻³² per pair).
    """
    h = ((seed & _MASK64) * 0x9E3779B97F4A7C15 + (step & _MASK64) * 0xC2B2AE3D27D4EB4F + stream) & _MASK64
    for _ in range(2):  # splitmix64's finaliser, twice: every input bit moves every output bit
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1  # 63 bits: a valid seed everywhere


def antithetic_t(B: int, T: int, generator: torch.Generator, device: torch.device | None = None) -> torch.Tensor:
    """The official code's antithetic t: k = B//2 + 1 free draws t ~ U{0..T−1}, then T−1−t of the first B − k.

    So t[k + i] = T − 1 − t[i] for i < B − k (for even B the last free draw has no partner; B ≤ 2 has none).
    """
    t = torch.randint(0, T, (B // 2 + 1,), generator=generator, device=device)
    return torch.cat([t, T - 1 - t])[:B]


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGINT/SIGTERM to the main process, which checkpoints and then shuts them down.

    A SIGTERM to the whole process group (Slurm pre-emption, systemd) would otherwise kill a worker and
    make the main process raise mid-checkpoint.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _Keyed(Dataset):
    """Item ``(index, flip)`` of a file-backed dataset: the image, mirrored when ``flip``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, bool]) -> torch.Tensor:
        x = self.dataset[key[0]][0]
        return x.flip(-1) if key[1] else x


class _StepKeys:
    """The loader's batch sampler: step k's (index, flip) pairs, computed lazily in step order."""

    def __init__(self, batches: Batches, steps: range) -> None:
        self.batches, self.steps = batches, steps

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        return (self.batches._keys(k) for k in self.steps)


class Batches:
    """This rank's part of every step's global batch, plus that step's t and ε.

    In-memory datasets (``.images``) are indexed on the device; file-backed ones are read by a
    ``DataLoader`` with ``num_workers`` processes that fetches the batches of the coming steps ahead.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        batch_size: int,
        part: slice,
        seed: int,
        T: int,
        device: torch.device,
        hflip: bool,
        num_workers: int = 0,
        steps: range = range(0),
    ) -> None:
        self.B, self.part, self.seed, self.T, self.device, self.hflip = batch_size, part, seed, T, device, hflip
        self.N = len(dataset)
        if self.N == 0:
            raise DDIMError("the training dataset is empty; check --dataset and --data-root")
        images = getattr(dataset, "images", None)
        self.images = images.to(device) if images is not None else None
        self.shape = tuple(dataset[0][0].shape)  # (C, H, W)
        self._gen = torch.Generator(device=device)
        self._loader: Iterator[torch.Tensor] | None = None
        self._next = steps.start
        if self.images is None:
            loader = DataLoader(
                _Keyed(dataset),
                batch_sampler=_StepKeys(self, steps),
                num_workers=num_workers,
                pin_memory=device.type == "cuda",
                prefetch_factor=4 if num_workers else None,
                worker_init_fn=_ignore_stop_signals if num_workers else None,
            )
            self._loader = iter(loader)

    def _host_draw(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(step_seed(self.seed, step, HOST))
        idx = torch.randint(0, self.N, (self.B,), generator=g)
        flip = (torch.rand(self.B, generator=g) < 0.5) & self.hflip
        return idx[self.part], flip[self.part]

    def _keys(self, step: int) -> list[tuple[int, bool]]:
        idx, flip = self._host_draw(step)
        return list(zip(idx.tolist(), flip.tolist()))

    def x0(self, step: int) -> torch.Tensor:
        """(B_rank, C, H, W) images in [-1, 1] on the device for ``step``."""
        if self._loader is not None:
            if step != self._next:
                raise RuntimeError(f"batches are read in order: expected step {self._next}, got {step}")
            self._next += 1
            return next(self._loader).to(self.device, non_blocking=True)
        idx, flip = self._host_draw(step)
        if self.device.type == "cuda":  # one small pinned async copy instead of two blocking ones
            both = torch.stack([idx, flip.long()]).pin_memory().to(self.device, non_blocking=True)
            idx, flip = both[0], both[1].bool()
        x = self.images[idx]
        return torch.where(flip[:, None, None, None], x.flip(-1), x) if self.hflip else x

    def noise(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (t (B_rank,), ε (B_rank, C, H, W)) for ``step``, drawn on the device."""
        g = self._gen.manual_seed(step_seed(self.seed, step, DEVICE))
        t = antithetic_t(self.B, self.T, g, self.device)
        eps = torch.randn((self.B, *self.shape), generator=g, device=self.device)
        return t[self.part], eps[self.part]

    def close(self) -> None:
        self._loader = None  # stops the loader's worker processes
