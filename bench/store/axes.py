"""The axes of a sweep's grid and the values each takes: one definition for the sweep's keys as
``ddimbench sweep`` reads them (``steps=10,20 eta=0,1 ...``: ``bench.sweep.overrides`` takes its bounds and names
from ``AXES``) and for what is read back from a sweep's store, which is untrusted input: the grids its runs asked
for (``bench.store.grids``) and the cells its trials ran (``cell_problem``, ``bench.store.study``). A value the
command line refuses is no value of a stored grid or cell either.

Besides each value's own bounds, S is at most the checkpoint's T (``bench.sweep.resolve``; a stored grid carries
its T, at most ``ddim.names.MAX_T`` as a checkpoint's) and a grid has at most ``bench.store.cell.MAX_GRID_CELLS``
cells. Pure python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import ddim.names
from bench.store.cell import Cell
from bench.store.untrusted import stored_float, stored_int
from ddim.errors import DDIMError


@dataclass(frozen=True)
class Axis:
    """The values of one axis: numbers of ``kind`` (int or float; a float is finite) from ``minimum`` up to
    ``maximum``, or the names in ``choices``."""

    kind: type  # int, float or str
    minimum: float | None = None
    maximum: float | None = None
    names: str = ""  # for str: the tuple of ``ddim.names`` that lists them, read when used (a sampler added counts)

    @property
    def choices(self) -> tuple[str, ...]:
        """The names the axis takes (none for a number)."""
        return tuple(getattr(ddim.names, self.names)) if self.names else ()

    def value(self, v: Any) -> Any:
        """``v`` (read from a store) as a value of this axis, or a DDIMError saying why it is none."""
        if self.kind is str:
            if isinstance(v, str) and v in self.choices:
                return v
            raise DDIMError(f"{shown(v)} is none of {', '.join(self.choices)}")
        typed = stored_int(v) if self.kind is int else stored_float(v)  # an int is finite whatever its size
        if typed is None or (isinstance(typed, float) and not math.isfinite(typed)):
            raise DDIMError(f"{shown(v)} is not {'an integer' if self.kind is int else 'a finite number'}")
        if self.minimum is not None and typed < self.minimum:
            raise DDIMError(f"{shown(v)} is below {self.minimum:g}")
        if self.maximum is not None and typed > self.maximum:
            raise DDIMError(f"{shown(v)} is above {self.maximum:g}")
        return typed


# A grid's axes, named as the sweep's keys (steps=10,20 eta=0,1 ...) and its stored config name them, in the order
# a command line gives them.
AXES: dict[str, Axis] = {
    "steps": Axis(int, minimum=1, maximum=ddim.names.MAX_T),  # S: at most T, at most a checkpoint's MAX_T
    "eta": Axis(float, minimum=0.0),  # DDIM's η (eq. 16)
    "spacing": Axis(str, names="SPACINGS"),
    "sampler": Axis(str, names="SAMPLERS"),
    "seeds": Axis(int, minimum=0),  # seed blocks
}


def shown(v: Any, width: int = 40) -> str:
    """A value read from a store as a message shows it: its repr, cut to ``width`` characters (a store may hold a
    17 KB list)."""
    text = repr(v)
    return text if len(text) <= width else text[: width - 1] + "…"


def axis_values(name: str, values: Any) -> list:
    """The values of axis ``name`` read back from a store, each typed by ``AXES``, or a DDIMError (one line) saying
    why they are none a sweep takes: not a list, empty, a value repeated or refused."""
    if not isinstance(values, list) or not values:
        raise DDIMError(f"{name}={shown(values)} is not a list of values")
    try:
        typed = [AXES[name].value(v) for v in values]
    except DDIMError as exc:
        raise DDIMError(f"{name}: {exc}") from None
    if len(set(typed)) != len(typed):
        raise DDIMError(f"{name}={shown(values)} repeats a value")
    return typed


def cell_problem(cell: Cell) -> str | None:
    """Why ``cell`` (read from a trial) is no cell of any grid (``bench.store.cell.grid``), or None: each field is a
    value of its axis, and η is given for ddim alone (a ddim cell without η, or a σ̂ cell with one, is in no grid
    and in no table row: an edited store)."""
    try:
        for name, v in (("spacing", cell.spacing), ("sampler", cell.sampler), ("steps", cell.steps),
                        ("seeds", cell.seed_block)):  # fmt: skip
            AXES[name].value(v)
        if (cell.eta is None) == (cell.sampler == "ddim"):
            return f"{cell.sampler} with eta={cell.eta}: η is given for ddim alone"
        if cell.eta is not None:
            AXES["eta"].value(cell.eta)
    except DDIMError as exc:
        return str(exc)
    return None
