"""The sweep's W&B runs: one per cell and one summary per sweep, in the sweep's group.

Every run goes through ``tracked``: a failure there is one warning and never stops the sweep.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bench.store.record import NOT_MEASURED, CellRecord, Measurement
from bench.tracking import results
from bench.tracking.wandb_run import make_tracker


def tracked(mode: str | None, warn: Any, what: str, body: Any, **run: Any) -> None:
    """Run ``body(tracker)`` in a fresh W&B run; any failure is one warning, never an exception."""
    if mode == "disabled":
        return
    try:
        with make_tracker(mode, **run) as tracker:
            body(tracker)
    except Exception as exc:
        warn(f"W&B: logging {what} failed ({type(exc).__name__}: {exc}); the sweep goes on")


def track_cell(mode: str | None, spec: Any, cell: Any, measurement: Measurement | None, display: Any,
               error: str | None = None) -> None:  # fmt: skip
    """One run per cell in the sweep's group: config = cell + protocol, summary = the measured values (KID ×10³)
    and the ``error`` of a failed cell, the grid."""
    root, m = Path(spec.artifacts), measurement or NOT_MEASURED
    config = {**cell.fields(), "n": spec.n, "seeds": m.seeds, "dataset": spec.dataset, "T": spec.T,
              "checkpoint": spec.checkpoint, "nfe": m.nfe, **dataclasses.asdict(m.protocol)}  # fmt: skip
    numbers = {k: v for k, v in m.summary().items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def body(tr: Any) -> None:
        tr.log(numbers)
        tr.summary({**numbers, **({"error": error} if error else {})})
        if m.grid:
            tr.log_image(results.SAMPLES_KEY, root / m.grid, caption=cell.label)

    tracked(mode, display.warn, f"cell {cell.label}", body, name=f"{spec.name}-{cell.slug}", group=spec.name,
             job_type="sweep-cell", config=config, dir=root)  # fmt: skip


def track_summary(mode: str | None, spec: Any, records: list[CellRecord], display: Any) -> None:
    """The sweep's summary run: every trial as the results ``wandb.Table`` (results.csv's columns and each cell's
    sample grid as an image) and, for a grid, FID against S and against wall time as native line charts, one line
    per η or sampler (``bench.tracking.results``); a search's trials (any η) make no lines."""
    root = Path(spec.artifacts)

    def body(tr: Any) -> None:
        tr.log_table(results.RESULTS_KEY, *results.results_table(records, root), images=(results.GRID_COLUMN,))
        columns, rows = results.series_table(records)
        charts = [dataclasses.replace(c, title=f"{spec.name}: {c.title}") for c in results.CHARTS]
        if rows and spec.search is None:
            tr.log_table(results.SERIES_KEY, columns, rows, charts=charts)
        tr.summary({s.lower(): sum(r.state == s for r in records) for s in ("COMPLETE", "FAIL")})

    tracked(mode, display.warn, "the sweep summary", body, name=f"{spec.name}-summary", group=spec.name,
             job_type="sweep-summary", config=spec.to_dict(), dir=root)  # fmt: skip
