"""Text from a sweep store, made safe for each format the report writes: one function per format.

A sweep store is untrusted input (``bench.store.untrusted``): its sweep name, command, dataset, seeds, device,
checkpoint and versions, and its trials' error messages reach the report's files as text. Each format gets that
text so that it reads literally, never as markup: ``md_escape`` (README.md, table.md, the W&B Report's markdown)
and ``tex_escape`` (table.tex: a paragraph break or a raw control character in a caption stops LaTeX) put the text
on one line first (``one_line_text``: line breaks and tabs as spaces, other control characters such as ANSI escapes
dropped); ``csv_text`` keeps a results.csv cell as it is but for one a spreadsheet would run as a formula. Numbers
and the report's own markup (the tables' bold, headings) are not passed through them.
"""

from __future__ import annotations

import html
import re

# Whitespace controls (tab, line and paragraph breaks, also Unicode's and the C0 separators that Python's
# splitlines treats as line breaks) become a space; every other C0 / C1 control character (ESC, BEL, NUL, DEL...)
# is dropped.
_BREAKS = re.compile(r"[\t\n\v\f\r\x1c-\x1f\x85\u2028\u2029]")
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")


def one_line_text(text: object) -> str:
    """``str(text)`` on one line and without control characters: what every format below starts from."""
    return _CONTROLS.sub("", _BREAKS.sub(" ", str(text)))


# ---------------------------------------------------------------------------------------------- markdown
# Backslash-escaped, only where the character could be markup so that ordinary text keeps its bytes (CommonMark
# renders "\x" as "x" for any ASCII punctuation x, so an escape never changes what a viewer shows):
# - always: "\" (else it would escape what follows), "`" (code spans), "*" and "~" (emphasis and strikethrough,
#   intraword too), "$" (math on GitHub and W&B), "|" (a table cell's end);
# - "]" before "(", "[" or "]": the only places it closes a link or an image ("[0, 1]" stays);
# - "_" unless between letters or digits, where it can neither open nor close emphasis ("lsun_church" stays);
# - "#" before a space or the end: a heading's opening or closing sequence ("trial #3" stays).
# "<", ">" and "&" are HTML-escaped: no raw HTML, no autolink (<javascript:...>), no entity.
_MD = re.compile(r"[\\`*~$|]|\](?=\s*[(\[\]])|(?<![^\W_])_|_(?![^\W_])|#(?=\s|$)")


def md_escape(text: object) -> str:
    """Plain text -> Markdown inline text that renders as the same characters, on one line."""
    return _MD.sub(lambda m: "\\" + m.group(), html.escape(one_line_text(text), quote=False))


# ------------------------------------------------------------------------------------------------- LaTeX
_TEX_MAP = {
    "σ̂": r"$\hat{\sigma}$", "σ": r"$\sigma$", "η": r"$\eta$", "±": r"$\pm$", "↓": r"$\downarrow$",
    "↑": r"$\uparrow$", "×": r"$\times$", "³": r"\textsuperscript{3}", "—": "---", "–": "--",
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
    ">": r"\textgreater{}", "|": r"\textbar{}",
}  # fmt: skip
_TEX_RE = re.compile("|".join(re.escape(k) for k in sorted(_TEX_MAP, key=len, reverse=True)))


def tex_escape(text: object) -> str:
    """Plain text -> LaTeX text on one line: specials escaped, η/σ̂/±/arrows as math, a leading "[" braced (a
    table cell after ``\\\\`` or ``\\midrule`` would read it as their optional argument)."""
    out = _TEX_RE.sub(lambda m: _TEX_MAP[m.group()], one_line_text(text))
    return "{[}" + out[1:] if out.startswith("[") else out


# --------------------------------------------------------------------------------------------------- CSV
_FORMULA = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as the start of a formula (OWASP)


def csv_text(text: str) -> str:
    """A text cell of a CSV file: one a spreadsheet would run as a formula is prefixed with "'" (OWASP); a
    number written as text ("-0.5", "1e-3") is left as it is."""
    if not text.startswith(_FORMULA):
        return text
    try:
        float(text)
    except ValueError:
        return "'" + text
    return text
