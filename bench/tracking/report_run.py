"""A written report's W&B run: one ``report`` run per report, for one sweep or several (Table 1 across sweeps).

The run is grouped with the (first) sweep, with an id derived from the sweep names (``conventions.run_id``), so
a rerun of the same report updates its run. It logs the report's results table and figures, uses each cell's
``samples-<sweep>-<cell>`` artifact (so W&B's lineage walks checkpoint -> cells -> report), defines the sweeps'
W&B Report in the folder and, online, publishes it (``bench.tracking.wandb_report``), and logs the folder as the
``report-<name>`` artifact last, once it is complete. A failure is one warning (``wandb_run.tracked``). A report
with W&B disabled leaves no definition from an earlier report; one whose W&B failed before saving its own keeps
the earlier one (with the id of the Report it published), saying so in one warning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.store.record import CellRecord, table
from bench.store.study import Sweep
from bench.store.untrusted import artifact_file, artifacts_root
from bench.tracking.conventions import report_artifact, samples_artifact, wandb_options
from bench.tracking.wandb_report import drop_definition, keep_definition, record_report
from bench.tracking.wandb_run import tracked


def use_grids(tracker: Any, sweep: str, root: Path, records: Sequence[CellRecord]) -> None:
    """A report run uses each cell's ``samples`` artifact (its grid, matched by digest): cells -> report. A grid
    the store names outside ``root`` (absolute, ``..``) is never read."""
    for r in records:
        grid = artifact_file(root, r.measurement.grid) if r.measurement is not None and r.measurement.grid else None
        if grid is not None:
            tracker.use_artifact(samples_artifact(sweep, r.cell.slug), "samples", [grid])


def track_report(wandb: str | None, folder: Path, sweeps: Sequence[Sweep], provenance_md: str,
                 written: Mapping[str, Path], warn: Callable[[str], None]) -> None:  # fmt: skip
    """Log the report written into ``folder`` from ``sweeps`` as its W&B ``report`` run.

    ``provenance_md``: the sweeps' provenance as markdown, for the W&B Report; ``written``: the report's files
    ({relative name: path}), whose top-level figures are logged as images. The results table has the columns of
    ``results.csv``, the sweep's name first when there are several. The run's config is the sweep's provenance
    (for several, their names), and its offline files go where the first sweep's runs go, its artifacts folder,
    never into the report folder (which holds only the report).
    """
    names = [name for name, _, _ in sweeps]
    joined, opts = "+".join(names), wandb_options(wandb)
    first, _, meta = sweeps[0]
    root = artifacts_root(first, meta)

    saved = False

    def body(tracker: Any) -> None:
        nonlocal saved
        if len(sweeps) == 1:
            tracker.log_table("results", *table(sweeps[0][1]))
        else:
            every = [(name, r) for name, records, _ in sweeps for r in records]
            columns, rows = table([r for _, r in every])
            tracker.log_table("results", ["sweep", *columns], [[name, *row] for (name, _), row in zip(every, rows)])
        for rel, path in written.items():
            if rel.endswith(".png") and "/" not in rel:  # the figures, not every grid
                tracker.log_image(rel.removesuffix(".png"), path)
        for name, records, m in sweeps:
            use_grids(tracker, name, artifacts_root(name, m), records)
        grid = all(m.get("mode") != "pareto" for _, _, m in sweeps)  # a search has no FID-per-η lines
        saved = record_report(tracker.mode, folder, names, provenance_md, warn, project=opts.project,
                              entity=opts.entity, grid=grid)  # fmt: skip
        tracker.log_artifact(report_artifact(names), "report", [folder], True)  # last: the folder is complete

    config = dict(meta) if len(sweeps) == 1 else {"sweeps": names}
    tracked(wandb, warn, "the report", body, key=("report", joined), name=f"{joined}-report", group=first,
            job_type="report", config=config, dir=root)  # fmt: skip
    if saved:
        return
    if opts.mode == "disabled":  # W&B switched off: no earlier report's Report definition left looking current
        drop_definition(folder)
    else:  # W&B failed: a transient failure must not lose the published Report's id
        keep_definition(folder, warn)
