"""The resolved sweep: ``SweepSpec`` and its grid of ``Cell``s (``bench.sweep.resolve`` builds and checks it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.store.cell import Cell, grid
from ddim.errors import DDIMError

__all__ = ["Range", "SweepSpec"]


@dataclass(frozen=True)
class Range:
    """An inclusive search range ``lo..hi`` (search mode only)."""

    lo: float
    hi: float

    def __str__(self) -> str:
        return f"{self.lo:g}..{self.hi:g}"


@dataclass(frozen=True)
class SweepSpec:
    """A resolved sweep: every value checked against the checkpoint (see ``resolve_spec``).

    Axes (``steps``, ``eta``, ``spacing``, ``sampler``, ``seeds``) are tuples in grid mode; in search
    mode ``steps`` / ``eta`` may be a ``Range``. Sample i of seed block b uses the seed
    ``seed_base + b·n + i`` in every cell (common random numbers).
    """

    name: str
    checkpoint: str  # the resolved checkpoint FILE (a run directory's newest at resolve time)
    dataset: str
    T: int
    resolution: int = 32  # the model's image side in pixels (from the checkpoint)
    data_root: str = "data"
    n: int = 1000
    batch: int | str = 256  # or "auto": ddim.memory.sampling_batch on each worker's device
    seeds: tuple[int, ...] = (0,)
    seed_base: int = 0
    steps: tuple[int, ...] | Range = (10, 20, 50, 100)
    eta: tuple[float, ...] | Range = (0.0,)
    spacing: tuple[str, ...] = ("uniform",)
    sampler: tuple[str, ...] = ("ddim",)
    extractor: str = "classifier"
    metrics: tuple[str, ...] = ("fid", "isc", "kid")
    search: str | None = None
    trials: int = 20
    objective: str = "nfe"
    device: str = "auto"
    compile: bool | None = None  # torch.compile the network; None: ddim.runtime.COMPILE_DEFAULT for the device
    channels_last: bool = False  # NHWC network (ddim.runtime.ChannelsLastNetwork): float rounding only, not recorded
    bf16: bool = False  # the network under bfloat16 autocast (ddim.runtime.Bf16Network); part of the protocol
    interpolation: bool = True
    inversion: bool = False
    inversion_n: int = 64
    cache_dir: str = ".cache/ddimbench"
    inception_weights: str | None = None
    artifacts: str = ""
    config: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able resolved config (ranges as ``"lo..hi"``), written beside the outputs."""
        out: dict[str, Any] = {}
        for k in self.__dataclass_fields__:
            v = getattr(self, k)
            out[k] = str(v) if isinstance(v, Range) else list(v) if isinstance(v, tuple) else v
        return out

    def cells(self) -> list[Cell]:
        """The grid (``bench.store.cell.grid``: η only varies for ``ddim``, ``ddpm`` runs all T steps)."""
        if isinstance(self.steps, Range) or isinstance(self.eta, Range):
            raise DDIMError("a grid needs lists, not ranges; give steps=10,20 eta=0,1 or use --search pareto")
        return grid(self.spacing, self.sampler, self.steps, self.eta, self.seeds, self.T)

    def seed_range(self, block: int) -> tuple[int, int]:
        """First and last seed of a block."""
        first = self.seed_base + block * self.n
        return first, first + self.n - 1
