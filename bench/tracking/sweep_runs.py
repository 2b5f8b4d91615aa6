"""The sweep's W&B runs: one per cell and one summary per sweep, in the sweep's group.

Every run goes through ``bench.tracking.wandb_run.tracked``: a failure there is one warning and never stops the
sweep. Each run's id is derived from the project, the sweep and the cell (``conventions.run_id``), so a rerun
updates its run.
A cell run uses the ``model`` artifact it sampled and the ``reference-<dataset>-<extractor>`` statistics it
scored against (W&B records that version the first time a cell uses it; later cells match its digest), and
logs its sample grid as ``samples-<sweep>-<cell>``, which the report uses.
"""

from __future__ import annotations

import dataclasses
import glob
from pathlib import Path
from typing import Any

from bench.store.record import NOT_MEASURED, CellRecord, Measurement
from bench.tracking import results
from bench.tracking.conventions import (
    WandbOptions,
    model_artifact,
    reference_artifact,
    samples_artifact,
    upload,
    wandb_options,
)
from bench.tracking.wandb_run import tracked


def track_cell(mode: str | WandbOptions | None, spec: Any, cell: Any, measurement: Measurement | None, display: Any,
               error: str | None = None) -> None:  # fmt: skip
    """One run per cell in the sweep's group: config = cell + protocol, summary = the measured values (KID ×10³)
    and the ``error`` of a failed cell, the grid."""
    root, m = Path(spec.artifacts), measurement or NOT_MEASURED
    config = {**cell.fields(), "n": spec.n, "seeds": m.seeds, "dataset": spec.dataset, "T": spec.T,
              "checkpoint": spec.checkpoint, "nfe": m.nfe, **dataclasses.asdict(m.protocol)}  # fmt: skip
    numbers = {k: v for k, v in m.summary().items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    how = wandb_options(mode).wandb_artifacts

    def body(tr: Any) -> None:
        tr.log(numbers)
        tr.summary({**numbers, **({"error": error} if error else {})})
        tr.use_artifact(model_artifact(spec.checkpoint), "model", [Path(spec.checkpoint)])
        if stats := reference_files(spec, m):
            name = reference_artifact(spec.dataset, spec.extractor)
            tr.use_artifact(name, "reference-stats", stats, upload=upload(stats[0], how))
        if m.grid:
            tr.log_image(results.SAMPLES_KEY, root / m.grid, caption=cell.label)
            tr.log_artifact(samples_artifact(spec.name, cell.slug), "samples", [root / m.grid], True)

    tracked(mode, display.warn, f"cell {cell.label}", body, key=("sweep-cell", spec.name, cell.key),
            name=f"{spec.name}-{cell.slug}", group=spec.name, job_type="sweep-cell", config=config,
            dir=root)  # fmt: skip


def reference_files(spec: Any, m: Measurement) -> list[Path]:
    """The cached reference statistics a cell was scored against (torch-fidelity's files named by its key)."""
    if not m.protocol.ref_key:
        return []
    return sorted((Path(spec.cache_dir) / "reference").glob(f"{glob.escape(m.protocol.ref_key)}-*.pt"))


def track_summary(mode: str | WandbOptions | None, spec: Any, records: list[CellRecord], display: Any) -> None:
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

    tracked(mode, display.warn, "the sweep summary", body, key=("sweep-summary", spec.name),
            name=f"{spec.name}-summary", group=spec.name, job_type="sweep-summary", config=spec.to_dict(),
            dir=root)  # fmt: skip
