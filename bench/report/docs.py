"""The report's documents, rendered from the sweep's records: ``results.csv`` (every cell, every field),
and the README.md / index.html pages (``md_doc`` / ``html_doc`` take the same list of sections).

A section is ``(heading, kind, payload)``: ``kv`` ((key header, value header), rows), ``tables``
(``bench.report.tables.Table`` objects), ``images`` ((caption, file name) pairs; index.html embeds them
as data URIs so the page stands alone) or a list of lines.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.report.escape import csv_text, md_escape
from bench.report.tables import table_html, table_md
from bench.store.record import CellRecord, table
from bench.store.table_cells import as_number


def _csv_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool) or not isinstance(v, numbers.Number):
        return csv_text(str(v))
    return str(int(v)) if isinstance(v, numbers.Integral) else repr(float(v))


def record_order(r: CellRecord) -> tuple:
    eta = as_number(r.cell.eta)
    return (r.cell.spacing, r.cell.sampler, (eta is not None, round(eta or 0.0, 6)), r.cell.steps, r.cell.seed_block,
            r.number)  # fmt: skip


def results_csv(records: Sequence[CellRecord], leading: Sequence[tuple[str, Sequence[Any]]] = ()) -> str:
    """Every record, every field (``bench.store.record.columns``: KID ×10³), rows in table order; ``leading``:
    (header, one value per record) columns put first, the rows ordered by them first (e.g. each record's sweep)."""
    names, rows = table(records)
    first = [[values[i] for _, values in leading] for i in range(len(records))]
    order = sorted(range(len(records)), key=lambda i: ([str(v) for v in first[i]], record_order(records[i])))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*(h for h, _ in leading), *names])
    for i in order:
        w.writerow([_csv_value(v) for v in (*first[i], *rows[i])])
    return buf.getvalue()


def kv_md(headers: tuple[str, str], rows: Sequence[tuple[Any, Any]]) -> str:
    """A two-column markdown table (e.g. the provenance): ``headers``, then one line per (key, value)."""
    (a, b) = headers
    return "\n".join([f"| {a} | {b} |", "|---|---|"] + [f"| {md_escape(k)} | {md_escape(v)} |" for k, v in rows])


def md_doc(title: str, sections: Sequence[tuple[str, str, object]]) -> str:
    out = [f"# {md_escape(title)}", ""]
    for heading, kind, payload in sections:
        out += [f"## {md_escape(heading)}", ""]
        if kind == "kv":
            out.append(kv_md(*payload))
        elif kind == "tables":
            out += [table_md(t) for t in payload]
        elif kind == "images":
            out += [f"![{md_escape(cap)}]({name})\n\n*{md_escape(cap)}*\n" for cap, name in payload]
        else:
            out += [f"- {md_escape(line)}" for line in payload]
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


_CSS = (
    "body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0}th,td{padding:.2em .6em;text-align:right}"
    "tr:first-child th{border-bottom:1px solid #000}table{border-top:2px solid #000;border-bottom:2px solid #000}"
    "caption{caption-side:bottom;text-align:left;font-size:.85em;padding-top:.4em}img{max-width:100%}"
    "figure{margin:1em 0}figcaption{font-size:.85em}"
)


def html_doc(title: str, sections: Sequence[tuple[str, str, object]], out: Path) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, kind, payload in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        if kind == "kv":
            (a, b), rows = payload
            trs = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
            body.append(f"<table><tr><th>{a}</th><th>{b}</th></tr>{trs}</table>")
        elif kind == "tables":
            body += [table_html(t) for t in payload]
        elif kind == "images":
            for cap, name in payload:
                data = base64.b64encode((out / name).read_bytes()).decode("ascii")
                alt = html.escape(cap)
                img = f'<img alt="{alt}" src="data:image/png;base64,{data}">'
                body.append(f"<figure>{img}<figcaption>{alt}</figcaption></figure>")
        else:
            body.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in payload) + "</ul>")
    head = f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
    return f"{head}<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
