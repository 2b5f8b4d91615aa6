"""What a person sees in a real browser: headless Chromium (Debian's ``chromium``, driven from its command line
with ``--dump-dom`` / ``--screenshot``) on (a) a report's index.html and (b) a running ``ddimbench dashboard``
(optuna-dashboard, a JavaScript app: the DOM is read after its scripts ran). In CI a missing Chromium fails
these tests (`make test` installs it); elsewhere it skips them. A tiny sweep on a SQLite store, offline, CPU only.
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest
from helpers.dashboard import Page, chromium, dashboard, run_chromium, start
from helpers.sweep import spec_of, url
from PIL import Image

from bench.report.build import make_report
from bench.store.study import load_results
from bench.sweep.runner import run_sweep

pytestmark = pytest.mark.slow
# Marks every image with its decoded size once the page has loaded: a broken image has naturalWidth 0.
IMAGE_PROBE = ("<script>addEventListener('load', () => { for (const i of document.images) "
               "i.setAttribute('data-natural-width', i.naturalWidth); });</script>")  # fmt: skip


@pytest.fixture(scope="module")
def swept(ckpt, cache, tmp_path_factory):
    """A 2 × 2 grid (S = 2, 3; η = 0, 1) in its own folder: (folder, storage URL, records)."""
    chromium()  # fail (CI) or skip before any work
    folder = tmp_path_factory.mktemp("browser")
    spec = spec_of(ckpt, cache, "steps=2,3", "eta=0,1", "n=20", "batch=10", "interpolation=false",
                   f"artifacts={folder / 'artifacts'}", name="seen")  # fmt: skip
    summary = run_sweep(spec, storage=url(folder), wandb="disabled", progress=False, heartbeat=1)
    assert summary.complete == 4
    return folder, url(folder), load_results("seen", url(folder))[0]


def _clean(text: str) -> str:
    """A header as shown (MUI adds a visually hidden "sorted ascending" to sortable headers)."""
    return re.sub(r"\s*sorted (ascending|descending)$", "", text)


def test_report_index_html_in_chromium(swept, tmp_path):
    folder, storage, records = swept
    out = make_report("seen", storage=storage, out=folder / "report", wandb="disabled")
    page_file = tmp_path / "index.html"  # a copy with the image probe; the report's own file is untouched
    page_file.write_text((out / "index.html").read_text(encoding="utf-8").replace("</body>", IMAGE_PROBE + "</body>"),
                         encoding="utf-8")  # fmt: skip
    page = Page(run_chromium(tmp_path, page_file.as_uri(), "--dump-dom", budget_ms=3000))
    # The FID table: rows η = 0.0 / 1.0, columns S = 2 / 3, each cell the stored FID at 2 decimals.
    fid = next(t for t, title in zip(page.tables, page.titles) if title.startswith("FID"))
    assert fid[0] == ["η / sampler", "S = 2", "S = 3"]
    shown = {row[0]: row[1:] for row in fid[1:]}
    assert set(shown) == {"η = 0.0", "η = 1.0"}
    for r in records:
        assert shown[f"η = {r.cell.eta:.1f}"][[2, 3].index(r.cell.steps)] == f"{r.scores.fid:.2f}"
    decoded = {img.get("alt", ""): int(img.get("data-natural-width", "0")) for img in page.images}
    chart = [w for alt, w in decoded.items() if alt.startswith("FID vs sampling steps")]
    assert chart and chart[0] > 100  # the FID-vs-S figure is drawn, not a broken image
    grids = [w for alt, w in decoded.items() if re.fullmatch(r"uniform η = [01]\.0 S = [23] block 0", alt)]
    assert len(grids) == 4 and min(grids) > 0
    # And the page renders (a screenshot the size asked for, not blank).
    shot = tmp_path / "report.png"
    run_chromium(tmp_path, page_file.as_uri(), f"--screenshot={shot}", "--window-size=1000,1400", budget_ms=3000)
    with Image.open(shot) as im:
        lo, hi = im.convert("L").getextrema()
        assert im.size == (1000, 1400) and hi - lo > 64


def test_dashboard_in_chromium(swept, tmp_path):
    folder, storage, records = swept
    with dashboard(folder, "seen", "--storage", storage, "--port", "0") as board:
        study = start(board)
        # The trial table (optuna-dashboard's "Smart Selection" page): one row per cell, numeric S, η and FID.
        table = None
        for _ in range(3):  # the app polls the API; give it a longer budget when the first dump is early
            page = Page(run_chromium(tmp_path, f"{study}/smartSelection", "--dump-dom", budget_ms=15000))
            table = next((t for t in page.tables if t and "Param steps" in map(_clean, t[0])), None)
            if table and len(table) > 4:
                break
        assert table, f"no trial table in the page; headings {page.headings}"
        head = [_clean(h) for h in table[0]]
        rows = [dict(zip(head, row)) for row in table[1:]]
        assert len(rows) == 4 and {"Number", "State", "Value", "Param eta", "Param steps"} <= set(head)
        by_number = {r.number: r for r in records}
        for row in rows:
            r = by_number[int(row["Number"])]
            assert row["State"] == "Complete"
            assert int(row["Param steps"]) == r.cell.steps and float(row["Param eta"]) == r.cell.eta
            assert float(row["Value"].replace(",", "")) == pytest.approx(r.scores.fid, rel=1e-3)
        # The trial list: the selected trial's sample grid is an image served from the artifact store.
        page = Page(run_chromium(tmp_path, f"{study}/trials", "--dump-dom", budget_ms=15000))
        grids = {Path(r.measured.grid).name: r for r in records}
        shown = [img for img in page.images if img.get("alt") in grids]
        assert shown, f"no sample grid image; images {page.images}"
        base = study.split("/dashboard/")[0]
        with urllib.request.urlopen(base + shown[0]["src"], timeout=30) as resp:
            data = resp.read()
        assert data == (folder / "artifacts" / grids[shown[0]["alt"]].measured.grid).read_bytes()
        shot = tmp_path / "dashboard.png"
        run_chromium(tmp_path, f"{study}/trials", f"--screenshot={shot}", "--window-size=1200,900", budget_ms=15000)
        with Image.open(shot) as im:
            lo, hi = im.convert("L").getextrema()
        assert im.size == (1200, 900) and hi - lo > 64
        assert board.stop() == 130
