"""bench.tracking.results: the sweep summary run's results table (from the typed record, with an image column)
and its native FID charts, one line per η; read back from the offline run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers.tracking import Warnings, fresh_fallback_state  # noqa: F401 (an autouse fixture)
from PIL import Image

from bench.report.write import write_report
from bench.store.cell import Cell
from bench.store.record import CellRecord, Measurement, Scores, table
from bench.tracking import results
from bench.tracking.sweep_runs import track_summary
from bench.tracking.wandb_run import read_offline_run


def _fid(eta: float, steps: int, block: int) -> float:
    return 100.0 / steps + 3.0 * eta + 0.5 * block


def _records(root: Path, schedules: tuple[str, ...] = ("uniform",)) -> list[CellRecord]:
    """A 2 η × 2 S grid with 2 seed blocks per cell, each with its grid PNG, plus a failed trial and a COMPLETE
    trial superseded by a later one of the same cell."""
    (root / "cells").mkdir(parents=True, exist_ok=True)
    out: list[CellRecord] = []
    for schedule in schedules:
        for eta in (0.0, 1.0):
            for steps in (10, 20):
                for block in (0, 1):
                    n = len(out)
                    rel = f"cells/{n}.png"
                    Image.fromarray(np.full((4, 4, 3), n, np.uint8)).save(root / rel)
                    scores = Scores(fid=_fid(eta, steps, block), isc_mean=2.0 + n, isc_std=0.1 * n,
                                    kid_mean=0.001 * n, kid_std=0.0001 * n)  # fmt: skip
                    wall = 0.1 * steps + block
                    m = Measurement(nfe=steps, n=50, seeds=f"{50 * block}-{50 * block + 49}", scores=scores,
                                    wall_s=wall, images_per_s=50 / wall, grid=rel)  # fmt: skip
                    out.append(CellRecord(n, "COMPLETE", Cell("ddim", schedule, steps, eta, block), m))
    first = out[0]
    stale = CellRecord(-1, "COMPLETE", first.cell, Measurement(nfe=10, scores=Scores(fid=999.0), grid="../x.png"))
    failed = CellRecord(len(out), "FAIL", Cell("ddim", schedules[0], 50, 0.0, 0), error="boom")
    return [stale, *out, failed]


def test_results_table_is_the_record_with_a_grid_column(tmp_path):
    records = _records(tmp_path)
    (tmp_path.parent / "x.png").write_bytes((tmp_path / "cells" / "0.png").read_bytes())  # outside the root
    columns, rows = results.results_table(records, tmp_path)
    names, plain = table(records)
    assert columns == [*names, results.GRID_COLUMN]
    assert [row[:-1] for row in rows] == plain  # every other column exactly as results.csv has it
    assert {"nfe", "seeds", "wall_s", "fid", "isc_mean", "isc_std", "kid_mean_x1e3", "kid_std_x1e3"} <= set(names)
    by_number = {row[columns.index("number")]: dict(zip(columns, row, strict=True)) for row in rows}
    r3 = by_number[3]  # η = 0, S = 20, seed block 1
    assert r3["isc_std"] == pytest.approx(0.3) and r3["kid_std_x1e3"] == pytest.approx(0.3)
    assert r3["nfe"] == 20 and r3["seeds"] == "50-99" and r3["wall_s"] == pytest.approx(3.0)
    assert r3[results.GRID_COLUMN] == (tmp_path / "cells" / "3.png").resolve()
    # A grid path the store names outside the sweep's folder is never read; a failed cell has none.
    assert by_number[-1][results.GRID_COLUMN] is None and by_number[8][results.GRID_COLUMN] is None


def test_series_table_one_line_per_eta(tmp_path):
    columns, rows = results.series_table(_records(tmp_path))
    got = [dict(zip(columns, row, strict=True)) for row in rows]
    assert [(r["series"], r["steps"]) for r in got] == [
        ("η = 0.0", 10), ("η = 0.0", 20), ("η = 1.0", 10), ("η = 1.0", 20)
    ]  # fmt: skip
    for r in got:
        fids = [_fid(r["eta"], r["steps"], b) for b in (0, 1)]
        assert r["fid"] == pytest.approx(np.mean(fids)) and r["fid_std"] == pytest.approx(np.std(fids, ddof=1))
        assert r["blocks"] == 2 and r["nfe"] == r["steps"] and r["wall_s"] == pytest.approx(0.1 * r["steps"] + 0.5)
    assert all(r["fid"] < 900 for r in got)  # the superseded trial (FID 999) is not averaged in
    # Several spacings: each series names its spacing, as the report's figures do.
    _, rows = results.series_table(_records(tmp_path, ("uniform", "quad")))
    assert list(dict.fromkeys(row[0] for row in rows)) == [
        "η = 0.0 (uniform)", "η = 1.0 (uniform)", "η = 0.0 (quad)", "η = 1.0 (quad)"
    ]  # fmt: skip


def _md_table(text: str, title: str) -> dict[tuple[str, int], str]:
    """{(row label, S): cell text without bold} of the table.md table ``title``."""
    block = text.split(f"### {title}\n\n", 1)[1].split("\n\n", 1)[0]
    head, _, *rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.splitlines()]
    steps = [int(h.removeprefix("S = ")) for h in head[1:]]
    return {(row[0], s): cell.replace("**", "") for row in rows for s, cell in zip(steps, row[1:], strict=True)}


def test_series_table_shows_the_report_tables_cells(tmp_path):
    """The W&B series and the report's table.md read the same trials under the same names: a seed block whose
    latest trial's FID came out NaN counts as failed in both, never with its earlier trial's FID; a cell with
    no finite FID left is "failed" in the table and no point of the chart."""
    records = _records(tmp_path)
    nan = Measurement(nfe=20, n=50, scores=Scores(fid=float("nan")), wall_s=9.0, images_per_s=5.0)
    again = [
        Cell("ddim", "uniform", 20, 1.0, 0),
        Cell("ddim", "uniform", 10, 1.0, 0),
        Cell("ddim", "uniform", 10, 1.0, 1),
    ]
    records += [CellRecord(100 + i, "COMPLETE", cell, nan) for i, cell in enumerate(again)]
    no_nfe = Measurement(n=50, scores=Scores(fid=5.0), wall_s=1.0, images_per_s=50.0)  # NFE not recorded
    records.append(CellRecord(200, "COMPLETE", Cell("ddim", "uniform", 30, 0.0, 0), no_nfe))
    write_report(records, {"name": "demo", "n": 50}, tmp_path / "report", root=tmp_path, metrics=("fid",))
    shown = _md_table((tmp_path / "report" / "table.md").read_text(encoding="utf-8"), "FID ↓ — uniform spacing")
    columns, rows = results.series_table(records)
    series = [dict(zip(columns, row, strict=True)) for row in rows]
    by_cell = {(r["eta"], r["steps"]): r for r in series}
    assert shown[("η = 1.0", 10)] == "failed" and (1.0, 10) not in by_cell
    assert shown[("η = 0.0", 50)] == "failed" and (0.0, 50) not in by_cell  # a FAIL trial
    one = by_cell[(1.0, 20)]  # block 0 is NaN now: block 1 alone, as in the table, for the FID and the time
    assert one["blocks"] == 1 and one["fid"] == pytest.approx(_fid(1.0, 20, 1)) and one["fid_std"] is None
    assert one["wall_s"] == pytest.approx(0.1 * 20 + 1) and one["nfe"] == 20
    assert by_cell[(0.0, 30)]["nfe"] is None and by_cell[(0.0, 30)]["fid"] == 5.0  # not S: none was recorded
    got = {(r["series"], r["steps"]): r for r in series}  # named as the table's rows
    assert set(got) == {key for key, text in shown.items() if text not in ("failed", "—")}
    assert shown[("η = 1.0", 20)] == f"{_fid(1.0, 20, 1):.2f} (1 block failed)"
    for key, r in got.items():
        assert shown[key].startswith(f"{r['fid']:.2f}" + (f" ± {r['fid_std']:.2f}" if r["fid_std"] else ""))


def test_summary_run_holds_the_table_and_charts(tmp_path):
    records = _records(tmp_path)
    spec = SimpleNamespace(name="demo", artifacts=str(tmp_path), search=None, to_dict=lambda: {"name": "demo"})
    warnings = Warnings()
    track_summary("offline", spec, records, SimpleNamespace(warn=warnings))
    assert not warnings
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    run = read_offline_run(run_dir)
    assert run["run"]["job_type"] == "sweep-summary" and run["run"]["group"] == "demo"
    assert run["run"]["name"] == "demo-summary" and run["summary"]["complete"] == 9 and run["summary"]["fail"] == 1

    def logged_table(key: str) -> dict:
        ref = run["summary"][key]
        assert ref["_type"] == "table-file"
        return json.loads((run_dir / "files" / ref["path"]).read_text(encoding="utf-8"))

    logged = logged_table(results.RESULTS_KEY)
    columns, rows = results.results_table(records, tmp_path)
    assert logged["columns"] == columns and len(logged["data"]) == len(records)
    grid = columns.index(results.GRID_COLUMN)
    # The run's copy of the table names its media by type; the images travel in the table's artifact.
    assert [row[grid] for row in logged["data"]] == ["Image" if row[grid] else None for row in rows]
    assert [row[:grid] for row in logged["data"]] == [row[:grid] for row in rows]
    series = logged_table(results.SERIES_KEY)
    assert series == {"columns": list(results.SERIES_COLUMNS), "data": results.series_table(records)[1]}
    # Two native line charts of that table, one line per η, each with its copy of the table.
    assert set(run["charts"]) == {c.key for c in results.CHARTS}
    for chart in results.CHARTS:
        panel = run["charts"][chart.key]["panel_config"]
        assert panel["panelDefId"] == "wandb/line/v0"
        assert panel["fieldSettings"] == {"x": chart.x, "y": "fid", "stroke": "series"}
        assert panel["stringSettings"]["title"] == f"demo: {chart.title}"
        assert chart.table_key in json.dumps(panel["userQuery"])
        assert logged_table(chart.table_key) == series


def test_a_search_summary_has_the_table_and_no_lines(tmp_path):
    """A Pareto search's trials take any η: no FID-per-η lines, the results table all the same."""
    spec = SimpleNamespace(name="s", artifacts=str(tmp_path), search="pareto", to_dict=lambda: {"name": "s"})
    warnings = Warnings()
    track_summary("offline", spec, _records(tmp_path), SimpleNamespace(warn=warnings))
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    run = read_offline_run(run_dir)
    assert not warnings and not run["charts"] and results.SERIES_KEY not in run["summary"]
    assert run["summary"][results.RESULTS_KEY]["nrows"] == 10
