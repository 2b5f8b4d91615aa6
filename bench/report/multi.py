"""One report from several grid sweeps: Table 1 as the paper prints it (Song et al. 2020, Table 1: the
CIFAR10 and CelebA blocks side by side, rows η = 0.0 / 0.2 / 0.5 / 1.0 and σ̂, columns S), in md, tex
and html, with every cell of every sweep in one results.csv.

Each sweep on each timestep spacing is one column group (titled by its dataset); ``compare_paper``
adds the paper's FID for a dataset beside the sweep of that dataset, refused for another dataset or
feature extractor unless ``force`` (``bench.report.paper.comparison``). Single-sweep reports (figures,
grids, inversion) stay ``bench.report.write.write_report``'s. No torch, no optuna.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.console import warn
from bench.metrics import METRICS as METRIC_NAMES
from bench.report import paper
from bench.report.asked import asked_metrics
from bench.report.docs import html_doc, md_doc, results_csv
from bench.report.files import ReportWriter, jsonable
from bench.report.tables import (
    LEGEND,
    Block,
    Metric,
    Table,
    blocks_note,
    paper_note_text,
    row_table,
    standalone_tex,
    table_md,
    table_tex,
)
from bench.report.write import (
    incomplete,
    incomplete_note,
    interrupted_lines,
    pick_metrics,
    provenance_md,
    provenance_rows,
    validate_records,
    warnings_of,
)
from bench.store.grids import NO_GRIDS, Grids
from bench.store.study import Sweep
from bench.store.table_cells import row_order, select_cells, spacing_order
from ddim.errors import DDIMError


def _pairs(sweeps: Sequence[Sweep], compare: Sequence[str]) -> dict[str, str]:
    """{sweep name: paper dataset}: each paper dataset goes beside the sweeps of that dataset, or, where no
    sweep has it, beside every sweep (which ``paper.comparison`` then refuses unless forced)."""
    out: dict[str, str] = {}
    for ds in dict.fromkeys(paper.canonical(c) for c in compare):
        same = [name for name, _, meta in sweeps if paper.mismatch(ds, meta.get("dataset"), "inception") is None]
        for name in same or [name for name, _, _ in sweeps]:
            if name in out:
                raise DDIMError(f"sweep {name!r} would sit beside both the paper's {out[name]} and {ds} numbers; "
                                "give one --compare-paper per dataset of the sweeps")  # fmt: skip
            out[name] = ds
    return out


def _blocks(sweeps: Sequence[Sweep], pairs: Mapping[str, str], force: bool, warnings: list[str],
            grids: Mapping[str, Grids], unfinished: dict[str, list[str]]) -> list[Block]:  # fmt: skip
    """The column blocks of the sweeps' tables; each sweep's warnings (prefixed with its name) are added to
    ``warnings``, and ``unfinished[name]`` is an incomplete sweep's note then its interrupted trials."""
    datasets = Counter(str(meta.get("dataset") or name) for name, _, meta in sweeps)
    blocks = []
    for name, records, meta in sweeps:
        mine: list[str] = []
        grid = grids.get(name, NO_GRIDS)
        cells = select_cells(records, mine, grid.cells)
        if left := incomplete_note(cells, meta, grid):
            unfinished[name] = [left, *(f"{name}: {line}" for line in interrupted_lines(cells))]
        ds, ex = meta.get("dataset"), meta.get("extractor")
        ref = pairs.get(name)
        title, note = paper.comparison(ref, name, ds, ex, force) if ref else ("", "")
        mine += warnings_of(records, meta, ref)
        warnings += [f"{name}: {w}" for w in mine]
        spacings = sorted({k[0] for k in cells}, key=spacing_order)
        for spacing in spacings:
            head = str(ds or name) + (f", {spacing}" if len(spacings) > 1 else "")
            head += f" ({name})" if datasets[str(ds or name)] > 1 else ""
            blocks.append(Block(head, spacing, cells, meta, ref, title, note))
    return blocks


def combined_tables(blocks: Sequence[Block], metrics: Sequence[Metric]) -> list[Table]:
    """Table 1 as the paper prints it: per metric one table, rows η then σ̂ (the union of the blocks' rows),
    one column group of S per block (e.g. CIFAR10 | CelebA), each followed by its paper group if any."""
    rows = sorted(set().union(*(b.rows() for b in blocks)), key=row_order)
    tables = []
    for metric in metrics:
        groups, columns, multi = [], [], set()
        for b in blocks:
            g, c, m = b.columns(rows, metric)
            groups, columns, multi = groups + g, columns + c, multi | m
        sense = "lower" if metric.lower_is_better else "higher"
        about = []
        for b in blocks:
            n, seeds, ex = b.meta.get("n"), b.meta.get("seeds"), b.meta.get("extractor")
            about.append(f"{b.title}: sweep {b.meta.get('name', '?')}, {b.spacing} timestep spacing"
                         + (f", {n} samples per cell" if n is not None else "") + (f" (seeds {seeds})" if seeds else "")
                         + (f", {ex} features" if ex else "") + ".")  # fmt: skip
        parts = [f"{metric.header} ({sense} is better).", *about, blocks_note(sorted(multi)), LEGEND]
        if metric.key == "fid":
            parts += [paper_note_text(b.paper, b.spacing, b.paper_note) for b in blocks if b.paper]
        title = f"{metric.header} — {' / '.join(b.title for b in blocks)}"
        tables.append(row_table(title, f"tab:{metric.key}", " ".join(parts), rows, groups, columns, every_head=True))
    return tables


def write_combined_report(
    sweeps: Sequence[Sweep],
    out_dir: str | os.PathLike,
    *,
    compare_paper: Sequence[str] = (),
    metrics: Sequence[str] | None = None,
    force: bool = False,
    grids: Mapping[str, Grids] | None = None,
) -> dict[str, Path]:
    """Write one report of several grid sweeps into ``out_dir``; return {relative name: path} of every file.

    ``sweeps`` are (name, records, meta) as ``bench.store.study.load_results`` gives them, ``grids`` their runs'
    grids by sweep name (a cell no trial ran shows as not run, and the report's first section says the sweep is
    incomplete and how to finish it, as a single sweep's does). Raises DDIMError for a repeated or empty sweep, a
    Pareto search, malformed records, an unknown metric, or a paper comparison with another dataset or extractor
    (unless ``force``).
    """
    names = [name for name, _, _ in sweeps]
    if len(names) != len(set(names)):
        raise DDIMError(f"sweep {next(n for n in names if names.count(n) > 1)!r} is named twice; name each sweep once")
    checked = []
    for name, records, meta in sweeps:
        if meta.get("mode") == "pareto":
            raise DDIMError(f"{name!r} is a Pareto search, not an η × S grid; report it alone: ddimbench report {name}")
        try:
            checked.append((name, validate_records(records), meta))
        except DDIMError as exc:
            raise DDIMError(f"sweep {name!r}: {exc}") from None
    every = [r for _, records, _ in checked for r in records]
    asked = {m for name, _, meta in checked for m in asked_metrics(name, meta)}
    wanted = metrics or [m for m in METRIC_NAMES if m in asked]
    chosen = pick_metrics(wanted, every)
    warnings: list[str] = []
    unfinished: dict[str, list[str]] = {}
    blocks = _blocks(checked, _pairs(checked, compare_paper), force, warnings, grids or {}, unfinished)
    tables = combined_tables(blocks, chosen)
    with ReportWriter(Path(out_dir)) as w:
        tex = "% ddimbench results; needs \\usepackage{booktabs}\n" + "\n".join(table_tex(t) for t in tables)
        w.put("table.md", "\n".join(table_md(t) for t in tables))
        w.put("table.tex", tex)
        w.put("table_standalone.tex", standalone_tex(tex))
        every_sweep = [(name, meta.get("dataset")) for name, records, meta in checked for _ in records]
        leading = (("sweep", [s for s, _ in every_sweep]), ("dataset", [d for _, d in every_sweep]))
        w.put("results.csv", results_csv(every, leading=leading))

        overview = [
            (name, f"{meta.get('dataset')}, {meta.get('extractor')} features, n = {meta.get('n')}, checkpoint "
                   f"sha256 {str(meta.get('checkpoint_sha256'))[:12]}…")
            for name, _, meta in checked
        ]  # fmt: skip
        sections: list[tuple[str, str, object]] = []
        if unfinished:  # first, as a single sweep's report says it
            heading = "Incomplete sweep" if len(unfinished) == 1 else "Incomplete sweeps"
            sections.append((heading, "list", [line for lines in unfinished.values() for line in lines]))
        sections.append(("Sweeps", "kv", (("sweep", "what"), overview)))
        sections.append(("Results", "tables", tables))
        for name, _, meta in checked:
            sections.append((f"Provenance: {name}", "kv", (("field", "value"), provenance_rows(meta))))
        if warnings:
            sections.append(("Warnings", "list", warnings))
        sections.append(("Files", "kv", (("file", "sha256"), w.text_hashes())))
        title = f"DDIM benchmark report: {' + '.join(names)}"
        w.put("README.md", md_doc(title, sections))
        w.put("index.html", html_doc(title, sections, w.folder))
        manifest = {
            "sweeps": {name: meta for name, _, meta in checked},
            "cells": [
                {
                    "sweep": name,
                    "number": r.number,
                    "state": r.state,
                    **r.cell.fields(),
                    "nfe": r.measured.nfe,
                    **r.scores.shown(),
                }
                for name, records, _ in checked
                for r in records
            ],  # fmt: skip
            "files": dict(w.hashes),  # every file written so far: all but this one
            "metrics": [m.key for m in chosen],
            "compare_paper": {b.title: b.paper for b in blocks if b.paper},
            "warnings": warnings,
            "incomplete": {name: lines[0] for name, lines in unfinished.items()},
        }
        w.put("manifest.json", json.dumps(jsonable(manifest), sort_keys=True, indent=2, ensure_ascii=False) + "\n")
        return w.finish()


def make_combined_report(
    names: Sequence[str],
    *,
    storage: str | None = None,
    out: str | Path | None = None,
    compare_paper: Sequence[str] = (),
    force: bool = False,
    wandb: str | None = None,
) -> Path:
    """Load the sweeps ``names`` from the store and write their combined report (default folder
    ``reports/<A>+<B>+…``); with tracking on, its table is logged as a ``report`` run (grouped with the first
    sweep, ``bench.tracking.report_run``) that uses the cells' ``samples`` artifacts and logs the folder as
    ``report-<A>__<B>``, and the W&B Report of the sweeps is defined and, online, published."""
    from bench.store.study import load_results
    from bench.store.untrusted import check_name
    from bench.tracking.report_run import track_report

    for name in names:
        check_name(name, "sweep name ")  # the names make the report's folder
    sweeps, grids = [], {}
    for name in dict.fromkeys(names):
        stored: list[Grids] = []
        records, meta, _ = load_results(name, storage, stored)
        sweeps.append((name, stored[0].shown(records), meta))  # not the trials not run of a forgotten grid's cells
        grids[name] = stored[0]
    folder = Path(out) if out is not None else Path("reports") / "+".join(dict.fromkeys(names))
    written = write_combined_report(sweeps, folder, compare_paper=compare_paper, force=force, grids=grids)
    for name, records, meta in sweeps:  # once the report is written: a refused one (a search among them) says why alone
        if note := incomplete(records, meta, grids[name]):
            warn(note)
    track_report(wandb, folder, sweeps, provenance_md(sweeps), written, warn)
    return folder
