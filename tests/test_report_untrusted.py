"""`ddimbench report` of a sweep store whose text fields hold markup: every file it writes shows that text literally.

A sweep store is untrusted (anyone with access to the database writes it). Here a real SQLite store is written as a
sweep leaves it, copied (SQLite's backup API) and its copy's provenance and one failed trial's message are edited to
hold HTML, Markdown, LaTeX, a spreadsheet formula and control characters. The report of the copy holds none of that
markup raw; the report of the original shows its ordinary text as it always has. Offline, CPU only, no model.
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from pathlib import Path

import optuna
import pytest
from helpers.sweep import fake_sweep
from optuna.trial import TrialState

from bench.cli import main
from bench.store.cell import Cell

pytestmark = pytest.mark.timeout(300)

HTML = "<script>alert(1)</script></td><img src=x onerror=alert(2)>"
MARKDOWN = "a|b\r\n\n# INJECTED\n[clk](javascript:alert(3)) <b>md</b> `c` *e*"
LATEX = r"\input{/etc/passwd}\write18{id}%_&#}$x$"
CONTROLS = "\x1b[2J\x1b[31mANSI\x1b]0;TITLE\x07\rOVER"
PAYLOAD = HTML + MARKDOWN + LATEX + CONTROLS
FORMULA = '=HYPERLINK("http://evil.example","x")'
FIELDS = ("name", "dataset", "command", "git_commit", "device", "checkpoint", "extra_field")
# What no Markdown file may hold raw: HTML tags, a heading of the payload's, code, a CommonMark line ending, ANSI;
# nor a link (RAW_LINK: "](" but for an escaped "\](").
RAW_MD = ("<script", "<img", "<b>", "\n# INJECTED", "`c`", "\r", "\x1b", "\x07")
RAW_LINK = re.compile(r"(?<!\\)\]\(javascript:")


def _copied(store: Path, to: Path) -> Path:
    with sqlite3.connect(store) as src, sqlite3.connect(to) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    return to


def _poison(path: Path) -> None:
    """Every text field of the sweep's provenance, one failed trial's message and one measured trial's seeds and
    device hold the payload (a trial's seeds are the report's "seeds")."""
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{path}")
    meta = dict(study.user_attrs["meta"])
    meta.update({key: meta.get(key, "") + PAYLOAD for key in FIELDS if isinstance(meta.get(key, ""), str)})
    meta["versions"] = {"python": PAYLOAD, PAYLOAD: "k"}
    study.set_user_attr("meta", meta)
    cell = Cell("ddim", "quad", 10, 1.0, 0)
    trial = study.ask()
    for key, value in {"cell": cell.key, **cell.fields(), "error": FORMULA + PAYLOAD}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, state=TrialState.FAIL)
    cell = Cell("ddim", "quad", 20, 1.0, 0)
    trial = study.ask()
    result = {"fid": 30.0, "nfe": 20, "n": 50000, "seeds": PAYLOAD, "device": "-2+3+cmd|' /C calc'!A0",
              "extractor": "classifier", "checkpoint_sha256": "c1fa", "wall_s": -0.5}  # fmt: skip
    for key, value in {"cell": cell.key, **cell.fields(), "result": result}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, 30.0, state=TrialState.COMPLETE)


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """The report of the clean store ("clean"), of its poisoned copy ("poisoned") and of a copy named for mathtext
    ("math"), W&B offline."""
    import os

    work = tmp_path_factory.mktemp("untrusted")
    clean = work / "clean.db"
    fake_sweep(f"sqlite:///{clean}", "s", "digits", "classifier")
    _poison(_copied(clean, work / "poisoned.db"))
    edited = _copied(clean, work / "math.db")  # a name mathtext refuses, for the figures' titles
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{edited}")
    study.set_user_attr("meta", {**study.user_attrs["meta"], "name": "s$\\frac{$\x1b"})
    out = {}
    here = Path.cwd()
    os.chdir(work)
    try:
        for kind in ("clean", "poisoned", "math"):
            argv = ["report", "s", "--storage", f"sqlite:///{work / kind}.db", "--out", str(work / kind)]
            assert main([*argv, "--wandb", "offline"]) == 0
            out[kind] = work / kind
    finally:
        os.chdir(here)
    return out


def _markdown_blocks(folder: Path) -> str:
    definition = json.loads((folder / "wandb_report.json").read_text(encoding="utf-8"))
    return "\n".join(b["text"] for b in definition["blocks"] if b["type"] == "markdown")


def test_markdown_files_show_stored_text_literally(reports):
    folder = reports["poisoned"]
    for name, text in [(n, (folder / n).read_text(encoding="utf-8")) for n in ("README.md", "table.md")] + [
        ("wandb_report.json", _markdown_blocks(folder))
    ]:
        for raw in RAW_MD:
            assert raw not in text, (name, raw)
        assert not RAW_LINK.search(text), name
        assert "&lt;script&gt;" in text and r"\# INJECTED" in text, name  # there, as text
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# DDIM benchmark report: s&lt;script&gt;alert(1)&lt;/script&gt;") and "\n# " not in readme
    provenance = readme.split("## Provenance")[1].split("\n## ")[0].strip().splitlines()
    assert len(provenance) == 2 + len(json.loads((folder / "manifest.json").read_text())["meta"]) + 1  # versions: 2
    for line in provenance[:1] + provenance[2:]:
        assert line.startswith("| ") and line.endswith(" |") and line.count(" | ") == 1, line  # two cells, one line


def test_latex_shows_stored_text_as_text(reports):
    tex = (reports["poisoned"] / "table.tex").read_text(encoding="utf-8")
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", tex)  # no ESC, BEL, CR for LaTeX
    assert r"\input{" not in tex and r"\write18{" not in tex and r"\textbackslash{}input\{/etc/passwd\}" in tex
    for table in re.findall(r"\\begin\{table\}.*?\\end\{table\}", tex, re.S):
        assert "\n\n" not in table  # no paragraph break in a caption or a cell
    captions = re.findall(r"^\\caption\{(.*)\}$", tex, re.M)
    assert len(captions) == tex.count(r"\caption{") == tex.count(r"\begin{table}")  # each on its line
    for caption in captions:
        depth = 0
        for ch in re.sub(r"\\[{}]", "", caption):
            depth += {"{": 1, "}": -1}.get(ch, 0)
            assert depth >= 0, caption
        assert depth == 0 and "&lt;" not in caption and "\\&" in caption, caption


def test_csv_holds_no_formula(reports):
    with open(reports["poisoned"] / "results.csv", newline="", encoding="utf-8") as f:
        rows = {(r["sampler"], r["eta"], r["steps"]): r for r in csv.DictReader(f)}
    failed, measured = rows[("ddim", "1.0", "10")], rows[("ddim", "1.0", "20")]
    assert failed["error"] == "'" + FORMULA + PAYLOAD  # the message, whole, as text
    assert measured["device"] == "'-2+3+cmd|' /C calc'!A0" and measured["seeds"] == PAYLOAD
    assert measured["wall_s"] == "-0.5" and measured["fid"] == "30.0"  # numbers stay numbers, negative ones too
    for row in rows.values():
        for key, value in row.items():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")) or value == "-0.5", (key, value)


def test_ordinary_text_shows_as_it_always_has(reports):
    readme = (reports["clean"] / "README.md").read_text(encoding="utf-8")
    rows = (
        "| dataset | digits |",
        "| seeds | 0-49999 |",
        "| checkpoint_sha256 | c1fa |",
        "| metrics | ['fid', 'kid'] |",
        "| η = 0.0 | **15.00** | **8.00** |",
        "| σ̂ | 300.00 | 120.00 |",
    )
    for row in rows:
        assert f"\n{row}\n" in readme, row
    assert readme.startswith("# DDIM benchmark report: s\n")
    table = (reports["clean"] / "table.md").read_text(encoding="utf-8")
    caption = "FID ↓ (lower is better) on digits, quad timestep spacing, 50000 samples per cell (seeds 0-49999). "
    assert f"\n{caption}" in table
    assert "### KID ×10³ ↓ — quad spacing\n" in table


def test_figure_titles_are_no_mathtext(reports):
    """The sweep's name titles the figures: a name mathtext cannot parse is drawn as it is (it stopped the report with
    a ParseSyntaxException)."""
    assert (reports["math"] / "fid_vs_steps.png").is_file() and (reports["math"] / "fid_vs_time.png").is_file()
    readme = (reports["math"] / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# DDIM benchmark report: s\\$\\\\frac{\\$\n")
