"""Text from a sweep store in each format the report writes (``bench.report.escape``): it reads literally, never as
markup, and ordinary text keeps its bytes. Markdown is checked by rendering it (markdown-it, CommonMark + tables)."""

from __future__ import annotations

import html

import pytest
from markdown_it import MarkdownIt

from bench.report.escape import csv_text, md_escape, one_line_text, tex_escape

# What a store's writer may put in any text field: HTML, Markdown (a link to javascript:, a heading after a
# paragraph break, emphasis, code), LaTeX, a table cell's end, CommonMark's \r line ending, ANSI escapes and BEL.
PAYLOAD = (
    "s<script>alert(1)</script></td><img src=x onerror=alert(2)>a|b\r\n\n# INJECTED\n[clk](javascript:alert(3)) "
    "<b>md</b> ![i](x.png) <javascript:alert(4)> `code` *em* _u_ __b__ ~~del~~ $x$ &lt; &#60; [r]: /x ##"
    r"\input{/etc/passwd}\write18{id}%_&#}$x$\\*a* x\_"
    "\x1b[2J\x1b[31mANSI\x1b]0;TITLE\x07\rOVER\x00\x7f\x85\u2028end"
)
# Text a report holds today: none of it changes.
ORDINARY = ["lsun_church", "checkpoint_sha256", "η = 0.0", "σ̂", "KID ×10³ ↓ — uniform spacing", "x_T", "trial #3",
            "pixels in [0, 1].", "['fid', 'isc', 'kid']", "0-499, 500-999", "digits (digits-demo) S = 10",
            "ddimbench sweep --config sweeps/quick.yaml checkpoint=runs/digits name=digits-demo --wandb offline",
            "CUDA out of memory; retry with a smaller batch", "seeds 0-9 (a + b)", "C:/runs/digits"]  # fmt: skip
MD = MarkdownIt("commonmark").enable(["table", "strikethrough"])


def _shown(text: str) -> str:
    """What markdown-it writes for ``text`` shown literally (its own HTML escaping)."""
    return html.escape(text, quote=False).replace('"', "&quot;")


def test_one_line_text_keeps_text_and_drops_controls():
    assert one_line_text("a\r\nb\tc\x0bd\x1ce\u2028f\x85g") == "a  b c d e f g"
    assert one_line_text("\x1b[31mred\x07\x00\x7f\x9b") == "[31mred"
    assert one_line_text(3.5) == "3.5"
    for text in ORDINARY:
        assert one_line_text(text) == text


@pytest.mark.parametrize("text", [PAYLOAD, *ORDINARY, "#", "a ##", "]", "x](y)", "x] (y)", "[a][b]", "\\", "a_"])
def test_md_escape_renders_literally(text: str):
    flat = one_line_text(text)
    para = MD.render(md_escape(text)).strip()
    assert para == f"<p>{_shown(flat.strip())}</p>", (text, para)
    heading = MD.render(f"# report: {md_escape(text)}").strip()
    assert heading == f"<h1>report: {_shown(flat.strip())}</h1>", (text, heading)
    table = MD.render(f"| k | v |\n|---|---|\n| key | {md_escape(text)} |\n").strip()
    assert table.count("<tr>") == 2 and table.count("<td>") == 2, table  # one row, its cells where they were
    assert f"<td>{_shown(flat.strip())}</td>" in table, (text, table)
    item = MD.render(f"- trial #1: {md_escape(text)}\n").strip()
    assert item == f"<ul>\n<li>trial #1: {_shown(flat.strip())}</li>\n</ul>", (text, item)


def test_md_escape_keeps_ordinary_text_as_it_was():
    for text in ORDINARY:
        assert md_escape(text) == text
    assert md_escape("a|b\nc") == r"a\|b c"  # as before: a table cell's end escaped, one line
    assert md_escape("<b>&") == "&lt;b&gt;&amp;"


# ------------------------------------------------------------------------------------------------- LaTeX
def test_tex_escape_keeps_a_caption_one_paragraph_without_controls():
    assert tex_escape("a\n\nb\x1b[31mc\x07\rd\x00") == "a  b[31mc d"  # no \par, no ESC / BEL / NUL for LaTeX
    assert tex_escape(PAYLOAD).count("\\textbackslash{}input\\{/etc/passwd\\}") == 1
    assert tex_escape("[0, 1] x") == "{[}0, 1] x" and tex_escape("a [b]") == "a [b]"  # no optional argument of \\
    for text in ("lsun_church", "η = 0.0", "σ̂", "trial #3"):
        assert tex_escape(text) == {"lsun_church": r"lsun\_church", "η = 0.0": r"$\eta$ = 0.0",
                                    "σ̂": r"$\hat{\sigma}$", "trial #3": r"trial \#3"}[text]  # fmt: skip


# --------------------------------------------------------------------------------------------------- CSV
def test_csv_text_neutralises_formulas_but_not_numbers():
    for formula in ('=HYPERLINK("http://x","y")', "+1+cmd", "-2+3+cmd|' /C calc'!A0", "@SUM(A1)", "\t=1", "\r=1"):
        assert csv_text(formula) == "'" + formula
    for text in ("-0.5", "+3", "-1e-3", "-inf", "0-499", "digits", "", "a=b", "CUDA out of memory"):
        assert csv_text(text) == text


# ------------------------------------------------------------------------------------------------- plots
BAD_MATH = "$\\frac{$ \x1b"  # mathtext would refuse it (ParseSyntaxException), ESC is no glyph


def test_plot_text_is_drawn_as_it_is(caplog, recwarn):
    from bench.report import plots

    line = plots.Series(label="s" + BAD_MATH + "\x1b\r\n", x=[10, 20], y=[3.0, 2.0], notes=[BAD_MATH, "$x$"])
    pngs = [
        plots.fid_vs_steps_png([line], title=BAD_MATH + "\x1b\x07"),
        plots.fid_vs_time_png([line], title=BAD_MATH),
        plots.pareto_png([1.0, 2.0], [3.0, 2.0], [0, 1], [BAD_MATH, "$x$"], xlabel=BAD_MATH, title=BAD_MATH),
    ]
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in pngs)
    assert "glyph" not in caplog.text.lower() and not [w for w in recwarn if "Glyph" in str(w.message)]
