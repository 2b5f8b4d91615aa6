"""One setting of a sweep's grid, and its canonical key (the identity a trial claims in the store)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ddim.errors import DDIMError

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
    def row(self) -> str:
        """The table row (and chart series) the cell belongs to: ``η=<eta>`` for DDIM, else the sampler."""
        return f"η={self.eta:g}" if self.sampler == "ddim" else self.sampler

    @property
    def label(self) -> str:
        return f"{self.row} S={self.steps} {self.spacing} block {self.seed_block}"
