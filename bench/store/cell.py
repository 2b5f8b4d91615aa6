"""One setting of a sweep's grid, its canonical key (the identity a trial claims in the store), and the row of the
paper's Table 1 (Song et al. 2020, section 5) it belongs to: DDIM at one η, or another sampler, named one way in
every table, figure, chart, caption and console line (``row_key``, ``row_label``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ddim.errors import DDIMError

RowKey = tuple[str, float | None]  # ("ddim", η) for the η family, (sampler, None) for σ̂ and the others
# The most cells a grid may have: the paper's grids have a few hundred (each cell samples thousands of images), so a
# grid this large is a mistake or an edited store, refused before it is built (``grid``, ``grid_size``).
MAX_GRID_CELLS = 100_000


def eta_str(eta: float) -> str:
    """η as every output writes it: "0.0", "0.5", "1.0"."""
    s = f"{eta:g}"
    return s if any(c in s for c in ".en") else s + ".0"


def row_key(sampler: str, eta: float | None) -> RowKey:
    """The table row a (sampler, η) pair belongs to; η only distinguishes rows for "ddim"."""
    if sampler == "ddim":
        return ("ddim", round(float(eta if eta is not None else 0.0), 6))
    return (sampler, None)


def row_label(row: RowKey) -> str:
    """A row's name in every table, figure and chart: "η = 0.5", "σ̂", else the sampler."""
    sampler, eta = row
    return f"η = {eta_str(eta)}" if sampler == "ddim" else "σ̂" if sampler == "sigma_hat" else sampler


_KEY = re.compile(
    r"sampler=(?P<sampler>\w+) spacing=(?P<spacing>\w+) steps=(?P<steps>\d+) "
    r"eta=(?P<eta>-|[0-9.e+-]+) seed_block=(?P<seed_block>\d+)"
)


@dataclass(frozen=True)
class Cell:
    """One setting of the grid: sampler, spacing, S, η (ddim only, else None) and seed block."""

    sampler: str
    spacing: str
    steps: int
    eta: float | None
    seed_block: int

    @classmethod
    def from_key(cls, key: str) -> Cell:
        """The cell a stored ``key`` names; a malformed key (a damaged store) is a one-line DDIMError."""
        m = _KEY.fullmatch(key) if isinstance(key, str) else None
        if m is None:
            raise DDIMError(f"the store holds a malformed cell key {str(key)[:80]!r}; rerun under a new name=")
        eta = None if m["eta"] == "-" else float(m["eta"])
        return cls(m["sampler"], m["spacing"], int(m["steps"]), eta, int(m["seed_block"]))

    @property
    def key(self) -> str:
        """Canonical text identity, stored as the trial's ``cell`` user attribute."""
        eta = "-" if self.eta is None else f"{self.eta:g}"
        return (
            f"sampler={self.sampler} spacing={self.spacing} steps={self.steps} eta={eta} seed_block={self.seed_block}"
        )

    def fields(self) -> dict[str, Any]:
        """The cell's fields by name, in the order of the report's columns (``bench.store.record.columns``)."""
        return {"spacing": self.spacing, "sampler": self.sampler, "eta": self.eta, "steps": self.steps,
                "seed_block": self.seed_block}  # fmt: skip

    @property
    def slug(self) -> str:
        """A file name stem for the cell's images."""
        eta = "" if self.eta is None else f"_eta{self.eta:g}"
        return f"{self.spacing}_{self.sampler}{eta}_S{self.steps}_b{self.seed_block}"

    @property
    def row(self) -> RowKey:
        """The table row (and chart line, with the spacing) the cell belongs to (``row_key``)."""
        return row_key(self.sampler, self.eta)

    @property
    def label(self) -> str:
        """The cell's name in the console, W&B captions and the report: "uniform η = 0.5 S = 20 block 0"."""
        return f"{self.spacing} {row_label(self.row)} S = {self.steps} block {self.seed_block}"


def grid_size(spacings: Sequence[str], samplers: Sequence[str], steps: Sequence[int], etas: Sequence[float],
              seeds: Sequence[int]) -> int:  # fmt: skip
    """How many cells ``grid`` makes of these axes (of their distinct values), counted without making them."""
    kinds = set(samplers)
    per_spacing = len(set(steps)) * sum(len(set(etas)) if s == "ddim" else 1 for s in kinds - {"ddpm"})
    return (len(set(spacings)) * per_spacing + int("ddpm" in kinds and bool(spacings))) * len(set(seeds))


def grid(spacings: Sequence[str], samplers: Sequence[str], steps: Sequence[int], etas: Sequence[float],
         seeds: Sequence[int], T: int) -> list[Cell]:  # fmt: skip
    """A sweep's grid, without pointless duplicates: η only varies for ``ddim``; ``ddpm`` always runs all T steps
    (so it gets S = T and one cell per seed block, under the first spacing: with S = T every spacing is the full
    sequence T−1 … 0). Two η that one cell key names (6 significant digits), or more than ``MAX_GRID_CELLS`` cells,
    are a DDIMError."""
    size = grid_size(spacings, samplers, steps, etas, seeds)
    if size > MAX_GRID_CELLS:
        raise DDIMError(f"the grid has {size} cells, more than the {MAX_GRID_CELLS} a sweep may have; split it into "
                        "sweeps of fewer S, η, spacings, samplers or seed blocks")  # fmt: skip
    out: dict[str, Cell] = {}
    for spacing in spacings:
        for sampler in samplers:
            if sampler == "ddpm" and spacing != spacings[0]:
                continue
            etas_here: Sequence[float | None] = etas if sampler == "ddim" else (None,)
            for s in (T,) if sampler == "ddpm" else steps:
                for eta in etas_here:
                    for b in seeds:
                        cell = Cell(sampler, spacing, int(s), None if eta is None else float(eta), int(b))
                        kept = out.setdefault(cell.key, cell)
                        if kept.eta != cell.eta:
                            raise DDIMError(
                                f"eta={kept.eta!r} and eta={cell.eta!r} name the same cell (eta={cell.eta:g});"
                                " drop one or make them differ in the first 6 significant digits"
                            )
    return list(out.values())
