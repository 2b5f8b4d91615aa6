"""Turn stored sweep results into a paper-style report: Table 1-like tables (md, tex, html), a CSV of
every cell, figures, copied sample grids, a manifest with hashes, a README and a self-contained
index.html.

Pure python + numpy; matplotlib and PIL are reached through ``bench.report.plots``. No torch, no optuna:
the sweep module hands us plain record dicts. Everything written is a function of the inputs only
(no clocks, sorted iteration), and every file is written atomically (temp file + ``os.replace``).

Table conventions live in ``bench.report.tables`` (Song et al. 2020, Table 1 layout).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bench.report import paper, plots
from bench.report.docs import html_doc, md_doc, record_order, results_csv
from bench.report.tables import (
    METRICS,
    PROTOCOL_FIELDS,
    REQUIRED_FIELDS,
    TEXT_FILES,
    CellKey,
    Metric,
    as_number,
    build_tables,
    eta_str,
    inversion_table,
    row_label,
    row_order,
    schedule_order,
    select_cells,
    slug,
    standalone_tex,
    table_cell,
    table_md,
    table_tex,
)
from ddim.errors import DDIMError


# ------------------------------------------------------------------------------------------- files
def _write(path: Path, data: bytes | str) -> Path:
    """Write atomically: a temp file in the same folder, fsync, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _read_input(root: Path, rel: str, what: str) -> bytes:
    path = root / rel
    if not path.is_file():
        raise DDIMError(f"{what} {path} not found; pass root= the folder the sweep's relative paths start from")
    return path.read_bytes()


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def _jsonable(v):
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, bool | str):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v) if math.isfinite(v) else None
    return str(v)


# ---------------------------------------------------------------------------------------- figures
def _grid_name(r: Mapping, suffix: str) -> str:
    sampler, eta = paper.row_key(str(r["sampler"]), as_number(r.get("eta")))
    e = f"_eta{eta_str(eta)}" if sampler == "ddim" else ""
    return f"{slug(r['schedule'])}_{slug(sampler)}{e}_S{int(r['steps'])}_b{int(r['seed_block'])}{suffix}"


def _plot_series(cells: Mapping[CellKey, Mapping[int, Mapping]]) -> tuple[list, list]:
    """Per (schedule, row): FID vs S and FID vs seconds per image, from the complete blocks."""
    fid = METRICS["fid"]
    groups: dict[tuple[str, paper.RowKey], list[int]] = {}
    for sched, row, s in cells:
        groups.setdefault((sched, row), []).append(s)
    multi = len({k[0] for k in groups}) > 1
    by_steps, by_time = [], []
    for sched, row in sorted(groups, key=lambda k: (schedule_order(k[0]), row_order(k[1]))):
        label = row_label(row) + (f" ({sched})" if multi else "")
        pts, tpts = [], []
        for s in sorted(groups[(sched, row)]):
            blocks = cells[(sched, row, s)]
            c = table_cell(blocks, fid, s)
            if c.status != "value":
                continue
            pts.append((s, c.mean, c.std or 0.0))
            cost = [
                1.0 / ips
                for r in blocks.values()
                if r["state"] == "COMPLETE" and (ips := as_number(r.get("images_per_s"))) and ips > 0
            ]
            if cost:
                tpts.append((float(np.mean(cost)), c.mean, c.std or 0.0, f"S={s}"))
        kw = {"label": label, "group": sched, "colour_key": row_label(row)}
        if pts:
            by_steps.append(plots.Series(x=[p[0] for p in pts], y=[p[1] for p in pts], yerr=[p[2] for p in pts], **kw))
        if tpts:
            x, y, e, notes = (list(v) for v in zip(*tpts, strict=True))
            by_time.append(plots.Series(x=x, y=y, yerr=e, notes=notes, **kw))
    return by_steps, by_time


def fid_vs_steps_png(records: Sequence[Mapping], title: str = "FID vs sampling steps") -> bytes | None:
    """The report's FID-vs-S figure for ``records`` alone (e.g. for the sweep's W&B summary run)."""
    by_steps, _ = _plot_series(select_cells(_validate(records), []))
    return plots.fid_vs_steps_png(by_steps, title=title) if by_steps else None


def _consistency_sections(cells: Mapping[CellKey, Mapping[int, Mapping]], root: Path) -> list:
    """Per schedule, the lowest-η DDIM row: one strip per S from the same (lowest) seed block."""
    sections = []
    for sched in sorted({k[0] for k in cells}, key=schedule_order):
        etas = sorted({k[1][1] for k in cells if k[0] == sched and k[1][0] == "ddim"})
        for eta in etas:
            with_strip = {
                (s, b): r
                for (sc, row, s), blocks in cells.items()
                if sc == sched and row == ("ddim", eta)
                for b, r in blocks.items()
                if r.get("strip")
            }
            if not with_strip:
                continue
            block = min(b for _, b in with_strip)
            rows = []
            for s, b in sorted(with_strip):
                if b == block:
                    _read_input(root, with_strip[(s, b)]["strip"], "sample strip")
                    rows.append((f"S = {s}", root / with_strip[(s, b)]["strip"]))
            sections.append((f"DDIM eta = {eta_str(eta)}, {sched} spacing, seed block {block}", rows))
            break
    return sections


# ------------------------------------------------------------------------------------ the report
def _validate(records: Sequence[Mapping]) -> list[Mapping]:
    if not records:
        raise DDIMError("no result records to report; run the sweep first or point at the right study")
    for i, r in enumerate(records):
        for key in REQUIRED_FIELDS:
            if r.get(key) is None:
                raise DDIMError(f"result record {i} lacks '{key}'; regenerate the records with the sweep module")
        if r["sampler"] == "ddim" and as_number(r.get("eta")) is None:
            raise DDIMError(f"trial #{r['number']} is a ddim cell without eta; store eta for every ddim trial")
    return list(records)


def _pick_metrics(names: Sequence[str], records: Sequence[Mapping]) -> list[Metric]:
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise DDIMError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    chosen = [METRICS[m] for m in names]
    present = [m for m in chosen if any(as_number(r.get(m.field)) is not None for r in records)]
    return present or chosen[:1]  # with no numbers at all, still show which cells failed or are pending


def _warnings(records: Sequence[Mapping], meta: Mapping, compare: str | None) -> list[str]:
    out = []
    for r in sorted(records, key=lambda r: int(r["number"])):
        for key in PROTOCOL_FIELDS:
            if r.get(key) is not None and meta.get(key) is not None and r[key] != meta[key]:
                out.append(f"trial #{r['number']}: {key} {r[key]!r} differs from the sweep's {meta[key]!r}")
        n = as_number(r.get("n"))
        if r["state"] == "COMPLETE" and n is not None and as_number(meta.get("n")) and n < float(meta["n"]):
            out.append(f"trial #{r['number']}: metrics from {int(n)} samples, fewer than the sweep's {meta['n']}")
    if compare and meta.get("dataset"):
        try:
            same = paper.canonical(str(meta["dataset"])) == compare
        except DDIMError:
            same = False
        if not same:
            out.append(f"comparing a {meta['dataset']} sweep with the paper's {compare} numbers")
    return out


_META_ORDER = ("name", "dataset", "command", "git_commit", "device", "T", "checkpoint", "checkpoint_sha256",
               "extractor", "extractor_sha256", "ref_key", "ref_sha256", "n", "seeds", "created", "runs",
               "last_run")  # fmt: skip


def _provenance(meta: Mapping) -> list[tuple[str, str]]:
    keys = [k for k in _META_ORDER if k in meta] + sorted(k for k in meta if k not in _META_ORDER)
    rows = []
    for k in keys:
        v = meta[k]
        if isinstance(v, Mapping):
            rows += [(f"{k}.{sub}", str(v[sub])) for sub in sorted(v)]
        else:
            rows.append((k, "—" if v is None else str(v)))
    return rows


def _cell_name(r: Mapping) -> str:
    sampler, eta = paper.row_key(str(r["sampler"]), as_number(r.get("eta")))
    return f"{r['schedule']} {row_label((sampler, eta))} S = {r['steps']} block {r['seed_block']}"


_OPTIONAL_FILES = ("inversion.md", "inversion.tex", "fid_vs_steps.png", "fid_vs_time.png", "consistency.png",
                   "interpolation.png")  # fmt: skip
_REPORT_FILES = frozenset((*TEXT_FILES, *_OPTIONAL_FILES, "README.md"))  # top-level names a report may leave stale


def _previous_outputs(out: Path) -> dict[str, str | None]:
    """{relative name: sha256 or None} of the files the previous report in ``out`` wrote, from its manifest.json.

    Only names a report writes are taken (a top-level report file or ``grids/<file>``), so a missing, unreadable
    or hand-edited manifest can never name anything else; without a manifest nothing is known and nothing is.
    """
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(manifest, dict):
        return {}
    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    images = manifest.get("images") if isinstance(manifest.get("images"), list) else []
    cells = manifest.get("cells") if isinstance(manifest.get("cells"), list) else []
    grids = [c.get("grid") for c in cells if isinstance(c, dict)]  # a grid may be saved as another format than PNG
    names: dict[str, str | None] = {n: None for n in (*images, *grids) if isinstance(n, str)}
    names.update({n: h if isinstance(h, str) else None for n, h in files.items()})
    return {n: h for n, h in names.items() if _report_name(n)}


def _report_name(name: str) -> bool:
    parts = name.split("/")
    if len(parts) == 1:
        return name in _REPORT_FILES
    leaf = parts[-1]
    return len(parts) == 2 and parts[0] == "grids" and bool(leaf) and not leaf.startswith(".") and "\\" not in leaf


def _remove_stale(out: Path, previous: Mapping[str, str | None], written: Mapping[str, Path]) -> None:
    """Delete what the previous report wrote and this one did not (e.g. the grid of a cell that is gone, the
    inversion table of a sweep that no longer has one): left, it would contradict the rest. A file with a
    recorded hash is deleted only while it still holds what the report wrote; nothing else is ever touched."""
    for name, sha in sorted(previous.items()):
        path = out / name
        if name in written or path.is_symlink() or not path.is_file():
            continue
        if sha is not None and _sha(path.read_bytes()) != sha:
            continue  # replaced since (by someone else): not ours to delete
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def write_report(
    records: Sequence[Mapping],
    meta: Mapping,
    out_dir: str | os.PathLike,
    *,
    root: str | os.PathLike = ".",
    extras: Mapping | None = None,
    compare_paper: str | None = None,
    metrics: Sequence[str] = ("fid", "isc", "kid"),
) -> dict[str, Path]:
    """Write the report for one sweep into ``out_dir``; return {relative name: path} of every file.

    ``records`` are the sweep's per-trial dicts, ``meta`` its provenance, ``root`` the folder the
    records' relative ``grid``/``strip`` paths (and ``extras``' paths) start from. Raises DDIMError
    for empty or malformed records, an unknown metric or paper dataset, or a missing image file.
    """
    out, root = Path(out_dir), Path(root)
    records = _validate(records)
    chosen = _pick_metrics(metrics, records)
    compare = paper.canonical(compare_paper) if compare_paper else None
    extras = dict(extras or {})
    warnings = _warnings(records, meta, compare)
    cells = select_cells(records, warnings)
    previous = _previous_outputs(out)  # read before anything is overwritten
    written: dict[str, Path] = {}
    hashes: dict[str, str] = {}

    def put(name: str, data: bytes | str) -> None:
        written[name] = _write(out / name, data)
        if name in TEXT_FILES or name == "README.md":
            hashes[name] = _sha(data)

    # 1. Tables and the CSV.
    tables = build_tables(cells, meta, chosen, compare)
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
    by_steps, by_time = _plot_series(cells)
    name = meta.get("name", "")
    if by_steps:
        put("fid_vs_steps.png", plots.fid_vs_steps_png(by_steps, title=f"{name}: FID vs sampling steps".strip(": ")))
    if by_time:
        put("fid_vs_time.png", plots.fid_vs_time_png(by_time, title=f"{name}: FID vs sampling cost".strip(": ")))

    # 3. Sample grids under deterministic names (stale ones of the previous report are removed at the end).
    grids: dict[int, str] = {}
    for key in sorted(cells, key=lambda k: (schedule_order(k[0]), row_order(k[1]), k[2])):
        for b in sorted(cells[key]):
            r = cells[key][b]
            if r.get("grid"):
                rel = "grids/" + _grid_name(r, Path(r["grid"]).suffix or ".png")
                put(rel, _read_input(root, r["grid"], "sample grid"))
                grids[int(r["number"])] = rel

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
            (consistency, "consistency.png"),
            ("Interpolation: slerp between two x_T, decoded with η = 0", "interpolation.png"),
        )
        if f in written
    ]
    failed = [
        f"trial #{r['number']} ({_cell_name(r)}): {r.get('error') or 'failed without a message'}"
        for r in sorted(records, key=record_order)
        if r["state"] == "FAIL" or (r["state"] == "COMPLETE" and r.get("error"))
    ]
    sections: list[tuple[str, str, object]] = [("Provenance", "kv", (("field", "value"), _provenance(meta)))]
    sections.append(("Results", "tables", tables))
    if inv is not None:
        sections.append(("Inversion", "tables", [inv]))
    if figures:
        sections.append(("Figures", "images", figures))
    if grids:
        by_number = {int(r["number"]): r for r in records}
        sections.append(("Sample grids", "images", [(_cell_name(by_number[n]), rel) for n, rel in grids.items()]))
    if failed:
        sections.append(("Failed cells", "list", failed))
    if warnings:
        sections.append(("Warnings", "list", warnings))
    sections.append(("Files", "kv", (("file", "sha256"), sorted(hashes.items()))))
    title = f"DDIM benchmark report: {name}" if name else "DDIM benchmark report"
    put("README.md", md_doc(title, sections))

    cell_rows = [
        {
            "number": r["number"],
            "state": r["state"],
            "params": {k: r.get(k) for k in ("sampler", "eta", "steps", "schedule", "seed_block")},
            "nfe": r.get("nfe"),
            "metrics": {k: r.get(k) for k in ("fid", "isc_mean", "isc_std", "kid_mean", "kid_std")},
            "timing": {k: r.get(k) for k in ("wall_s", "images_per_s")},
            "n": r.get("n"),
            "seeds": r.get("seeds"),
            "error": r.get("error"),
            "grid": grids.get(int(r["number"])),
        }
        for r in sorted(records, key=record_order)
    ]
    manifest = {
        "meta": meta,
        "cells": cell_rows,
        "files": hashes,
        "images": sorted(n for n in written if n.endswith(".png")),
        "metrics": [m.key for m in chosen],
        "compare_paper": compare,
        "warnings": warnings,
    }
    put("manifest.json", json.dumps(_jsonable(manifest), sort_keys=True, indent=2, ensure_ascii=False) + "\n")
    put("index.html", html_doc(title, sections, out))
    _remove_stale(out, previous, written)
    return dict(sorted(written.items()))
