"""``make_report``: a sweep's report from its store (no recomputation), logged to W&B as a ``report`` run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bench.console import warn
from bench.report.asked import asked_metrics
from bench.report.write import incomplete, provenance_md, write_report
from bench.store.artifacts import fetch_missing
from bench.store.grids import Grids
from bench.store.study import load_results
from bench.store.untrusted import artifact_file, artifacts_root, check_name
from bench.tracking.report_run import track_report
from ddim.errors import DDIMError


def make_report(
    name: str,
    *,
    storage: str | None = None,
    out: str | Path | None = None,
    compare_paper: str | None = None,
    force: bool = False,
    wandb: str | None = None,
) -> Path:
    """Write ``reports/<name>/`` (or ``out``) from the stored results; returns the folder.

    Sample grids are read from the sweep's artifacts folder, and only PNG files inside it (the store is
    untrusted: ``bench.store.untrusted``); a grid made on another machine (not present here) is fetched
    from the sweep's artifact store (``bench.store.artifacts``), and left out with a warning when the
    store does not have it either. A sweep with cells not run yet (interrupted, running, never started) is
    reported with them as not run, and said to be incomplete (in the report and as a warning), unless only a grid
    forgotten since asked for them (``bench.store.grids.Grids.shown``). With tracking
    on, the table and figures are logged as a ``report`` run in the sweep's W&B group
    (``bench.tracking.report_run``: one run per report name, a rerun updates it) that uses each cell's ``samples``
    artifact and logs the folder as the ``report-<name>`` artifact, and the sweep's W&B Report is defined
    (``wandb_report.json`` in the folder) and, online, published.
    """
    check_name(name, "sweep name ")  # it names the report's folder
    stored: list[Grids] = []
    records, meta, extras = load_results(name, storage, stored)
    records = stored[0].shown(records)  # not the trials not run of a forgotten grid's cells
    root = artifacts_root(name, meta)
    fetch_missing(name, storage, records, root)
    missing = 0

    def present(rel: str | None) -> str | None:
        nonlocal missing
        if rel and artifact_file(root, rel) is None:
            rel, missing = None, missing + 1
        return rel

    for i, r in enumerate(records):
        if (m := r.measurement) is not None:
            records[i] = dataclasses.replace(r, measurement=dataclasses.replace(m, grid=present(m.grid),
                                                                                strip=present(m.strip)))  # fmt: skip
    for key in ("interpolation", "consistency"):
        if extras.get(key) and artifact_file(root, extras[key]) is None:
            extras.pop(key)
            missing += 1
    if missing:
        warn(
            f"{missing} sample image(s) of {name!r} are not PNG files under {root}, nor in its artifact store "
            "(made on another machine? share the store with DDIMBENCH_ARTIFACT_STORE); the report leaves them out"
        )
    folder = Path(out) if out is not None else Path("reports") / name
    metrics = asked_metrics(name, meta)
    written = write_report(
        records,
        meta,
        folder,
        root=root,
        extras=extras,
        compare_paper=compare_paper,
        metrics=metrics,
        force=force,
        grids=stored[0],
    )
    if meta.get("mode") != "pareto" and (note := incomplete(records, meta, stored[0])):
        warn(note)

    sweeps = [(name, records, meta)]
    track_report(wandb, folder, sweeps, provenance_md(sweeps), written, warn)
    return folder


def make_reports(
    names: list[str], *, storage: str | None, out: str | None, compare_paper: list[str] | None, force: bool,
    wandb: str | None,
) -> Path:  # fmt: skip
    """``ddimbench report NAME...``: one sweep's report, or one Table 1 combining several sweeps."""
    from bench.report.multi import make_combined_report

    names, compare = list(dict.fromkeys(names)), list(compare_paper or [])
    if len(names) > 1:
        return make_combined_report(names, storage=storage, out=out, compare_paper=compare, force=force, wandb=wandb)
    if len(compare) > 1:
        raise DDIMError(f"one sweep, {len(compare)} --compare-paper datasets; give the one of {names[0]}'s dataset")
    return make_report(names[0], storage=storage, out=out, compare_paper=compare[0] if compare else None,
                       force=force, wandb=wandb)  # fmt: skip
