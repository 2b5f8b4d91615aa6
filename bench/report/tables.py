"""Paper-style tables (Song et al. 2020, Table 1) from sweep records: cells, best-per-column, md/tex/html.

Rows are η values of DDIM ascending, then σ̂, then other samplers by name; columns are S ascending;
one table per metric and timestep spacing (``combined_tables``: one per metric, a column block per
sweep and spacing, as the paper's Table 1 sets CIFAR10 and CelebA side by side). A cell is the mean
over seed blocks (± std, ddof = 1, when there are several), its trials picked by ``bench.store.table_cells``
and its rows named by ``bench.store.cell`` (as the W&B charts are); the best mean per column is bold
(compared at display precision, so visible ties are all bold). "failed" and "—" never count. Pure
python: no torch, no optuna.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from bench.report import paper
from bench.report.escape import md_escape, tex_escape
from bench.store.cell import RowKey, row_label
from bench.store.record import CellRecord, Scores
from bench.store.table_cells import TableCell, TableKey, row_order, spacing_order, table_cell
from ddim.errors import DDIMError


@dataclass(frozen=True)
class Metric:
    key: str  # the name in ``metrics=``
    name: str
    field: str  # the ``Scores`` field holding the value
    lower_is_better: bool
    scale: float = 1.0

    @property
    def header(self) -> str:
        unit = " ×10³" if self.scale == 1000.0 else ""
        return f"{self.name}{unit} {'↓' if self.lower_is_better else '↑'}"


METRICS: dict[str, Metric] = {
    "fid": Metric("fid", "FID", "fid", True),
    "isc": Metric("isc", "IS", "isc_mean", False),
    "kid": Metric("kid", "KID", "kid_mean", True, Scores.scale("kid_mean")),
}

TEXT_FILES = ("table.md", "table.tex", "table_standalone.tex", "results.csv", "inversion.md", "inversion.tex")


# ----------------------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class Table:
    title: str
    label: str
    caption: str
    corner: str
    groups: tuple[tuple[str, tuple[str, ...]], ...]  # (group title, column headers)
    rows: tuple[tuple[str, tuple[TableCell, ...]], ...]  # (row label, one cell per column of all groups)
    fmt: str = ".2f"
    col_fmts: tuple[str, ...] = ()  # one format per column where they differ (else ``fmt`` for all)
    every_head: bool = False  # md: name the group in every column header (else in all but the first group's)

    def cells_text(self, cells: Sequence[TableCell], fl: _Flavor) -> list[str]:
        return [cell_text(c, self.col_fmts[i] if self.col_fmts else self.fmt, fl) for i, c in enumerate(cells)]


def _mark_best(columns: list[list[TableCell]], lower: bool, fmt: str) -> list[list[TableCell]]:
    """Bold the best mean of each column, compared as displayed so visible ties are all bold."""
    out = []
    for col in columns:
        shown = [float(format(c.mean, fmt)) for c in col if c.status == "value"]
        best = (min if lower else max)(shown) if shown else None
        out.append([replace(c, bold=c.status == "value" and float(format(c.mean, fmt)) == best) for c in col])
    return out


def _transpose(columns: list[list[TableCell]]) -> list[tuple[TableCell, ...]]:
    return list(zip(*columns, strict=True)) if columns else []


def _span(counts: list[int]) -> str:
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


LEGEND = ("Bold: best per column. NFE shown where it differs from S. "
           "failed: the run or metric failed; —: not run or still running.")  # fmt: skip


def blocks_note(multi: Sequence[int]) -> str:
    """The caption's sentence on seed blocks (``multi``: the block counts above one)."""
    if not multi:
        return "One seed block per cell."
    return (f"Cells with ± give mean ± std (ddof = 1) over {_span(sorted(multi))} "
            "seed blocks (disjoint seeds); the others are one block.")  # fmt: skip


def paper_note_text(paper_ds: str, spacing: str, note: str) -> str:
    """The caption's "Paper: ..." sentence for the paper's ``paper_ds`` columns beside a ``spacing`` block."""
    ps = paper.spacing(paper_ds)
    used = f" (this block uses {spacing})." if ps != spacing else "."
    text = f"Paper: {paper.SOURCE[paper_ds]}, {paper_ds}, 50k samples, {ps} spacing{used}"
    return f"{text} {note}" if note else text


def _caption(metric: Metric, spacing: str, meta: Mapping, multi: Sequence[int], paper_ds: str | None,
             note: str = "") -> str:  # fmt: skip
    sense = "lower" if metric.lower_is_better else "higher"
    n, seeds, dataset = meta.get("n"), meta.get("seeds"), meta.get("dataset")
    where = (f" on {dataset}" if dataset else "") + f", {spacing} timestep spacing"
    count = (f", {n} samples per cell" if n is not None else "") + (f" (seeds {seeds})" if seeds else "")
    parts = [f"{metric.header} ({sense} is better){where}{count}.", blocks_note(multi), LEGEND]
    if paper_ds:
        parts.append(paper_note_text(paper_ds, spacing, note))
    return " ".join(parts)


@dataclass(frozen=True)
class Block:
    """One column group of a table: one sweep's cells on one timestep spacing, optionally followed by the
    paper's numbers for ``paper`` (a dataset of ``bench.report.paper``) under ``paper_title``."""

    title: str
    spacing: str
    cells: Mapping[TableKey, Mapping[int, CellRecord]]  # the sweep's cells (those on ``spacing`` are used)
    meta: Mapping = field(default_factory=dict)
    paper: str | None = None
    paper_title: str = ""
    paper_note: str = ""  # appended to the caption's "Paper: ..." sentence

    def rows(self) -> set[RowKey]:
        return {k[1] for k in self.cells if k[0] == self.spacing}

    def columns(self, rows: Sequence[RowKey], metric: Metric) -> tuple[list, list, set[int]]:
        """(column groups, columns of cells, seed-block counts above one) of this block for ``metric``."""
        steps = sorted({k[2] for k in self.cells if k[0] == self.spacing})
        ours = [
            [table_cell(self.cells.get((self.spacing, row, s), {}), metric.field, s, metric.scale) for row in rows]
            for s in steps
        ]
        multi = {c.blocks for col in ours for c in col if c.blocks > 1}
        columns = _mark_best(ours, metric.lower_is_better, ".2f")
        heads = tuple(f"S = {s}" for s in steps)
        groups = [(self.title, heads)]
        if self.paper and metric.key == "fid":
            ref = [[_paper_cell(paper.fid(self.paper, row[0], row[1], s)) for row in rows] for s in steps]
            columns += _mark_best(ref, True, ".2f")
            groups.append((self.paper_title or f"paper ({self.paper})", heads))
        return groups, columns, multi


def row_table(title: str, label: str, caption: str, rows: Sequence[RowKey], groups: list, columns: list,
              every_head: bool = False) -> Table:  # fmt: skip
    """A Table of η / sampler rows (``rows``) and the column ``groups`` / ``columns`` built for them."""
    return Table(title=title, label=label, caption=caption, corner="η / sampler", groups=tuple(groups),
                 rows=tuple(zip([row_label(r) for r in rows], _transpose(columns), strict=True)),
                 every_head=every_head)  # fmt: skip


def build_tables(
    cells: Mapping[TableKey, Mapping[int, CellRecord]],
    meta: Mapping,
    metrics: Sequence[Metric],
    compare: str | None,
    paper_title: str = "",
    paper_note: str = "",
) -> list[Table]:
    """The Table 1-style blocks of one sweep: metric outer, spacing inner; ``compare``: the paper's dataset
    whose FID columns go beside ours (under ``paper_title``, default "paper (<dataset>)")."""
    tables = []
    for metric in metrics:
        for spacing in sorted({k[0] for k in cells}, key=spacing_order):
            block = Block("this run", spacing, cells, meta, compare, paper_title, paper_note)
            rows = sorted(block.rows(), key=row_order)
            groups, columns, multi = block.columns(rows, metric)
            ref = compare if metric.key == "fid" else None
            label = f"tab:{metric.key}-{re.sub(r'[^A-Za-z0-9]+', '-', spacing)}"
            caption = _caption(metric, spacing, meta, sorted(multi), ref, paper_note)
            tables.append(row_table(f"{metric.header} — {spacing} spacing", label, caption, rows, groups, columns))
    return tables


def _paper_cell(v: float | None) -> TableCell:
    return TableCell("missing") if v is None else TableCell("value", v, blocks=1)


def inversion_table(rows: Sequence[Mapping]) -> Table:
    """Table 2 layout: S across, this model's per-dimension MSE beside the paper's."""
    by_s: dict[int, float] = {}
    for r in rows:
        s = int(r["steps"])
        if s in by_s:
            raise DDIMError(f"extras['inversion'] repeats S = {s}; pass one row per S")
        by_s[s] = float(r["mse"])
    steps = sorted(by_s)
    ours = tuple(TableCell("value", by_s[s], blocks=1) for s in steps)
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


MD = _Flavor(md_escape, " ± ", "—", "**{}**")
TEX = _Flavor(tex_escape, r" $\pm$ ", "---", r"\textbf{{{}}}")
HTML = _Flavor(html.escape, " ± ", "—", "<b>{}</b>")


def cell_text(c: TableCell, fmt: str, fl: _Flavor) -> str:
    if c.status != "value":
        return "failed" if c.status == "failed" else fl.dash
    core = format(c.mean, fmt) + (fl.pm + format(c.std, fmt) if c.std is not None else "")
    notes = ([f"NFE {'/'.join(map(str, c.nfe))}"] if c.nfe else []) + (
        [f"{c.failed_blocks} block{'s' * (c.failed_blocks > 1)} failed"] if c.failed_blocks else []
    )
    return (fl.bold.format(core) if c.bold else core) + (f" ({fl.esc('; '.join(notes))})" if notes else "")


def _heads(t: Table, fl: _Flavor, prefix: bool) -> list[str]:
    """Column headers; ``prefix`` names the group in each header (md has no spanning header row)."""
    named = [g if prefix and (i or t.every_head) else "" for i, (g, _) in enumerate(t.groups)]
    return [fl.esc(f"{n} {h}" if n else h) for n, (_, hs) in zip(named, t.groups, strict=True) for h in hs]


def table_md(t: Table) -> str:
    n = sum(len(hs) for _, hs in t.groups)
    lines = [f"### {md_escape(t.title)}", "", "| " + " | ".join([md_escape(t.corner), *_heads(t, MD, True)]) + " |"]
    lines.append("|---|" + "---:|" * n)
    for label, cells in t.rows:
        lines.append("| " + " | ".join([md_escape(label), *t.cells_text(cells, MD)]) + " |")
    return "\n".join([*lines, "", md_escape(t.caption), ""])


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
        lines.append(" & ".join([tex_escape(label), *t.cells_text(cells, TEX)]) + r" \\")
    return "\n".join([*lines, r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])


def table_html(t: Table) -> str:
    out = [f"<h3>{html.escape(t.title)}</h3>", "<table>", f"<caption>{html.escape(t.caption)}</caption>"]
    if len(t.groups) > 1:
        spans = "".join(f'<th colspan="{len(hs)}">{html.escape(g)}</th>' for g, hs in t.groups)
        out.append(f"<tr><th></th>{spans}</tr>")
    out.append("<tr>" + "".join(f"<th>{h}</th>" for h in [html.escape(t.corner), *_heads(t, HTML, False)]) + "</tr>")
    for label, cells in t.rows:
        tds = "".join(f"<td>{text}</td>" for text in t.cells_text(cells, HTML))
        out.append(f"<tr><th>{html.escape(label)}</th>{tds}</tr>")
    return "\n".join([*out, "</table>"])


def standalone_tex(fragment: str) -> str:
    head = [r"\documentclass{article}", r"\usepackage{booktabs}", r"\begin{document}"]
    return "\n".join([*head, fragment.rstrip("\n"), r"\end{document}", ""])
