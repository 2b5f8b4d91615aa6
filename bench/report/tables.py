"""Paper-style tables (Song et al. 2020, Table 1) from sweep records: cells, best-per-column, md/tex/html.

Rows are η values of DDIM ascending, then σ̂, then other samplers by name; columns are S ascending;
one table per metric and timestep schedule. A cell is the mean over seed blocks (± std, ddof = 1, when
there are several); the best mean per column is bold (compared at display precision, so visible ties
are all bold). "failed" and "—" never count. Pure python: no torch, no optuna.
"""

from __future__ import annotations

import html
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from bench.report import paper
from ddim.errors import DDIMError


@dataclass(frozen=True)
class Metric:
    key: str  # the name in ``metrics=``
    name: str
    field: str  # the record field holding the value
    lower_is_better: bool
    scale: float = 1.0

    @property
    def header(self) -> str:
        unit = " ×10³" if self.scale == 1000.0 else ""
        return f"{self.name}{unit} {'↓' if self.lower_is_better else '↑'}"


METRICS: dict[str, Metric] = {
    "fid": Metric("fid", "FID", "fid", True),
    "isc": Metric("isc", "IS", "isc_mean", False),
    "kid": Metric("kid", "KID", "kid_mean", True, 1000.0),
}

# results.csv: these columns first (the cell's identity, then its numbers), the rest alphabetically.
CSV_LEADING = (
    "number", "state", "schedule", "sampler", "eta", "steps", "seed_block", "nfe", "n", "seeds",
    "fid", "isc_mean", "isc_std", "kid_mean", "kid_std", "wall_s", "images_per_s", "error", "grid", "strip",
)  # fmt: skip
INT_FIELDS = frozenset({"number", "steps", "seed_block", "nfe", "n"})
FLOAT_FIELDS = frozenset({"eta", "fid", "isc_mean", "isc_std", "kid_mean", "kid_std", "wall_s", "images_per_s"})
REQUIRED_FIELDS = ("number", "state", "sampler", "steps", "schedule", "seed_block")
PROTOCOL_FIELDS = ("checkpoint_sha256", "extractor", "extractor_sha256", "ref_key", "ref_sha256", "device")
_SCHEDULE_ORDER = ("uniform", "quad", "trailing", "linspace")
TEXT_FILES = ("table.md", "table.tex", "table_standalone.tex", "results.csv", "inversion.md", "inversion.tex")

CellKey = tuple[str, paper.RowKey, int]  # (schedule, row, S)


# ----------------------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class Cell:
    status: str  # "value" | "failed" | "missing"
    mean: float | None = None
    std: float | None = None  # over seed blocks, ddof = 1; None for a single block
    blocks: int = 0  # seed blocks behind the value
    nfe: tuple[int, ...] = ()  # shown only when it differs from S
    failed_blocks: int = 0  # blocks that failed beside the ones averaged
    bold: bool = False


@dataclass(frozen=True)
class Table:
    title: str
    label: str
    caption: str
    corner: str
    groups: tuple[tuple[str, tuple[str, ...]], ...]  # (group title, column headers)
    rows: tuple[tuple[str, tuple[Cell, ...]], ...]  # (row label, one cell per column of all groups)
    fmt: str = ".2f"


def as_number(v) -> float | None:
    return None if v is None or isinstance(v, bool) or not isinstance(v, numbers.Real) else float(v)


def eta_str(eta: float) -> str:
    s = f"{eta:g}"
    return s if any(c in s for c in ".en") else s + ".0"


def row_label(row: paper.RowKey) -> str:
    sampler, eta = row
    return f"η = {eta_str(eta)}" if sampler == "ddim" else "σ̂" if sampler == "sigma_hat" else sampler


def row_order(row: paper.RowKey) -> tuple:
    sampler, eta = row
    return (0, eta, "") if sampler == "ddim" else (1, 0.0, "") if sampler == "sigma_hat" else (2, 0.0, sampler)


def schedule_order(s: str) -> tuple:
    return (_SCHEDULE_ORDER.index(s), "") if s in _SCHEDULE_ORDER else (len(_SCHEDULE_ORDER), s)


def _cell_key(r: Mapping) -> CellKey:
    return (str(r["schedule"]), paper.row_key(str(r["sampler"]), as_number(r.get("eta"))), int(r["steps"]))


def select_cells(records: Sequence[Mapping], warnings: list[str]) -> dict[CellKey, dict[int, Mapping]]:
    """One record per (cell, seed block): the latest COMPLETE one, else the latest of any state
    (a retry supersedes the failure before it)."""
    cells: dict[CellKey, dict[int, Mapping]] = {}
    for r in sorted(records, key=lambda r: int(r["number"])):
        blocks = cells.setdefault(_cell_key(r), {})
        b, prev = int(r["seed_block"]), blocks.get(int(r["seed_block"]))
        if prev is not None and prev["state"] == r["state"] == "COMPLETE":
            warnings.append(
                f"trials #{prev['number']} and #{r['number']} repeat one cell and seed block; using #{r['number']}"
            )
        if prev is None or r["state"] == "COMPLETE" or prev["state"] != "COMPLETE":
            blocks[b] = r
    return cells


def table_cell(blocks: Mapping[int, Mapping], metric: Metric, steps: int) -> Cell:
    values, nfes, failed = [], set(), 0
    for b in sorted(blocks):
        r = blocks[b]
        v = as_number(r.get(metric.field))
        if r["state"] == "COMPLETE" and v is not None and math.isfinite(v):
            values.append(v * metric.scale)
            if r.get("nfe") is not None:
                nfes.add(int(r["nfe"]))
        elif r["state"] == "FAIL" or (r["state"] == "COMPLETE" and (r.get("error") or v is not None)):
            failed += 1  # a failed trial, an errored metric or a non-finite value
    if not values:
        return Cell("failed" if failed else "missing")
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    nfe = tuple(sorted(nfes)) if nfes and nfes != {steps} else ()
    return Cell("value", float(np.mean(values)), std, len(values), nfe=nfe, failed_blocks=failed)


def _mark_best(columns: list[list[Cell]], lower: bool, fmt: str) -> list[list[Cell]]:
    """Bold the best mean of each column, compared as displayed so visible ties are all bold."""
    out = []
    for col in columns:
        shown = [float(format(c.mean, fmt)) for c in col if c.status == "value"]
        best = (min if lower else max)(shown) if shown else None
        out.append([replace(c, bold=c.status == "value" and float(format(c.mean, fmt)) == best) for c in col])
    return out


def _transpose(columns: list[list[Cell]]) -> list[tuple[Cell, ...]]:
    return list(zip(*columns, strict=True)) if columns else []


def _span(counts: list[int]) -> str:
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def _caption(metric: Metric, schedule: str, meta: Mapping, multi: list[int], paper_ds: str | None) -> str:
    sense = "lower" if metric.lower_is_better else "higher"
    n, seeds, dataset = meta.get("n"), meta.get("seeds"), meta.get("dataset")
    where = (f" on {dataset}" if dataset else "") + f", {schedule} timestep spacing"
    count = (f", {n} samples per cell" if n is not None else "") + (f" (seeds {seeds})" if seeds else "")
    parts = [
        f"{metric.header} ({sense} is better){where}{count}.",
        (
            f"Cells with ± give mean ± std (ddof = 1) over {_span(multi)} "
            "seed blocks (disjoint seeds); the others are one block."
            if multi
            else "One seed block per cell."
        ),
        "Bold: best per column. NFE shown where it differs from S. "
        "failed: the run or metric failed; —: not run or still running.",
    ]
    if paper_ds:
        ps = paper.spacing(paper_ds)
        parts.append(
            f"Paper: {paper.SOURCE[paper_ds]}, {paper_ds}, 50k samples, {ps} spacing"
            + (f" (this block uses {schedule})." if ps != schedule else ".")
        )
    return " ".join(parts)


def build_tables(
    cells: Mapping[CellKey, Mapping[int, Mapping]],
    meta: Mapping,
    metrics: Sequence[Metric],
    compare: str | None,
) -> list[Table]:
    """The Table 1-style blocks: metric outer, schedule inner."""
    tables = []
    schedules = sorted({k[0] for k in cells}, key=schedule_order)
    for metric in metrics:
        for sched in schedules:
            keys = [k for k in cells if k[0] == sched]
            rows = sorted({k[1] for k in keys}, key=row_order)
            steps = sorted({k[2] for k in keys})
            ours = [[table_cell(cells.get((sched, row, s), {}), metric, s) for row in rows] for s in steps]
            multi = sorted({c.blocks for col in ours for c in col if c.blocks > 1})
            columns = _mark_best(ours, metric.lower_is_better, ".2f")
            heads = tuple(f"S = {s}" for s in steps)
            groups = [("this run", heads)]
            if compare and metric.key == "fid":
                ref = [[_paper_cell(paper.fid(compare, row[0], row[1], s)) for row in rows] for s in steps]
                columns += _mark_best(ref, True, ".2f")
                groups.append((f"paper ({compare})", heads))
            tables.append(
                Table(
                    title=f"{metric.header} — {sched} spacing",
                    label=f"tab:{metric.key}-{re.sub(r'[^A-Za-z0-9]+', '-', sched)}",
                    caption=_caption(metric, sched, meta, multi, compare if metric.key == "fid" else None),
                    corner="η / sampler",
                    groups=tuple(groups),
                    rows=tuple(zip([row_label(r) for r in rows], _transpose(columns), strict=True)),
                )
            )
    return tables


def _paper_cell(v: float | None) -> Cell:
    return Cell("missing") if v is None else Cell("value", v, blocks=1)


def inversion_table(rows: Sequence[Mapping]) -> Table:
    """Table 2 layout: S across, this model's per-dimension MSE beside the paper's."""
    by_s: dict[int, float] = {}
    for r in rows:
        s = int(r["steps"])
        if s in by_s:
            raise DDIMError(f"extras['inversion'] repeats S = {s}; pass one row per S")
        by_s[s] = float(r["mse"])
    steps = sorted(by_s)
    ours = tuple(Cell("value", by_s[s], blocks=1) for s in steps)
    ref = tuple(_paper_cell(paper.inversion_mse(s)) for s in steps)
    return Table(
        title="Inversion — reconstruction error vs S",
        label="tab:inversion",
        caption="Per-dimension MSE of encode (η = 0, S steps) then decode (S steps), pixels in [0, 1]. "
        "Paper: Song et al. 2020, Table 2 (CIFAR10 test set).",
        corner="",
        groups=(("", tuple(f"S = {s}" for s in steps)),),
        rows=(("this model", ours), ("paper (Table 2)", ref)),
        fmt=".3g",
    )


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", s).strip("-") or "x"


# -------------------------------------------------------------------------------------- renderers
@dataclass(frozen=True)
class _Flavor:
    esc: Callable[[str], str]
    pm: str
    dash: str
    bold: str  # a format string with one {}


_TEX_MAP = {
    "σ̂": r"$\hat{\sigma}$", "σ": r"$\sigma$", "η": r"$\eta$", "±": r"$\pm$", "↓": r"$\downarrow$",
    "↑": r"$\uparrow$", "×": r"$\times$", "³": r"\textsuperscript{3}", "—": "---", "–": "--",
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
    ">": r"\textgreater{}", "|": r"\textbar{}",
}  # fmt: skip
_TEX_RE = re.compile("|".join(re.escape(k) for k in sorted(_TEX_MAP, key=len, reverse=True)))


def tex_escape(text: str) -> str:
    """Plain text -> LaTeX text: specials escaped, η/σ̂/±/arrows as math."""
    return _TEX_RE.sub(lambda m: _TEX_MAP[m.group()], str(text))


def md_escape(text: str) -> str:
    return str(text).replace("|", r"\|").replace("\n", " ")


MD = _Flavor(md_escape, " ± ", "—", "**{}**")
TEX = _Flavor(tex_escape, r" $\pm$ ", "---", r"\textbf{{{}}}")
HTML = _Flavor(html.escape, " ± ", "—", "<b>{}</b>")


def cell_text(c: Cell, fmt: str, fl: _Flavor) -> str:
    if c.status != "value":
        return "failed" if c.status == "failed" else fl.dash
    core = format(c.mean, fmt) + (fl.pm + format(c.std, fmt) if c.std is not None else "")
    notes = ([f"NFE {'/'.join(map(str, c.nfe))}"] if c.nfe else []) + (
        [f"{c.failed_blocks} block{'s' * (c.failed_blocks > 1)} failed"] if c.failed_blocks else []
    )
    return (fl.bold.format(core) if c.bold else core) + (f" ({fl.esc('; '.join(notes))})" if notes else "")


def _heads(t: Table, fl: _Flavor, prefix: bool) -> list[str]:
    """Column headers; ``prefix`` names the group in each header (md has no spanning header row)."""
    return [fl.esc(f"{g} {h}" if prefix and i and g else h) for i, (g, hs) in enumerate(t.groups) for h in hs]


def table_md(t: Table) -> str:
    n = sum(len(hs) for _, hs in t.groups)
    lines = [f"### {md_escape(t.title)}", "", "| " + " | ".join([md_escape(t.corner), *_heads(t, MD, True)]) + " |"]
    lines.append("|---|" + "---:|" * n)
    for label, cells in t.rows:
        lines.append("| " + " | ".join([md_escape(label), *(cell_text(c, t.fmt, MD) for c in cells)]) + " |")
    return "\n".join([*lines, "", t.caption, ""])


def table_tex(t: Table) -> str:
    spec = "l" + "".join(" " + "r" * len(hs) for _, hs in t.groups)
    wide = sum(len(hs) for _, hs in t.groups) > 5  # squeeze side-by-side paper blocks onto the page
    size = [r"\footnotesize", r"\setlength{\tabcolsep}{3pt}"] if wide else [r"\small"]
    lines = [r"\begin{table}[!htbp]", r"\centering", *size, rf"\caption{{{tex_escape(t.caption)}}}"]
    lines += [rf"\label{{{t.label}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    if len(t.groups) > 1:
        spans, rules, col = [], [], 2
        for g, hs in t.groups:
            spans.append(rf"\multicolumn{{{len(hs)}}}{{c}}{{{tex_escape(g)}}}")
            rules.append(rf"\cmidrule(lr){{{col}-{col + len(hs) - 1}}}")
            col += len(hs)
        lines += [" & ".join(["", *spans]) + r" \\", " ".join(rules)]
    lines += [" & ".join([tex_escape(t.corner), *_heads(t, TEX, False)]) + r" \\", r"\midrule"]
    for label, cells in t.rows:
        lines.append(" & ".join([tex_escape(label), *(cell_text(c, t.fmt, TEX) for c in cells)]) + r" \\")
    return "\n".join([*lines, r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])


def table_html(t: Table) -> str:
    out = [f"<h3>{html.escape(t.title)}</h3>", "<table>", f"<caption>{html.escape(t.caption)}</caption>"]
    if len(t.groups) > 1:
        spans = "".join(f'<th colspan="{len(hs)}">{html.escape(g)}</th>' for g, hs in t.groups)
        out.append(f"<tr><th></th>{spans}</tr>")
    out.append("<tr>" + "".join(f"<th>{h}</th>" for h in [html.escape(t.corner), *_heads(t, HTML, False)]) + "</tr>")
    for label, cells in t.rows:
        tds = "".join(f"<td>{cell_text(c, t.fmt, HTML)}</td>" for c in cells)
        out.append(f"<tr><th>{html.escape(label)}</th>{tds}</tr>")
    return "\n".join([*out, "</table>"])


def standalone_tex(fragment: str) -> str:
    head = [r"\documentclass{article}", r"\usepackage{booktabs}", r"\begin{document}"]
    return "\n".join([*head, fragment.rstrip("\n"), r"\end{document}", ""])
