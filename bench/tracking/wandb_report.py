"""A sweep's W&B Report, defined in code and published through wandb-workspaces' reports API (the optional extra
``wandb-report``).

``report_definition`` describes the Report as plain data: headings, markdown and panel grids, each grid with the
runset it shows (the project's runs of the sweep's group and one job type) and panels naming the keys the sweep's
runs log: the paper-style table (Song et al. 2020, Table 1 layout) as markdown, FID against S and against wall
time, one line per η (the summary run's charts, ``bench.tracking.results.CHARTS``), every cell with its sample
grid (the summary run's results table), the cells' sample grids in a media browser, and the provenance
(checkpoint, command, library versions). ``save_definition`` writes it into the report folder as
``wandb_report.json`` whenever W&B is on (online or offline; not when disabled), with or without the
extra; a report with W&B disabled removes the one an earlier report saved (``drop_definition``), one whose W&B
failed keeps it (``keep_definition``); ``publish`` (online) turns it into
``wandb_workspaces.reports.v2`` objects (``build_report``, which touches no network when the entity is given)
and saves it, updating the Report it published before (its id is kept in ``wandb_report.json``, else the
project's Report of the same title) instead of adding one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.tracking.conventions import WandbOptions
from bench.tracking.results import CHARTS, RESULTS_KEY, SAMPLES_KEY
from ddim.errors import one_line, printable
from ddim.files import atomic_write_json

DEFINITION_FILE = "wandb_report.json"
KIND = "ddimbench-wandb-report"  # marks a definition file as ours
INSTALL = "pip install 'ddimbench[wandb-report]'  (or: pip install wandb-workspaces)"
LINE_CHART = "wandb/line/v0"  # the Vega spec wandb.plot.line logs its charts with


def runset_filter(sweeps: Sequence[str], job_type: str) -> str:
    """The W&B filter expression selecting the runs of ``job_type`` in the sweeps' groups."""
    group = f"Metric('Group') == {sweeps[0]!r}" if len(sweeps) == 1 else f"Metric('Group') in {list(sweeps)!r}"
    return f"{group} and Metric('JobType') == {job_type!r}"


def report_definition(sweeps: Sequence[str], *, project: str, entity: str | None, table_md: str,
                      provenance_md: str, grid: bool = True) -> dict[str, Any]:  # fmt: skip
    """The Report of the sweeps ``sweeps`` (their names are their W&B groups) in ``project`` as JSON-able data.

    ``entity`` None: W&B's default entity, looked up only when publishing. ``table_md`` is the report's
    table.md, ``provenance_md`` its provenance as a markdown table. ``grid`` False (a Pareto search, whose summary
    run has no FID-per-η lines): no chart panels. Several sweeps: one grid of charts per sweep (runset
    ``summary:<sweep>``), since their lines share names (η = 0 in each).
    """
    name = " + ".join(sweeps)
    runsets = {
        "summary": {"name": f"{name}: sweep summary", "filters": runset_filter(sweeps, "sweep-summary")},
        "cells": {"name": f"{name}: cells", "filters": runset_filter(sweeps, "sweep-cell")},
    }
    if len(sweeps) > 1:
        runsets.update({f"summary:{s}": {"name": f"{s}: sweep summary", "filters": runset_filter([s], "sweep-summary")}
                        for s in sweeps})  # fmt: skip
    charts = [
        {"type": "line_chart", "title": c.title, "table_key": c.table_key, "x": c.x, "y": c.y, "stroke": c.stroke}
        for c in CHARTS
    ]

    def panels(runset: str, *panels: dict) -> dict:
        return {"type": "panel_grid", "runset": runset, "panels": list(panels)}

    lines = [{"type": "h2", "text": "FID vs sampling steps S and vs wall time, one line per η"}]
    lines += [panels(key, *charts) for key in runsets if key.startswith("summary:")] or [panels("summary", *charts)]
    blocks = [
        {"type": "h1", "text": "Results"},
        {"type": "markdown", "text": table_md},
        *(lines if grid else []),
        {"type": "h2", "text": "Every cell: metrics with their std, NFE, seeds, wall time and sample grid"},
        panels("summary", {"type": "table", "key": RESULTS_KEY}),
        {"type": "h2", "text": "Sample grids, one per cell"},
        panels("cells", {"type": "media", "title": "sample grids", "keys": [SAMPLES_KEY]}),
        {"type": "h2", "text": "Provenance"},
        {"type": "markdown", "text": provenance_md},
    ]
    return {
        "kind": KIND,
        "title": f"ddimbench: {name}"[:128],
        "description": f"DDIM sweep {name}: FID, IS and KID per η and S (Song et al. 2020, Table 1), by ddimbench",
        "project": project,
        "entity": entity,
        "runsets": runsets,
        "blocks": blocks,
    }


def _previous(path: Path) -> dict | None:
    """The definition file at ``path`` when it is ours ({} when there is none), None for a file that is not."""
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return old if isinstance(old, dict) and old.get("kind") == KIND else None


def save_definition(folder: Path, definition: dict[str, Any], warn: Callable[[str], None]) -> Path | None:
    """Write ``definition`` to ``folder/wandb_report.json``, keeping what the last publication recorded of the same
    Report (``published``); a file of that name that is not ours is left alone (one warning)."""
    path = folder / DEFINITION_FILE
    old = _previous(path)
    if old is None:
        warn(f"{path} is not a ddimbench W&B Report definition; left alone (the Report's definition is not saved)")
        return None
    same = {k: old.get(k) for k in ("project", "entity", "title")} == {
        k: definition[k] for k in ("project", "entity", "title")
    }
    published = old.get("published") if same and isinstance(old.get("published"), dict) else None
    return atomic_write_json(path, {**definition, **({"published": published} if published else {})})


def build_report(definition: dict[str, Any], wr: Any, entity: str) -> Any:
    """The ``wandb_workspaces.reports.v2.Report`` (module ``wr``) of ``definition`` in ``entity``; builds objects
    only (no W&B API call: every entity is given)."""
    project = definition["project"]
    runsets = {
        key: wr.Runset(entity=entity, project=project, name=r["name"], filters=r["filters"])
        for key, r in definition["runsets"].items()
    }

    def panel(p: dict) -> Any:
        if p["type"] == "line_chart":
            return wr.CustomChart(query={"summaryTable": {"tableKey": p["table_key"]}}, chart_name=LINE_CHART,
                                  chart_fields={"x": p["x"], "y": p["y"], "stroke": p["stroke"]},
                                  chart_strings={"title": p["title"]})  # fmt: skip
        if p["type"] == "table":
            return wr.WeavePanelSummaryTable(table_name=p["key"])
        return wr.MediaBrowser(title=p["title"], media_keys=list(p["keys"]), num_columns=4)

    def block(b: dict) -> Any:
        if b["type"] == "panel_grid":
            return wr.PanelGrid(runsets=[runsets[b["runset"]]], panels=[panel(p) for p in b["panels"]])
        if b["type"] == "markdown":
            return wr.MarkdownBlock(text=b["text"])
        return (wr.H1 if b["type"] == "h1" else wr.H2)(text=b["text"])

    blocks = [block(b) for b in definition["blocks"]]
    return wr.Report(entity=entity, project=project, title=definition["title"], description=definition["description"],
                     blocks=blocks)  # fmt: skip


def _existing_id(api: Any, entity: str, project: str, title: str) -> str:
    """The id of the project's Report titled ``title`` ("" when there is none, or no such project yet: saving the
    Report creates it)."""
    try:
        return next((str(r.id) for r in api.reports(f"{entity}/{project}") if r.display_name == title), "")
    except Exception:  # a project that does not exist yet, a query W&B refuses: create the Report
        return ""


def publish(folder: Path, warn: Callable[[str], None]) -> str | None:
    """Create or update the W&B Report that ``folder/wandb_report.json`` defines; returns its URL, or None after
    one warning (wandb-workspaces missing, no server, a refused save): publishing never fails the report."""
    path = folder / DEFINITION_FILE
    definition = _previous(path)
    if not definition:
        return None
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError:
        warn(f"W&B Report not published: wandb-workspaces is missing; {INSTALL}, then rerun `ddimbench report`")
        return None
    try:
        import wandb

        api = wandb.Api()
        entity = definition.get("entity") or api.default_entity
        report = build_report(definition, wr, entity)
        old = definition.get("published") or {}
        same = old.get("entity") == entity and isinstance(old.get("id"), str)
        report.id = old["id"] if same else _existing_id(api, entity, definition["project"], definition["title"])
        report.save()
        url = str(report.url)
    except Exception as exc:
        warn(f"W&B: publishing the Report failed ({one_line(exc)}); its definition stays in {path}")
        return None
    atomic_write_json(path, {**definition, "published": {"entity": entity, "id": report.id, "url": url}})
    print(printable(f"W&B Report: {url}"), file=sys.stderr)  # the server's answer: no terminal escapes
    return url


def report_target(project: str | None = None, entity: str | None = None) -> tuple[str, str | None]:
    """The W&B project and entity of the Report: ``project`` > ``$WANDB_PROJECT`` > "ddimbench" (as the runs), and
    ``entity`` > ``$WANDB_ENTITY`` > None (W&B's default entity, looked up only when publishing)."""
    opts = WandbOptions(wandb_project=project, wandb_entity=entity)  # the runs' own rule
    return opts.project, opts.entity


def record_report(mode: str, folder: Path, sweeps: Sequence[str], provenance_md: str, warn: Callable[[str], None],
                  project: str | None = None, entity: str | None = None, grid: bool = True) -> bool:  # fmt: skip
    """In a report's W&B run (``mode``: the run's mode after fallbacks): save the Report's definition into the
    report folder (from its table.md), then publish it when the run is online; returns whether the definition
    was saved. ``project`` / ``entity``: the ``--wandb-project`` / ``--wandb-entity`` of the command, if any
    (``report_target``); ``grid``: as ``report_definition``'s."""
    if mode not in ("online", "offline"):
        return False
    project, entity = report_target(project, entity)
    table_md = (folder / "table.md").read_text(encoding="utf-8")
    definition = report_definition(sweeps, project=project, entity=entity, table_md=table_md,
                                   provenance_md=provenance_md, grid=grid)  # fmt: skip
    if save_definition(folder, definition, warn) is None:
        return False
    if mode == "online":
        publish(folder, warn)
    return True


def drop_definition(folder: Path) -> None:
    """Remove ``folder/wandb_report.json`` when it is ours: a report written with W&B disabled must not present an
    earlier report's definition as current. The Report's id recorded there goes with it; the next publication
    finds the Report again by its title. A file of that name that is not ours stays."""
    path = folder / DEFINITION_FILE
    if _previous(path):
        path.unlink(missing_ok=True)


def keep_definition(folder: Path, warn: Callable[[str], None]) -> None:
    """After a report whose W&B failed before it saved its own definition: leave an earlier report's
    ``folder/wandb_report.json`` (and the published Report's id in it, which the next publication updates) and say
    in one warning that it describes the earlier report."""
    path = folder / DEFINITION_FILE
    if _previous(path):
        warn(f"W&B: {path} is still an earlier report's (W&B failed before this report's was saved); rerun the "
             "report with W&B working to replace it")  # fmt: skip
