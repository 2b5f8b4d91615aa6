"""Turn stored sweep results into a paper-style report: Table 1-like tables (md, tex, html), a CSV of
every cell, figures, copied sample grids, a manifest with hashes, a README and a self-contained
index.html.

Pure python + numpy; matplotlib and PIL are reached through ``bench.report.plots``. No torch, no optuna:
the store hands us typed records (``bench.store.record.CellRecord``). Everything written is a function of
the inputs only (no clocks, sorted iteration), and every file is written atomically (temp file +
``os.replace``).

Table conventions live in ``bench.report.tables`` (Song et al. 2020, Table 1 layout). A Pareto search is shown
as its front (``bench.report.front``); several sweeps in one Table 1 are ``bench.report.multi``'s.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bench.report import front, paper, plots
from bench.report.docs import html_doc, kv_md, md_doc, record_order, results_csv
from bench.report.escape import md_escape
from bench.report.files import ReportWriter, jsonable
from bench.report.rerun import finish
from bench.report.tables import (
    METRICS,
    Metric,
    build_tables,
    inversion_table,
    slug,
    standalone_tex,
    table_md,
    table_tex,
)
from bench.store.cell import eta_str, row_label
from bench.store.grids import NO_GRIDS, Grids
from bench.store.record import BF16, CellRecord, listed_devices
from bench.store.study import Sweep
from bench.store.table_cells import (
    TableKey,
    as_number,
    cell_states,
    complete_blocks,
    lines,
    progress,
    row_order,
    select_cells,
    spacing_order,
    table_cell,
)
from bench.store.untrusted import artifact_file
from ddim.errors import DDIMError


# ------------------------------------------------------------------------------------------- files
def _read_input(root: Path, rel: str, what: str) -> bytes:
    path = artifact_file(root, rel)  # a PNG inside root, never a file elsewhere that a record names
    if path is None:
        raise DDIMError(
            f"{what} {str(rel)!r} not found as a PNG file under {root}; pass root= the folder the sweep's relative "
            "paths start from"
        )
    return path.read_bytes()


# ---------------------------------------------------------------------------------------- figures
def _grid_name(r: CellRecord, suffix: str) -> str:
    c = r.cell
    sampler, eta = c.row
    e = f"_eta{eta_str(eta)}" if sampler == "ddim" else ""
    return f"{slug(c.spacing)}_{slug(sampler)}{e}_S{c.steps}_b{c.seed_block}{suffix}"


def _plot_series(cells: Mapping[TableKey, Mapping[int, CellRecord]]) -> tuple[list, list]:
    """Per chart line (``bench.store.table_cells.lines``): FID vs S and FID vs seconds per image, both from the
    blocks the FID is averaged over (``complete_blocks``)."""
    by_steps, by_time = [], []
    for line in lines(cells):
        spacing, row = line.spacing, line.row
        pts, tpts = [], []
        for s in line.steps:
            blocks = cells[(spacing, row, s)]
            c = table_cell(blocks, "fid", s)
            if c.status != "value":
                continue
            pts.append((s, c.mean, c.std or 0.0))
            good = complete_blocks(blocks, "fid").values()
            cost = [1.0 / ips for r in good if (ips := as_number(r.measured.images_per_s)) and ips > 0]
            if cost:
                tpts.append((float(np.mean(cost)), c.mean, c.std or 0.0, f"S={s}"))
        kw = {"label": line.label, "group": spacing, "colour_key": row_label(row)}
        if pts:
            by_steps.append(plots.Series(x=[p[0] for p in pts], y=[p[1] for p in pts], yerr=[p[2] for p in pts], **kw))
        if tpts:
            x, y, e, notes = (list(v) for v in zip(*tpts, strict=True))
            by_time.append(plots.Series(x=x, y=y, yerr=e, notes=notes, **kw))
    return by_steps, by_time


def _consistency_sections(cells: Mapping[TableKey, Mapping[int, CellRecord]], root: Path) -> list:
    """Per spacing, the lowest-η DDIM row: one strip per S from the same (lowest) seed block."""
    sections = []
    for spacing in sorted({k[0] for k in cells}, key=spacing_order):
        etas = sorted({k[1][1] for k in cells if k[0] == spacing and k[1][0] == "ddim"})
        for eta in etas:
            with_strip = {
                (s, b): r.measured.strip
                for (sc, row, s), blocks in cells.items()
                if sc == spacing and row == ("ddim", eta)
                for b, r in blocks.items()
                if r.measured.strip
            }
            if not with_strip:
                continue
            block = min(b for _, b in with_strip)
            rows = []
            for s, b in sorted(with_strip):
                if b == block:
                    _read_input(root, with_strip[(s, b)], "sample strip")
                    rows.append((f"S = {s}", root / with_strip[(s, b)]))
            sections.append((f"DDIM eta = {eta_str(eta)}, {spacing} spacing, seed block {block}", rows))
            break
    return sections


# ------------------------------------------------------------------------------------ the report
def validate_records(records: Sequence[CellRecord]) -> list[CellRecord]:
    """The records, or a DDIMError naming the first that lacks a field the tables need."""
    if not records:
        raise DDIMError("no result records to report; run the sweep first or point at the right study")
    for i, r in enumerate(records):
        needed = {"number": r.number, "state": r.state, **r.cell.fields()}
        for key in (k for k, v in needed.items() if v is None and k != "eta"):
            raise DDIMError(f"result record {i} lacks '{key}'; regenerate the records with the sweep module")
        if r.cell.sampler == "ddim" and as_number(r.cell.eta) is None:
            raise DDIMError(f"trial #{r.number} is a ddim cell without eta; store eta for every ddim trial")
    return list(records)


def pick_metrics(names: Sequence[str], records: Sequence[CellRecord]) -> list[Metric]:
    """The metrics ``names`` that some record has a number for (unknown names are a DDIMError)."""
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise DDIMError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    chosen = [METRICS[m] for m in names]
    present = [m for m in chosen if any(as_number(getattr(r.scores, m.field)) is not None for r in records)]
    return present or chosen[:1]  # with no numbers at all, still show which cells failed or are pending


def _differs(key: str, value: object, sweeps: object) -> bool:
    """Whether a cell's protocol ``value`` of ``key`` is not the sweep's: for ``device``, not among the devices its
    workers ran on (``listed_devices``)."""
    if key == "device" and isinstance(value, str) and isinstance(sweeps, str):
        return value not in listed_devices(sweeps)
    return value != sweeps


def warnings_of(records: Sequence[CellRecord], meta: Mapping, compare: str | None) -> list[str]:
    """The report's warnings: protocol fields that differ between cells, short cells, a forced paper comparison."""
    out = []
    for r in sorted(records, key=lambda r: r.number):
        for key, v in dataclasses.asdict(r.measured.protocol).items():
            if v is not None and meta.get(key) is not None and _differs(key, v, meta[key]):
                out.append(f"trial #{r.number}: {key} {v!r} differs from the sweep's {meta[key]!r}")
        n = as_number(r.measured.n)
        if r.state == "COMPLETE" and n is not None and as_number(meta.get("n")) and n < float(meta["n"]):
            out.append(f"trial #{r.number}: metrics from {int(n)} samples, fewer than the sweep's {meta['n']}")
    if compare and (why := paper.mismatch(compare, meta.get("dataset"), meta.get("extractor"))):
        out.append(f"the paper's {compare} numbers (Inception FID) are shown beside a sweep of {why} (--force)")
    if meta.get("precision") == BF16:  # never silent: the paper's numbers and other sweeps are float32
        out.append("the network ran under bfloat16 autocast (bf16=true): its scores differ from float32 ones (the "
                   "paper's, and sweeps without bf16) by more than rounding")  # fmt: skip
    return out


_META_ORDER = ("name", "dataset", "command", "git_commit", "device", "T", "checkpoint", "checkpoint_sha256",
               "extractor", "extractor_sha256", "ref_key", "ref_sha256", "n", "seeds", "created", "runs",
               "last_run")  # fmt: skip


def provenance_rows(meta: Mapping) -> list[tuple[str, str]]:
    """(field, value) rows of a sweep's provenance, in a fixed order (nested fields as ``key.sub``)."""
    keys = [k for k in _META_ORDER if k in meta] + sorted(k for k in meta if k not in _META_ORDER)
    rows = []
    for k in keys:
        v = meta[k]
        if isinstance(v, Mapping):
            rows += [(f"{k}.{sub}", str(v[sub])) for sub in sorted(v)]
        else:
            rows.append((k, "—" if v is None else str(v)))
    return rows


def incomplete_note(cells: Mapping[TableKey, Mapping[int, CellRecord]], meta: Mapping,
                    grids: Grids = NO_GRIDS) -> str | None:  # fmt: skip
    """The report's sentence on a sweep whose ``select_cells``' cells and ``grids`` (its runs') have cells not run
    yet (never started, running or interrupted), and the command(s) that finish it (``bench.report.rerun``); None
    when every cell was measured or failed."""
    grid = grids.cells
    done = progress(cells, grid)
    if not done.not_run:
        return None
    failed = f", {done.failed} failed" if done.failed else ""
    last = meta.get("last_run") if isinstance(meta.get("last_run"), Mapping) else {}
    command = grids.command or last.get("command") or meta.get("command")  # the grids' own: that of their latest
    rerun = finish(cell_states(cells, grid), grids.latest, command, grids.runs)
    name = f"sweep {meta['name']!r}" if meta.get("name") else "the sweep"
    return (f"{name} is incomplete: {done.measured} of {done.total} cells measured{failed}, {done.not_run} not run "
            f"(interrupted, still running or never started; — in the tables); {rerun}")  # fmt: skip


def interrupted_lines(cells: Mapping[TableKey, Mapping[int, CellRecord]]) -> list[str]:
    """One line per trial of ``select_cells``' cells that a stop interrupted (its cell not run), with its message:
    listed under the report's note that the sweep is incomplete."""
    stopped = sorted((r for b in cells.values() for r in b.values() if r.interrupted), key=lambda r: r.number)
    return [f"trial #{r.number} ({r.cell.label}): {r.error}" for r in stopped]


def incomplete(records: Sequence[CellRecord], meta: Mapping, grids: Grids = NO_GRIDS) -> str | None:
    """``incomplete_note`` of a sweep's records and grids (``bench.store.study.load_results``)."""
    return incomplete_note(select_cells(records, [], grids.cells), meta, grids)


def provenance_md(sweeps: Sequence[Sweep]) -> str:
    """The sweeps' provenance as markdown tables, each under its sweep's name when there are several (the W&B
    Report's provenance block)."""
    if len(sweeps) == 1:
        return kv_md(("field", "value"), provenance_rows(sweeps[0][2]))
    return "\n\n".join(
        f"**{md_escape(name)}**\n\n{kv_md(('field', 'value'), provenance_rows(meta))}" for name, _, meta in sweeps
    )


def write_report(
    records: Sequence[CellRecord],
    meta: Mapping,
    out_dir: str | os.PathLike,
    *,
    root: str | os.PathLike = ".",
    extras: Mapping | None = None,
    compare_paper: str | None = None,
    metrics: Sequence[str] = ("fid", "isc", "kid"),
    force: bool = False,
    grids: Grids = NO_GRIDS,
) -> dict[str, Path]:
    """Write the report for one sweep into ``out_dir``; return {relative name: path} of every file.

    ``records`` are the sweep's trials, ``meta`` its provenance, ``root`` the folder the
    records' relative ``grid``/``strip`` paths (and ``extras``' paths) start from, ``grids`` the sweep's runs' grids
    (a cell no trial ran shows as not run; a report with such cells says how to finish). A Pareto search
    (``meta["mode"] == "pareto"``) is shown as its front (table and figure) on the cost it minimised
    instead of an η × S grid. Raises DDIMError for empty or malformed records, an unknown metric or
    paper dataset, a paper comparison with another dataset or extractor (unless ``force``), or a
    missing image file.
    """
    out, root = Path(out_dir), Path(root)
    records = validate_records(records)
    chosen = pick_metrics(metrics, records)
    search = meta.get("mode") == "pareto"
    compare = paper.canonical(compare_paper) if compare_paper else None
    if compare and search:
        raise DDIMError(f"--compare-paper {compare}: a Pareto search has no η × S table to set beside the paper's; "
                        "compare a grid sweep")  # fmt: skip
    paper_title, paper_note = (
        paper.comparison(compare, str(meta.get("name", "")), meta.get("dataset"), meta.get("extractor"), force)
        if compare
        else ("", "")
    )
    extras = dict(extras or {})
    warnings = warnings_of(records, meta, compare)
    cells = select_cells(records, warnings, grids.cells)
    note = None if search else incomplete_note(cells, meta, grids)
    with ReportWriter(out) as w:
        put = w.put

        # 1. Tables and the CSV.
        if search:
            tables = [front.front_table(records, meta, chosen)]
        else:
            tables = build_tables(cells, meta, chosen, compare, paper_title, paper_note)
        inv = inversion_table(extras["inversion"]) if extras.get("inversion") else None
        tex = "% ddimbench results; needs \\usepackage{booktabs}\n" + "\n".join(table_tex(t) for t in tables)
        put("table.md", "\n".join(table_md(t) for t in tables))
        put("table.tex", tex)
        if inv is not None:
            put("inversion.md", table_md(inv))
            put("inversion.tex", table_tex(inv))
        put("table_standalone.tex", standalone_tex(tex + ("\n" + table_tex(inv) if inv else "")))
        put("results.csv", results_csv(records))

        # 2. Figures from the numbers.
        name = meta.get("name", "")
        by_steps, by_time = _plot_series(cells) if not search else ([], [])
        if by_steps:
            put(
                "fid_vs_steps.png", plots.fid_vs_steps_png(by_steps, title=f"{name}: FID vs sampling steps".strip(": "))
            )
        if by_time:
            put("fid_vs_time.png", plots.fid_vs_time_png(by_time, title=f"{name}: FID vs sampling cost".strip(": ")))
        if search and (png := front.front_png(records, meta)):
            put("pareto_front.png", png)
        # 3. Sample grids under deterministic names (those of cells gone since are not carried over).
        grids: dict[int, str] = {}
        for key in sorted(cells, key=lambda k: (spacing_order(k[0]), row_order(k[1]), k[2])):
            for b in sorted(cells[key]):
                r = cells[key][b]
                if png := r.measured.grid:
                    rel = "grids/" + _grid_name(r, Path(png).suffix or ".png")
                    put(rel, _read_input(root, png, "sample grid"))
                    grids[r.number] = rel

        # 4. Consistency (same x_T, different S) and interpolation figures.
        consistency = "Same x_T, different S: one row per S"
        if extras.get("consistency"):
            put("consistency.png", _read_input(root, extras["consistency"], "consistency figure"))
        elif sections := _consistency_sections(cells, root):
            put("consistency.png", plots.consistency_png(sections))
            consistency = f"Same x_T, different S, one row per S ({'; '.join(title for title, _ in sections)})"
        if extras.get("interpolation"):
            put("interpolation.png", _read_input(root, extras["interpolation"], "interpolation strip"))

        # 5. README, manifest, index.html: one list of sections rendered twice.
        figures = [
            (cap, f)
            for cap, f in (
                ("FID vs sampling steps S (error bars: std over seed blocks)", "fid_vs_steps.png"),
                ("FID vs measured seconds per image; dashed: Pareto front", "fid_vs_time.png"),
                (
                    f"FID vs {front.OBJECTIVES[front.objective_of(meta)][0]} of every trial of the search (the two "
                    "values it minimised); dashed: its Pareto front",
                    "pareto_front.png",
                ),
                (consistency, "consistency.png"),
                ("Interpolation: slerp between two x_T, decoded with η = 0", "interpolation.png"),
            )
            if f in w.written
        ]
        failed = [
            f"trial #{r.number} ({r.cell.label}): {r.error or 'failed without a message'}"
            for r in sorted(records, key=record_order)
            if r.failed or (r.state == "COMPLETE" and r.error)
        ]
        sections: list[tuple[str, str, object]] = []
        if note:
            sections.append(("Incomplete sweep", "list", [note, *interrupted_lines(cells)]))
        sections.append(("Provenance", "kv", (("field", "value"), provenance_rows(meta))))
        sections.append(("Pareto front" if search else "Results", "tables", tables))
        if inv is not None:
            sections.append(("Inversion", "tables", [inv]))
        if figures:
            sections.append(("Figures", "images", figures))
        if grids:
            by_number = {r.number: r for r in records}
            sections.append(("Sample grids", "images", [(by_number[n].cell.label, rel) for n, rel in grids.items()]))
        if failed:
            sections.append(("Failed cells", "list", failed))
        if warnings:
            sections.append(("Warnings", "list", warnings))
        sections.append(("Files", "kv", (("file", "sha256"), w.text_hashes())))
        title = f"DDIM benchmark report: {name}" if name else "DDIM benchmark report"
        put("README.md", md_doc(title, sections))

        put("index.html", html_doc(title, sections, w.folder))

        cell_rows = [
            {
                "number": r.number,
                "state": r.state,
                "params": r.cell.fields(),
                "nfe": r.measured.nfe,
                "metrics": r.scores.shown(),
                "timing": {"wall_s": r.measured.wall_s, "images_per_s": r.measured.images_per_s},
                "n": r.measured.n,
                "seeds": r.measured.seeds,
                "error": r.error,
                "grid": grids.get(r.number),
            }
            for r in sorted(records, key=record_order)
        ]
        manifest = {
            "meta": meta,
            "cells": cell_rows,
            "files": dict(w.hashes),  # every file written so far: all but this one
            "images": sorted(n for n in w.written if n.endswith(".png")),
            "metrics": [m.key for m in chosen],
            "compare_paper": compare,
            "warnings": warnings,
            "incomplete": note,
        }
        put("manifest.json", json.dumps(jsonable(manifest), sort_keys=True, indent=2, ensure_ascii=False) + "\n")
        return w.finish()
