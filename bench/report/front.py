"""The Pareto front of a search (``ddimbench sweep --search pareto``): its cells, their FID and the cost
the search minimised, as terminal lines, a report table and a report figure.

The search minimises (FID, NFE), or (FID, seconds per image) with ``objective=time`` (``bench.sweep``);
the front is the store's ``pareto`` flag (Optuna's ``best_trials`` on exactly those values), or, for
records without it, the non-dominated complete trials. Every cost here is the one the search saw:
``nfe``, or ``wall_s / n`` (sampling seconds per image). Pure python: no torch, no optuna.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from bench.report import plots
from bench.report.tables import Metric, Table
from bench.store.cell import eta_str, row_label
from bench.store.record import CellRecord
from bench.store.table_cells import TableCell, as_number

OBJECTIVES = {"nfe": ("NFE", ".0f"), "time": ("seconds per image", ".4g")}


def objective_of(meta: Mapping) -> str:
    """The cost a search minimised beside FID: ``nfe`` (the default) or ``time``."""
    objective = str(meta.get("objective") or "nfe")
    return objective if objective in OBJECTIVES else "nfe"


def cost(r: CellRecord, objective: str) -> float | None:
    """The cost of one record as the search measured it (NFE, or sampling seconds per image)."""
    m = r.measured
    if objective == "time":
        wall, n = as_number(m.wall_s), as_number(m.n)
        return wall / n if wall is not None and n else None
    return as_number(m.nfe)


def _fid(r: CellRecord) -> float:
    """The FID of a measured record (``_measured``)."""
    return float(r.scores.fid or 0.0)


def _measured(records: Sequence[CellRecord], objective: str) -> list[CellRecord]:
    out = []
    for r in records:
        fid, c = as_number(r.scores.fid), cost(r, objective)
        if r.state == "COMPLETE" and fid is not None and math.isfinite(fid) and c is not None:
            out.append(r)
    return out


def front(records: Sequence[CellRecord], objective: str) -> list[CellRecord]:
    """The complete records on the Pareto front of (FID, cost), cost ascending (then FID, then trial)."""
    done = _measured(records, objective)
    if any(r.pareto is not None for r in records):
        on = [r for r in done if r.pareto]
    else:
        x, y = [cost(r, objective) for r in done], [_fid(r) for r in done]
        on = [done[i] for i in plots.pareto_front(x, y)]
    return sorted(on, key=lambda r: (cost(r, objective), _fid(r), r.number))


def setting(r: CellRecord) -> str:
    """The cell of a record in words: "η = 0.31, S = 12, trailing" (+ the seed block when not 0)."""
    c = r.cell
    block = c.seed_block
    return f"{row_label(c.row)}, S = {c.steps}, {c.spacing}" + (f", seed block {block}" if block else "")


def front_lines(records: Sequence[CellRecord], objective: str) -> list[str]:
    """What the terminal prints at the end of a search: the front's cells with their FID and cost."""
    name, fmt = OBJECTIVES[objective]
    on, done = front(records, objective), _measured(records, objective)
    if not on:
        return ["Pareto front: no trial measured FID; nothing to show"]
    lines = [f"Pareto front (FID vs {name}, both minimised): {len(on)} of {len(done)} measured trials"]
    for r in on:
        lines.append(f"  {name} {format(cost(r, objective), fmt)}  FID {_fid(r):.2f}  {setting(r)}"
                     f"  (trial #{r.number})")  # fmt: skip
    return lines


def front_table(records: Sequence[CellRecord], meta: Mapping, metrics: Sequence[Metric]) -> Table:
    """The report's table of a search: one row per cell on the front, cost ascending; columns the cost, then
    the scores (KID ×10³ as everywhere)."""
    objective = objective_of(meta)
    name, fmt = OBJECTIVES[objective]
    on, done = front(records, objective), _measured(records, objective)
    scores = [m for m in metrics if m.key == "fid"] + [m for m in metrics if m.key != "fid"]
    rows = []
    for r in on:
        cells = [TableCell("value", cost(r, objective), blocks=1)]
        for m in scores:
            v = as_number(getattr(r.scores, m.field))
            cells.append(TableCell("missing") if v is None else TableCell("value", v * m.scale, blocks=1))
        rows.append((f"#{r.number}: {setting(r)}", tuple(cells)))
    n, seeds, dataset = meta.get("n"), meta.get("seeds"), meta.get("dataset")
    count = (f" {n} samples per trial" if n is not None else "") + (f" (seeds {seeds})" if seeds else "")
    caption = (
        f"The Pareto front of the search: the cells no other measured cell beats on both FID and {name} "
        f"(the two values it minimised), {len(on)} of {len(done)} measured trials, {name} ascending."
        + (f" On {dataset}," if dataset else "")
        + count
        + ". Every trial is in results.csv."
    )
    return Table(
        title=f"Pareto front — FID vs {name}",
        label="tab:pareto",
        caption=caption,
        corner="trial: setting",
        groups=(("", (f"{name} ↓", *(m.header for m in scores))),),
        rows=tuple(rows),
        col_fmts=(fmt, *(".2f" for _ in scores)),
    )


def front_png(records: Sequence[CellRecord], meta: Mapping) -> bytes | None:
    """FID against the search's cost for every measured trial, the front drawn over them."""
    objective = objective_of(meta)
    name, _ = OBJECTIVES[objective]
    done = _measured(records, objective)
    if not done:
        return None
    on = {r.number for r in front(records, objective)}
    x, y = [float(cost(r, objective)) for r in done], [_fid(r) for r in done]
    idx = sorted((i for i, r in enumerate(done) if r.number in on), key=lambda i: (x[i], y[i]))
    notes = [f"S={r.cell.steps}" + (f" η={eta_str(r.cell.eta)}" if r.cell.eta is not None else "") for r in done]
    title = f"{meta.get('name', '')}: Pareto front, FID vs {name}".strip(": ")
    return plots.pareto_png(x, y, idx, notes, xlabel=f"{name} (the cost the search minimised)", title=title)


def summary_lines(summary: Any, spec: Any) -> list[str]:
    """What ``ddimbench sweep`` prints at the end: a search's front, then the count and what to run next."""
    lines = front_lines(summary.records, spec.objective) if spec.search else []
    n = summary.missing
    left = f", {n} not measured (a worker ended abnormally; rerun the same command to finish)" if n else ""
    return [*lines, f"sweep {summary.name!r}: {summary.complete} cells complete, {summary.failed} failed{left} "
                    f"(store {summary.storage}); next: ddimbench report {summary.name}"]  # fmt: skip
