"""A Pareto search shows its front: the terminal lists the front's cells with FID and cost at the end of
`ddimbench sweep --search pareto`, the report renders the search as a front table and figure on the cost
the search minimised (not an η × S grid), and the search's default spacing is `trailing`.

A real search on the tiny test checkpoint (3 trials of 20 samples), through the command line; offline, CPU.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers.cli import run
from helpers.sweep import as_record

from bench.report import front
from bench.report.tables import METRICS
from bench.report.write import write_report
from bench.store.record import CellRecord
from bench.store.study import load_results


def test_search_prints_its_front_and_reports_it(ckpt, cache, work, capsys) -> None:
    url = f"sqlite:///{work / 'sweeps.db'}"
    keys = ["steps=2..6", "eta=0..1", "n=20", "batch=10", "trials=3", "interpolation=false", "metrics=fid,kid",
            f"checkpoint={ckpt}", f"cache_dir={cache}", "name=p"]  # fmt: skip
    code, out, err = run(["sweep", "--search", "pareto", *keys, "--dry-run"], capsys)
    assert code == 0 and json.loads(out)["spacing"] == ["trailing"]  # starts at T − 1 for any S
    code, _, err = run(["sweep", "--search", "pareto", *keys, "--storage", url, "--wandb", "disabled"], capsys)
    assert code == 0, err
    records = load_results("p", url)[0]
    assert {r.cell.spacing for r in records} == {"trailing"}
    on = sorted((r for r in records if r.pareto), key=lambda r: (r.measured.nfe, r.scores.fid))
    assert on  # the store's front (Optuna's best trials on (FID, NFE))
    lines = err.splitlines()
    for r in records:  # each cell's line shows KID on the tables' scale, ×10³, named so
        assert any(f"KID ×10³ {r.scores.kid_mean * 1000:.4g};" in line for line in lines), (r, err)
    head = next(i for i, line in enumerate(lines) if line.startswith("Pareto front (FID vs NFE"))
    assert f"{len(on)} of {len(records)} measured trials" in lines[head]
    shown = lines[head + 1 : head + 1 + len(on)]
    for r, line in zip(on, shown, strict=True):  # one line per front cell, cost ascending
        assert f"NFE {r.measured.nfe}  FID {r.scores.fid:.2f}" in line and f"(trial #{r.number})" in line
        assert f"S = {r.cell.steps}, trailing" in line
    # The report: the front as a table (cost ascending) and a figure, no η × S grid.
    code, _, err = run(["report", "p", "--storage", url, "--wandb", "disabled"], capsys)
    assert code == 0, err
    folder = work / "reports" / "p"
    table = (folder / "table.md").read_text(encoding="utf-8")
    assert table.startswith("### Pareto front — FID vs NFE") and table.count("### ") == 1
    rows = [line for line in table.splitlines() if line.startswith("| #")]
    assert [int(re.match(r"\| #(\d+):", row)[1]) for row in rows] == [r.number for r in on]
    for r, row in zip(on, rows, strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1:4] == [str(r.measured.nfe), f"{r.scores.fid:.2f}", f"{r.scores.kid_mean * 1000:.2f}"]
    assert "| trial: setting | NFE ↓ | FID ↓ | KID ×10³ ↓ |" in table
    assert (folder / "pareto_front.png").is_file() and not (folder / "fid_vs_steps.png").exists()
    assert "## Pareto front" in (folder / "README.md").read_text(encoding="utf-8")


def _record(number: int, steps: int, fid: float | None, wall_s: float, **kw) -> CellRecord:
    return as_record({"number": number, "state": "COMPLETE", "sampler": "ddim", "eta": 0.25, "steps": steps,
                      "spacing": "trailing", "seed_block": 0, "nfe": steps, "fid": fid, "wall_s": wall_s, "n": 10,
                      "images_per_s": 10 / wall_s, **kw})  # fmt: skip


def test_front_on_the_objective_the_search_minimised(tmp_path: Path) -> None:
    # In NFE, #1 (S = 5) beats #2 (S = 8) on both; in seconds per image #2 is the fastest of all.
    records = [_record(0, 3, 30.0, 0.9), _record(1, 5, 10.0, 0.8), _record(2, 8, 12.0, 0.1),
               _record(3, 9, 40.0, 0.5), _record(4, 2, None, 0.1, state="FAIL")]  # fmt: skip
    assert [r.number for r in front.front(records, "nfe")] == [0, 1]
    assert [r.number for r in front.front(records, "time")] == [2, 1]
    meta = {"name": "t", "mode": "pareto", "objective": "time", "n": 10, "dataset": "digits"}
    write_report(records, meta, tmp_path / "out", metrics=("fid",))
    table = (tmp_path / "out/table.md").read_text(encoding="utf-8")
    assert table.startswith("### Pareto front — FID vs seconds per image")
    assert "| #2: η = 0.25, S = 8, trailing | 0.01 | 12.00 |" in table  # 0.1 s / 10 images
    assert "| #1: η = 0.25, S = 5, trailing | 0.08 | 10.00 |" in table
    lines = front.front_lines(records, "time")
    assert lines[0].startswith("Pareto front (FID vs seconds per image") and "2 of 4 measured trials" in lines[0]
    with pytest.raises(Exception, match="Pareto search has no η × S table"):
        write_report(records, meta, tmp_path / "cmp", compare_paper="cifar10")
    assert METRICS["kid"].header == "KID ×10³ ↓"
