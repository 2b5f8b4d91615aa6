"""A sweep's cells as the paper's Table 1 reads them (Song et al. 2020, section 5, Table 1): which trial stands
for each cell and seed block, a cell's value over its seed blocks, the order of the rows (a row and its label:
``bench.store.cell``), and the FID-vs-S lines drawn from the rows.

Every view of a sweep's numbers reads them through here: the report's tables and figures (``bench.report``)
and the sweep summary run's FID series and charts in W&B (``bench.tracking.results``), so the W&B chart and
the report's table.md show the same cells under the same names. It sits beside the record it reads, below both
(the sweep logs its summary run without going through the report). Pure python: no torch, no optuna.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bench.store.cell import Cell, RowKey, row_label
from bench.store.record import CellRecord
from ddim.names import SPACINGS

TableKey = tuple[str, RowKey, int]  # (spacing, row, S)


def as_number(v) -> float | None:
    """``v`` as a float when it is a real number (not a bool), else None."""
    return None if v is None or isinstance(v, bool) or not isinstance(v, numbers.Real) else float(v)


def row_order(row: RowKey) -> tuple:
    """Table 1's row order: η ascending, then σ̂, then other samplers by name."""
    sampler, eta = row
    return (0, eta, "") if sampler == "ddim" else (1, 0.0, "") if sampler == "sigma_hat" else (2, 0.0, sampler)


def spacing_order(s: str) -> tuple:
    """The tables' spacing order: the library's (``ddim.names.SPACINGS``), then any other by name."""
    return (SPACINGS.index(s), "") if s in SPACINGS else (len(SPACINGS), s)


def _cell_key(r: CellRecord) -> TableKey:
    return (r.cell.spacing, r.cell.row, r.cell.steps)


@dataclass(frozen=True)
class Progress:
    """How far a sweep got, in cells of its grid (one per seed block): how many are measured, how many failed, the
    rest not run (``cell_states``)."""

    total: int
    measured: int
    failed: int

    @property
    def not_run(self) -> int:
        return self.total - self.measured - self.failed


MEASURED, FAILED, NOT_RUN = "measured", "failed", "not run"  # how a cell of a sweep stands (``cell_states``)


def cell_states(
    cells: Mapping[TableKey, Mapping[int, CellRecord]], grid: Sequence[Cell] = ()
) -> list[tuple[Cell, str]]:
    """Every cell of ``select_cells``' cells and of ``grid`` (once per seed block) with how it stands
    (``record_state``; a cell of ``grid`` no trial ran is ``NOT_RUN``)."""
    chosen: dict[tuple[TableKey, int], tuple[Cell, CellRecord | None]] = {
        (k, b): (r.cell, r) for k, blocks in cells.items() for b, r in blocks.items()
    }
    for c in grid:
        chosen.setdefault(((c.spacing, c.row, c.steps), c.seed_block), (c, None))
    return [(cell, record_state(r)) for cell, r in chosen.values()]


def record_state(r: CellRecord | None) -> str:
    """How the cell of the trial ``r`` stands (None: no trial ran it): ``MEASURED`` (COMPLETE), ``FAILED`` (it
    failed on its own, ``CellRecord.failed``), else ``NOT_RUN`` (still running or interrupted)."""
    if r is None:
        return NOT_RUN
    return MEASURED if r.state == "COMPLETE" else FAILED if r.failed else NOT_RUN


def progress(cells: Mapping[TableKey, Mapping[int, CellRecord]], grid: Sequence[Cell] = ()) -> Progress:
    """The ``Progress`` of ``select_cells``' cells over them and the cells of ``grid`` (``cell_states``)."""
    states = [s for _, s in cell_states(cells, grid)]
    return Progress(len(states), states.count(MEASURED), states.count(FAILED))


def select_cells(
    records: Sequence[CellRecord], warnings: list[str], grid: Sequence[Cell] = ()
) -> dict[TableKey, dict[int, CellRecord]]:
    """One record per (cell, seed block): the latest COMPLETE one, else the latest of any state
    (a retry supersedes the failure before it). A COMPLETE trial whose metric came out NaN still stands for its
    block (shown as failed), never an earlier trial of it. Every cell of ``grid`` (the sweep's, when known) is a
    key, with no block where no trial ran it: its row and column are in the tables, as not run."""
    cells: dict[TableKey, dict[int, CellRecord]] = {}
    for c in grid:
        cells.setdefault((c.spacing, c.row, c.steps), {})
    for r in sorted(records, key=lambda r: r.number):
        blocks = cells.setdefault(_cell_key(r), {})
        b, prev = r.cell.seed_block, blocks.get(r.cell.seed_block)
        if prev is not None and prev.state == r.state == "COMPLETE":
            warnings.append(f"trials #{prev.number} and #{r.number} repeat one cell and seed block; using #{r.number}")
        if prev is None or r.state == "COMPLETE" or prev.state != "COMPLETE":
            blocks[b] = r
    return cells


@dataclass(frozen=True)
class TableCell:
    """What a table shows for one (spacing, row, S) and metric: a value over seed blocks, or why there is none (a
    grid cell, the setting measured, is ``bench.store.cell.Cell``)."""

    status: str  # "value" | "failed" | "missing"
    mean: float | None = None
    std: float | None = None  # over seed blocks, ddof = 1; None for a single block
    blocks: int = 0  # seed blocks behind the value
    nfe: tuple[int, ...] = ()  # shown only when it differs from S
    failed_blocks: int = 0  # blocks that failed beside the ones averaged
    bold: bool = False  # the best of its table column


def complete_blocks(blocks: Mapping[int, CellRecord], field: str) -> dict[int, CellRecord]:
    """The seed blocks a cell's value of the score ``field`` (a ``Scores`` field) is taken over: COMPLETE with a
    finite value. A block whose metric came out NaN is a failed block, not part of any point: a chart's x (its
    time, its NFE) and y come from these same blocks."""
    out = {}
    for b in sorted(blocks):
        v = as_number(getattr(blocks[b].scores, field))
        if blocks[b].state == "COMPLETE" and v is not None and math.isfinite(v):
            out[b] = blocks[b]
    return out


def table_cell(blocks: Mapping[int, CellRecord], field: str, steps: int, scale: float = 1.0) -> TableCell:
    """The value of one cell at S = ``steps``: the mean (× ``scale``) of the score ``field`` over its
    ``complete_blocks``, with its std; "failed" when there is none and some block failed (not: was interrupted),
    errored or came out non-finite, else "missing" (not run, running or interrupted)."""
    good = complete_blocks(blocks, field)
    values = [float(getattr(r.scores, field)) * scale for r in good.values()]
    nfes = {r.measured.nfe for r in good.values()} - {None}

    def failed(r: CellRecord) -> bool:  # a failed trial (not: interrupted), an errored metric or a non-finite value
        v = as_number(getattr(r.scores, field))
        return r.failed or (r.state == "COMPLETE" and bool(r.error or v is not None))

    failed_blocks = sum(failed(r) for b, r in blocks.items() if b not in good)
    if not values:
        return TableCell("failed" if failed_blocks else "missing")
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    nfe = tuple(sorted(nfes)) if nfes and nfes != {steps} else ()
    return TableCell("value", float(np.mean(values)), std, len(values), nfe=nfe, failed_blocks=failed_blocks)


@dataclass(frozen=True)
class Line:
    """One line of an FID-vs-S chart: a table row on one spacing, with its S ascending."""

    spacing: str
    row: RowKey
    label: str  # the row's label, plus the spacing when the sweep has several
    steps: tuple[int, ...]


def lines(cells: Mapping[TableKey, Mapping[int, CellRecord]]) -> list[Line]:
    """The chart lines of ``select_cells``' cells, one per (spacing, row), in the tables' order."""
    groups: dict[tuple[str, RowKey], list[int]] = {}
    for spacing, row, s in cells:
        groups.setdefault((spacing, row), []).append(s)
    several = len({spacing for spacing, _ in groups}) > 1
    return [
        Line(spacing, row, row_label(row) + (f" ({spacing})" if several else ""), tuple(sorted(groups[spacing, row])))
        for spacing, row in sorted(groups, key=lambda k: (spacing_order(k[0]), row_order(k[1])))
    ]
