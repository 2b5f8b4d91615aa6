"""Report figures as PNG bytes: FID vs S, FID vs sampling cost (with its Pareto front), a search's
Pareto front on the cost it minimised, and the paper's "same x_T, different S" consistency figure.

Every function takes plain data and returns PNG bytes; the caller decides where they go (and
writes them atomically). matplotlib is imported lazily and only through its object API (Figure +
Agg canvas), so no global pyplot state or backend switch leaks into the caller. Figure size, dpi
and fonts are fixed and the PNG "Software" tag is dropped so reruns give identical bytes. Titles, labels, legends
and notes hold text from the sweep store (its name, a row's sampler): each is drawn as it is, on one line
(``bench.report.escape.one_line_text``) with matplotlib's math parsing off, never as mathtext ("$...$").
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from bench.report.escape import one_line_text

FIGSIZE = (7.0, 4.5)  # inches
DPI = 120
_LINESTYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class Series:
    """One line of a plot: a row of the table (η or sampler) on one timestep spacing."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    yerr: Sequence[float] = ()  # std over seed blocks; 0 where a point has a single block
    notes: Sequence[str] = ()  # per-point annotations, e.g. "S=10"
    group: str = ""  # the spacing; one line style per group
    colour_key: str = field(default="")  # series sharing a key share a colour


def pareto_front(x: Sequence[float], y: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both x and y (lower is better), by x ascending."""
    order = sorted(range(len(x)), key=lambda i: (x[i], y[i], i))
    front, best = [], math.inf
    for i in order:
        if y[i] < best:
            front.append(i)
            best = y[i]
    return front


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _styles(series: Sequence[Series]) -> list[tuple[str, str]]:
    """A (colour, linestyle) per series: colour by row, line style by spacing, both in first-seen order."""
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    colours: dict[str, int] = {}
    groups: dict[str, int] = {}
    out = []
    for s in series:
        c = colours.setdefault(s.colour_key or s.label, len(colours))
        g = groups.setdefault(s.group, len(groups))
        out.append((palette[c % len(palette)], _LINESTYLES[g % len(_LINESTYLES)]))
    return out


def _log_y_if_wide(ax, series: Sequence[Series]) -> None:
    ys = [v for s in series for v in s.y if v > 0]
    if ys and max(ys) / min(ys) > 20:
        ax.set_yscale("log")


def _finish(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_xscale("log")
    ax.set_title(one_line_text(title), fontsize=10, parse_math=False)
    ax.set_xlabel(one_line_text(xlabel), parse_math=False)
    ax.set_ylabel(one_line_text(ylabel), parse_math=False)
    ax.grid(True, which="both", alpha=0.3, linewidth=0.5)


def _legend(ax, **kw) -> None:
    for text in ax.legend(fontsize=7, frameon=False, **kw).get_texts():
        text.set_parse_math(False)


def _note(ax, note: str, xy: tuple[float, float], **kw) -> None:
    ax.annotate(one_line_text(note), xy, textcoords="offset points", fontsize=6, parse_math=False, **kw)


def _line(ax, s: Series, colour: str, ls: str, **style) -> None:
    """One series as a line with markers and its seed-block error bars."""
    yerr = list(s.yerr) if s.yerr else None
    ax.errorbar(list(s.x), list(s.y), yerr=yerr, label=one_line_text(s.label), color=colour, linestyle=ls, marker="o",
                markersize=3.5, capsize=2.5, **style)  # fmt: skip


def fid_vs_steps_png(series: Sequence[Series], *, title: str = "FID vs sampling steps") -> bytes:
    """FID against S (log x), one line per series, error bars = std over seed blocks."""
    fig, ax = _figure()
    for s, (colour, ls) in zip(series, _styles(series), strict=True):
        _line(ax, s, colour, ls, linewidth=1.2)
    _log_y_if_wide(ax, series)
    _finish(ax, title, "sampling steps S", "FID ↓")
    if series:
        _legend(ax, loc="upper right")
    xs = sorted({v for s in series for v in s.x})
    if xs:
        ax.set_xticks(xs, [f"{v:g}" for v in xs], minor=False)
        ax.minorticks_off()
    fig.tight_layout()
    return _png(fig)


def fid_vs_time_png(series: Sequence[Series], *, title: str = "FID vs sampling cost") -> bytes:
    """FID against seconds per image (log x); the Pareto front over all points is drawn in black."""
    fig, ax = _figure()
    all_x: list[float] = []
    all_y: list[float] = []
    for s, (colour, ls) in zip(series, _styles(series), strict=True):
        _line(ax, s, colour, ls, linewidth=0.8, alpha=0.85)
        for x, y, note in zip(s.x, s.y, s.notes, strict=False):
            _note(ax, note, (x, y), xytext=(3, 3), color=colour)
        all_x += list(s.x)
        all_y += list(s.y)
    front = pareto_front(all_x, all_y)
    if front:
        fx, fy = [all_x[i] for i in front], [all_y[i] for i in front]
        ax.step(fx, fy, where="post", color="black", linewidth=1.0, linestyle="--", label="Pareto front")
        ax.scatter(fx, fy, s=60, facecolors="none", edgecolors="black", linewidths=1.0, zorder=3)
    _log_y_if_wide(ax, series)
    _finish(ax, title, "sampling cost (seconds per image, measured)", "FID ↓")
    if series:
        _legend(ax, loc="upper right")
    fig.tight_layout()
    return _png(fig)


def pareto_png(x: Sequence[float], y: Sequence[float], front: Sequence[int], notes: Sequence[str], *,
               xlabel: str, title: str) -> bytes:  # fmt: skip
    """A search's trials as points (FID against the cost it minimised, log x), the Pareto front ``front``
    (indices, cost ascending) as a black step line with its points ringed and annotated by ``notes``."""
    fig, ax = _figure()
    ax.scatter(list(x), list(y), s=14, color="tab:blue", alpha=0.6, label="trials")
    if front:
        fx, fy = [x[i] for i in front], [y[i] for i in front]
        ax.step(fx, fy, where="post", color="black", linewidth=1.0, linestyle="--", label="Pareto front")
        ax.scatter(fx, fy, s=60, facecolors="none", edgecolors="black", linewidths=1.0, zorder=3)
        for i in front:
            _note(ax, notes[i], (x[i], y[i]), xytext=(4, 4))
    _log_y_if_wide(ax, [Series(label="", x=list(x), y=list(y))])
    _finish(ax, title, xlabel, "FID ↓")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")  # "3", not "3×10⁰", on a short log axis
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    if len(x):
        _legend(ax, loc="best")
    fig.tight_layout()
    return _png(fig)


def consistency_png(sections: Sequence[tuple[str, Sequence[tuple[str, Path]]]], *, pad: int = 4) -> bytes:
    """Stack sample strips (same seeds, one row per S) under a label column: the paper's Fig. 5-style
    "same x_T, different S" figure. ``sections`` = [(title, [(row label, strip png path), ...]), ...];
    a section title is drawn above its rows when it is not empty."""
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(text: str) -> tuple[int, int]:
        left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    loaded = [(one_line_text(title), [(one_line_text(label), Image.open(p).convert("RGB")) for label, p in rows])
              for title, rows in sections]  # fmt: skip
    labels = [label for _, rows in loaded for label, _ in rows]
    label_w = max((text_size(t)[0] for t in labels), default=0) + 2 * pad
    strip_w = max((im.width for _, rows in loaded for _, im in rows), default=1)
    title_h = max((text_size(t)[1] for t, _ in loaded if t), default=0) + 2 * pad
    width = max([label_w + strip_w + pad] + [text_size(t)[0] + 2 * pad for t, _ in loaded if t])
    height = pad
    for title, rows in loaded:
        height += (title_h if title else 0) + sum(im.height + pad for _, im in rows)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = pad
    for title, rows in loaded:
        if title:
            draw.text((pad, y + pad // 2), title, fill="black", font=font)
            y += title_h
        for label, im in rows:
            th = text_size(label)[1]
            draw.text((pad, y + (im.height - th) // 2), label, fill="black", font=font)
            canvas.paste(im, (label_w, y))
            y += im.height + pad
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()
