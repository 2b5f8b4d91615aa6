"""A sweep's results as native W&B objects, logged in its summary run (job type ``sweep-summary``).

- ``results_table``: one row per stored trial with the columns of ``results.csv`` (``bench.store.record.table``:
  the cell, NFE, n, seeds, every score with its std, KID ×10³, wall time, the protocol) plus the cell's 8x8
  sample grid as an image column (``GRID_COLUMN``);
- ``series_table``: one row per (series, S), the series being a row of the paper's Table 1 (Song et al. 2020,
  section 5: DDIM at one η, or another sampler) named and filled as the report's table and figures have it
  (``bench.store.table_cells``: the same trials, "η = 0.5" with the spacing in brackets when the sweep has
  several): FID as the mean and std (ddof = 1) over seed blocks, NFE and the mean sampling wall time;
- ``CHARTS``: the line charts W&B draws from ``series_table`` (``wandb.plot.line``, one line per series): FID
  against S and against wall time, interactive in W&B.

The keys here are the names the W&B Report (``bench.tracking.wandb_report``) points its panels at.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.store.record import CellRecord, table
from bench.store.table_cells import as_number, complete_blocks, lines, select_cells, table_cell
from bench.store.untrusted import artifact_file

SAMPLES_KEY = "samples"  # each cell run's sample grid
RESULTS_KEY = "results"  # the results table's key in the summary run
GRID_COLUMN = "grid_image"  # its image column: the cell's sample grid
SERIES_KEY = "fid_series"  # the table the charts are drawn from
SERIES_COLUMNS = ("series", "spacing", "sampler", "eta", "steps", "nfe", "blocks", "fid", "fid_std", "wall_s")


@dataclass(frozen=True)
class Chart:
    """A line chart of ``series_table``: ``y`` against ``x``, one line per value of ``stroke``."""

    key: str  # the chart's key in the run; W&B keeps its data under ``<key>_table``
    x: str
    y: str
    title: str
    stroke: str = "series"

    @property
    def table_key(self) -> str:
        """Where W&B stores the chart's data (``wandb.plot`` logs a chart's table as ``<key>_table``)."""
        return f"{self.key}_table"


CHARTS = (
    Chart("fid_vs_steps", "steps", "fid", "FID vs sampling steps S"),
    Chart("fid_vs_wall_time", "wall_s", "fid", "FID vs sampling wall time (s)"),
)


def results_table(records: Sequence[CellRecord], root: str | Path) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of every record: ``record.table``'s columns, then ``GRID_COLUMN``, the path of the cell's
    grid (a PNG inside the sweep's artifacts folder ``root``, never a file elsewhere that the store names) or
    None."""
    names, rows = table(records)
    grids = [artifact_file(root, r.measured.grid) if r.measured.grid else None for r in records]
    return [*names, GRID_COLUMN], [[*row, grid] for row, grid in zip(rows, grids, strict=True)]


def series_table(records: Sequence[CellRecord]) -> tuple[list[str], list[list[Any]]]:
    """(``SERIES_COLUMNS``, one row per chart line and S where the report's FID cell has a value): ``fid`` is
    that cell's mean over seed blocks, ``fid_std`` their std (ddof = 1; None for one block), ``blocks`` how many,
    ``nfe`` the (least) NFE they recorded (None when none did), ``wall_s`` their mean sampling time (None without
    one): every column from the same blocks (``complete_blocks``: a block whose FID is NaN is in none). A cell the
    report shows as failed or missing has no row."""
    cells = select_cells(records, [])
    rows = []
    for line in lines(cells):
        sampler, eta = line.row
        for s in line.steps:
            blocks = cells[(line.spacing, line.row, s)]
            c = table_cell(blocks, "fid", s)
            if c.status != "value":
                continue
            good = complete_blocks(blocks, "fid").values()
            walls = [w for r in good if (w := as_number(r.measured.wall_s)) is not None]
            nfes = [r.measured.nfe for r in good if r.measured.nfe is not None]
            rows.append([line.label, line.spacing, sampler, eta, s, min(nfes, default=None), c.blocks, c.mean,
                         c.std, statistics.fmean(walls) if walls else None])  # fmt: skip
    return list(SERIES_COLUMNS), rows
