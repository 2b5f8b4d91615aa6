"""bench.report.write / bench.report.paper / bench.report.plots: golden structure (not golden numbers) of the report.

The records are synthetic; every expectation (best per column, mean ± std, NFE) is computed here
from the records, independently of the report code. No torch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.report import (
    METRIC_FIELDS,
    SPACINGS,
    STEPS,
    make_records,
)
from helpers.sweep import as_records
from PIL import Image

from bench.report import paper
from bench.report.escape import tex_escape
from bench.report.write import warnings_of, write_report
from bench.store.record import devices_text, listed_devices
from ddim.errors import DDIMError


# ------------------------------------------------------------------------------------ md parsing
def parse_md(text: str) -> dict[str, tuple[list[str], dict[str, list[str]]]]:
    """{block title: (column headers, {row label: cells})} from the report's markdown tables."""
    blocks, title = {}, None
    for line in text.splitlines():
        if line.startswith("### "):
            title = line[4:]
        elif line.startswith("|") and title is not None and not line.startswith("|---"):
            parts = [p.strip() for p in line.strip().strip("|").split(" | ")]
            if title not in blocks:
                blocks[title] = (parts[1:], {})
            else:
                blocks[title][1][parts[0]] = parts[1:]
    return blocks


def row_label(sampler: str, eta) -> str:
    return f"η = {eta:.1f}" if sampler == "ddim" else "σ̂" if sampler == "sigma_hat" else sampler


def expected_cells(records, spacing, metric):
    """{(row label, S): (values over complete blocks, nfes, any failed)} for one block."""
    field, scale, _ = METRIC_FIELDS[metric]
    out: dict = {}
    for r in records:
        if r["spacing"] != spacing:
            continue
        vals, nfes, failed = out.setdefault((row_label(r["sampler"], r["eta"]), r["steps"]), ([], set(), [False]))
        if r["state"] == "COMPLETE" and r[field] is not None:
            vals.append(r[field] * scale)
            nfes.add(r["nfe"])
        elif r["state"] == "FAIL":
            failed[0] = True
    return out


def title_of(metric: str, spacing: str) -> str:
    header = {"fid": "FID ↓", "isc": "IS ↑", "kid": "KID ×10³ ↓"}[metric]
    return f"{header} — {spacing} spacing"


BOLD = re.compile(r"^\*\*(.+?)\*\*")


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("metric", list(METRIC_FIELDS))
@pytest.mark.parametrize("spacing", SPACINGS)
def test_every_cell_present_best_bold_failed_running_nfe(built, metric, spacing):
    records, _, _, _, out, _ = built
    blocks = parse_md((out / "table.md").read_text(encoding="utf-8"))
    heads, rows = blocks[title_of(metric, spacing)]
    exp = expected_cells(records, spacing, metric)
    labels = sorted({k[0] for k in exp}, key=lambda s: (not s.startswith("η"), s != "σ̂", s))
    steps = sorted({k[1] for k in exp})
    assert list(rows) == labels  # η ascending, then σ̂, then other samplers
    assert heads == [f"S = {s}" for s in steps]
    better = METRIC_FIELDS[metric][2]
    for j, s in enumerate(steps):
        means = {lab: round(float(np.mean(v)), 2) for (lab, ss), (v, _, _) in exp.items() if ss == s and v}
        best = better(means.values())
        for lab in labels:
            text = rows[lab][j]
            vals, nfes, failed = exp.get((lab, s), ([], set(), [False]))
            is_bold = bool(BOLD.match(text))
            if not vals:
                assert text == ("failed" if failed[0] else "—") and not is_bold
                continue
            assert is_bold == (means[lab] == best), (lab, s, text)
            core = BOLD.match(text).group(1) if is_bold else text.split(" (")[0]
            if len(vals) > 1:
                assert core == f"{np.mean(vals):.2f} ± {np.std(vals, ddof=1):.2f}"
            else:
                assert core == f"{vals[0]:.2f}"
            assert ("(NFE " in text) == (nfes != {s})
            if nfes != {s}:
                assert f"(NFE {'/'.join(map(str, sorted(nfes)))})" in text


def test_specific_cells(built):
    _, _, _, _, out, _ = built
    blocks = parse_md((out / "table.md").read_text(encoding="utf-8"))
    _, quad = blocks[title_of("fid", "quad")]
    _, uni = blocks[title_of("fid", "uniform")]
    assert quad["η = 0.5"][1] == "failed"
    assert quad["η = 1.0"][2] == "—"
    assert "(NFE 12)" in quad["σ̂"][0]
    assert uni["η = 0.0"][1].startswith("**") and uni["η = 0.5"][1].startswith("**")  # the tie
    assert "dpmpp_2m" in uni and uni["dpmpp_2m"][2] == "—"
    md = (out / "table.md").read_text(encoding="utf-8")
    assert "**failed**" not in md


def test_metric_absent_everywhere_is_omitted(tmp_path):
    records, meta = make_records(tmp_path / "root")
    for r in records:
        r["kid_mean"] = r["kid_std"] = None
    write_report(as_records(records), meta, tmp_path / "out", root=tmp_path / "root")
    md = (tmp_path / "out/table.md").read_text(encoding="utf-8")
    assert "KID" not in md and "FID" in md and "IS ↑" in md


# results.csv's header: the trial and its cell, the measured values (KID ×10³), error, images, then the rest
# alphabetically; the digits-demo report's committed results.csv has exactly these columns.
CSV_HEADER = [
    "number", "state", "spacing", "sampler", "eta", "steps", "seed_block", "nfe", "n", "seeds", "fid", "isc_mean",
    "isc_std", "kid_mean_x1e3", "kid_std_x1e3", "wall_s", "images_per_s", "error", "grid", "strip",
    "checkpoint_sha256", "device", "extractor", "extractor_sha256", "precision", "ref_key", "ref_sha256",
]  # fmt: skip


def test_csv_round_trips(built):
    records, _, _, _, out, _ = built
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert header == CSV_HEADER and len(rows) == len(records)
    by_number = {int(r["number"]): r for r in rows}
    for rec in records:
        back = by_number[rec["number"]]
        for key, value in rec.items():
            if key in ("kid_mean", "kid_std"):
                key, value = f"{key}_x1e3", None if value is None else value * 1000.0
            text = back[key]  # read back with the type the record holds: "" is None
            assert (None if text == "" else type(value)(text) if value is not None else text) == value, (key, rec)
    order = [(r["spacing"], r["sampler"], r["eta"] != "", float(r["eta"] or 0), int(r["steps"]),
              int(r["seed_block"])) for r in rows]  # fmt: skip
    assert order == sorted(order)


def test_csv_header_is_the_committed_demo_reports():
    with open(Path(__file__).resolve().parents[1] / "reports/digits-demo/results.csv", encoding="utf-8") as f:
        assert next(csv.reader(f)) == CSV_HEADER


def test_manifest(built):
    records, meta, _, _, out, _ = built
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["meta"] == json.loads(json.dumps(meta))
    assert len(manifest["cells"]) == len(records)
    for name, sha in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == sha
    every = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == every - {"manifest.json"}  # every file the report wrote but itself
    assert {"index.html", "README.md", "consistency.png", "inversion.md"} <= set(manifest["files"])
    assert manifest["warnings"] == []


def test_grids_consistency_interpolation_inversion_readme_html(built):
    records, _, _, _, out, written = built
    grids = sorted(p.name for p in (out / "grids").iterdir())
    assert len(grids) == sum(1 for r in records if r["grid"])
    assert "quad_ddim_eta0.0_S10_b1.png" in grids and "uniform_sigma_hat_S50_b0.png" in grids
    for name in ("fid_vs_steps.png", "fid_vs_time.png", "consistency.png", "interpolation.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert Image.open(out / name).size[0] > 0
    # Consistency: η = 0 rows (the lowest η with strips, named in the caption), one 8-px strip per S, per spacing.
    caption = "row per S (DDIM eta = 0.0, uniform spacing, seed block 0; DDIM eta = 0.0, quad spacing, seed block 0)"
    assert caption in (out / "README.md").read_text(encoding="utf-8")  # every section is named, not the first
    assert Image.open(out / "consistency.png").size[1] >= 2 * len(STEPS) * 8
    inv = (out / "inversion.md").read_text(encoding="utf-8")
    assert "0.0151" in inv and "0.014" in inv and "0.0023" in inv
    readme = (out / "README.md").read_text(encoding="utf-8")
    for name in written:
        if name.endswith(".png"):
            assert f"]({name})" in readme, name
    assert "CUDA out of memory" in readme and "FID ↓ — quad spacing" in readme
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == sum(1 for n in written if n.endswith(".png"))
    assert 'src="' not in page.replace('src="data:', "")  # nothing but embedded images


def test_compare_paper(tmp_path):
    records, meta = make_records(tmp_path / "root")
    write_report(as_records(records), meta, tmp_path / "out", root=tmp_path / "root", compare_paper="cifar10")
    blocks = parse_md((tmp_path / "out/table.md").read_text(encoding="utf-8"))
    heads, rows = blocks[title_of("fid", "quad")]
    assert heads[3:] == [f"paper (cifar10) S = {s}" for s in STEPS]
    for label, eta in (("η = 0.0", 0.0), ("η = 0.5", 0.5), ("η = 1.0", 1.0)):
        paper_cells = [c.strip("*") for c in rows[label][3:]]
        assert paper_cells == [f"{paper.fid('cifar10', 'ddim', eta, s):.2f}" for s in STEPS]
    assert [c.strip("*") for c in rows["σ̂"][3:]] == ["367.43", "133.37", "32.72"]
    assert rows["η = 0.0"][3] == "**13.36**"  # best of the paper's column
    _, uni = blocks[title_of("fid", "uniform")]
    assert uni["dpmpp_2m"][3:] == ["—", "—", "—"]
    assert "paper" not in "".join(blocks[title_of("isc", "quad")][0])
    assert "(this block uses uniform)" in (tmp_path / "out/table.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"compare_paper": "imagenet"}, "no FID table"),
        ({"metrics": ("fid", "precision")}, "unknown metric"),
    ],
)
def test_user_errors(tmp_path, kwargs, message):
    records, meta = make_records(tmp_path / "root")
    with pytest.raises(DDIMError, match=message):
        write_report(as_records(records), meta, tmp_path / "out", root=tmp_path / "root", **kwargs)


def test_missing_inputs_raise(tmp_path):
    records, meta = make_records(tmp_path / "root")
    with pytest.raises(DDIMError, match="no result records"):
        write_report([], meta, tmp_path / "out")
    with pytest.raises(DDIMError, match="not found"):
        write_report(as_records(records), meta, tmp_path / "out", root=tmp_path / "elsewhere")
    bad = [dict(records[0], spacing=None)]
    with pytest.raises(DDIMError, match="lacks 'spacing'"):
        write_report(as_records(bad), meta, tmp_path / "out", root=tmp_path / "root")


def test_protocol_mismatch_is_reported(tmp_path):
    records, meta = make_records(tmp_path / "root")
    records[0]["ref_sha256"] = "stale"
    write_report(as_records(records), meta, tmp_path / "out", root=tmp_path / "root")
    warnings = json.loads((tmp_path / "out/manifest.json").read_text(encoding="utf-8"))["warnings"]
    assert any("ref_sha256" in w and "#0" in w for w in warnings)


def test_cells_on_any_of_the_workers_devices_are_not_flagged(tmp_path):
    """A sweep with two worker devices lists both in its provenance (``devices_text``); a cell on either is the
    sweep's device, a cell on a third is flagged. A GPU model's own comma does not split a device."""
    records, meta = make_records(tmp_path / "root")
    gpus = ["cuda:1 (Fake GPU)", "cuda:0 (Fake, GPU)"]
    meta = {**meta, "device": devices_text([gpus[0], gpus[1], gpus[0]])}
    assert listed_devices(meta["device"]) == gpus
    records = [dict(r, device=gpus[i % 2]) for i, r in enumerate(records)]
    assert not [w for w in warnings_of(as_records(records), meta, None) if "device" in w]
    records[3]["device"] = "cuda:2 (Fake GPU)"
    flagged = [w for w in warnings_of(as_records(records), meta, None) if "device" in w]
    assert flagged == [f"trial #3: device 'cuda:2 (Fake GPU)' differs from the sweep's {meta['device']!r}"]


# --------------------------------------------------------------------------------------------- tex
def _unescaped(text: str, ch: str) -> int:
    return len(re.findall(r"(?<!\\)" + re.escape(ch), text))


def check_tex_structure(tex: str) -> int:
    """Booktabs tabulars with balanced braces, escaped specials and the spec's column count in every
    row; returns the number of tabulars."""
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    depth = 0
    for ch in re.sub(r"\\[{}]", "", body):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    assert _unescaped(body, "_") == 0 and _unescaped(body, "%") == 0
    tabulars = re.findall(r"\\begin\{tabular\}\{([^}]*)\}(.*?)\\end\{tabular\}", body, re.S)
    assert tabulars and len(tabulars) == body.count(r"\begin{table}") == body.count(r"\end{table}")
    for spec, inner in tabulars:
        ncols = len(re.findall(r"[lrc]", spec))
        assert inner.count(r"\toprule") == inner.count(r"\midrule") == inner.count(r"\bottomrule") == 1
        for line in inner.splitlines():
            if not line.rstrip().endswith(r"\\"):
                continue
            assert _unescaped(line, "$") % 2 == 0, line
            spans = sum(int(n) - 1 for n in re.findall(r"\\multicolumn\{(\d+)\}", line))
            assert _unescaped(line, "&") + 1 + spans == ncols, line
    for caption in re.findall(r"\\caption\{(.*)\}", body):
        assert _unescaped(caption, "&") == 0
    return len(tabulars)


def test_tex_structure(built, tmp_path):
    _, _, _, _, out, _ = built
    n = check_tex_structure((out / "table.tex").read_text(encoding="utf-8"))
    assert n == 3 * len(SPACINGS)
    standalone = (out / "table_standalone.tex").read_text(encoding="utf-8")
    assert standalone.startswith("\\documentclass{article}\n\\usepackage{booktabs}")
    assert check_tex_structure(standalone) == n + 1  # + the inversion table
    tex = (out / "table.tex").read_text(encoding="utf-8")
    assert r"dpmpp\_2m" in tex and r"$\hat{\sigma}$" in tex and r"$\eta$ = 0.0" in tex and r"\textbf{" in tex
    records, meta = make_records(tmp_path / "root")
    write_report(
        as_records(records), meta, tmp_path / "cmp", root=tmp_path / "root", compare_paper="celeba", force=True
    )
    check_tex_structure((tmp_path / "cmp/table.tex").read_text(encoding="utf-8"))


def test_tex_escape():
    assert tex_escape("a_b 50% & $x# {y} ~^\\") == (
        r"a\_b 50\% \& \$x\# \{y\} \textasciitilde{}\textasciicircum{}\textbackslash{}"
    )
    assert tex_escape("σ̂ η ± ↓") == r"$\hat{\sigma}$ $\eta$ $\pm$ $\downarrow$"


def test_standalone_tex_compiles(built, tmp_path):
    engine = next((e for e in ("pdflatex", "tectonic", "latexmk") if shutil.which(e)), None)
    if engine is None:
        print("no TeX engine (pdflatex, tectonic, latexmk) on PATH; compilation not checked")
        pytest.skip("no TeX engine (pdflatex, tectonic, latexmk) on PATH; structure is checked in test_tex_structure")
    _, _, _, _, out, _ = built
    shutil.copy(out / "table_standalone.tex", tmp_path / "t.tex")
    cmd = {
        "pdflatex": ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"],
        "tectonic": ["tectonic", "t.tex"],
        "latexmk": ["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "t.tex"],
    }[engine]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "t.pdf").stat().st_size > 0


def test_no_heavy_imports():
    code = (
        "import sys, bench.report.write, bench.report.paper, bench.report.plots; "
        "bad = [m for m in ('torch', 'wandb', 'optuna', 'typer', 'matplotlib') if m in sys.modules]; "
        "print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_only_a_sweep_with_cells_not_run_is_called_incomplete(tmp_path):
    """A running cell leaves the sweep incomplete; failed cells alone do not (a rerun retries them, but the sweep
    ran every cell)."""
    records, meta = make_records(tmp_path / "root")
    for name, recs in (("all", records), ("ran", [r for r in records if r["state"] != "RUNNING"])):
        write_report(as_records(recs), meta, tmp_path / name, root=tmp_path / "root")
    readme = (tmp_path / "all/README.md").read_text(encoding="utf-8")
    assert f"{len(records) - 2} of {len(records)} cells measured, 1 failed, 1 not run" in readme
    assert "## Incomplete sweep" not in (tmp_path / "ran/README.md").read_text(encoding="utf-8")
    assert json.loads((tmp_path / "ran/manifest.json").read_text(encoding="utf-8"))["incomplete"] is None
