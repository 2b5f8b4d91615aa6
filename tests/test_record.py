"""bench.store.record: a cell's result as one typed record and its columns (results.csv, W&B tables). No torch;
its storage in Optuna is tests/test_study.py's."""

from __future__ import annotations

import dataclasses

import pytest
from helpers.sweep import CELL, MEASURED

from bench.store.cell import Cell
from bench.store.record import CellRecord, Measurement, Scores, columns, table


def leaves(obj) -> dict:
    """Every leaf field of a record dataclass by name (nested dataclasses inlined)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out.update(leaves(v) if dataclasses.is_dataclass(v) else {f.name: v})
    return out


def test_columns_hold_every_field_of_the_record_once_kid_shown_x1e3():
    record = CellRecord(7, "COMPLETE", CELL, MEASURED, error="late metric", pareto=True)
    cols = columns(record)
    # versions: stored, not shown; interrupted: a column only where a trial was
    expected = {k: v for k, v in leaves(record).items() if k not in ("versions", "interrupted")}
    for k in ("kid_mean", "kid_std"):
        expected[f"{k}_x1e3"] = expected.pop(k) * 1000.0
    assert cols == expected
    # The trial and its cell, the measured values, error, images, then the rest alphabetically.
    head = ["number", "state", "spacing", "sampler", "eta", "steps", "seed_block", "nfe", "n", "seeds", "fid"]
    assert list(cols)[: len(head)] == head
    rest = list(cols)[list(cols).index("strip") + 1 :]
    assert rest == sorted({f.name for f in dataclasses.fields(MEASURED.protocol)} | {"pareto"})


def test_an_unmeasured_record_has_every_column_empty_and_no_pareto_column_outside_searches():
    failed = CellRecord(3, "FAIL", Cell("sigma_hat", "quad", 20, None, 0), None, error="boom")
    assert failed.measured == Measurement() and failed.scores == Scores()
    names, rows = table([failed, CellRecord(4, "COMPLETE", CELL, MEASURED)])
    assert "pareto" not in names and names == list(columns(failed))
    assert rows[0][names.index("fid")] is None and rows[0][names.index("error")] == "boom"
    assert rows[1][names.index("kid_mean_x1e3")] == pytest.approx(12.3)
    names, _ = table([dataclasses.replace(failed, pareto=False)])
    assert names[-1] == "ref_sha256" and "pareto" in names


def test_an_interrupted_trial_is_not_failed_and_says_so_in_its_own_column():
    """Ctrl-C / SIGTERM stops a cell without its fault: not ``failed`` (the tables show it as not run), and the
    CSV of a sweep with such a trial has an ``interrupted`` column; a sweep without one has none."""
    cell = Cell("ddim", "uniform", 10, 0.0, 0)
    stopped = CellRecord(1, "FAIL", cell, None, error="interrupted (Ctrl-C or SIGTERM)", interrupted=True)
    boom = CellRecord(2, "FAIL", cell, None, error="boom")
    assert not stopped.failed and boom.failed and not CellRecord(3, "COMPLETE", CELL, MEASURED).failed
    names, rows = table([boom, stopped])
    assert [row[names.index("interrupted")] for row in rows] == [None, True]
    assert "interrupted" not in table([boom])[0]


def test_scores_split_and_shown():
    scores, rest = Scores.split({"fid": 2.0, "kid_mean": 0.5, "n": 20, "extractor": "classifier"})
    assert scores == Scores(fid=2.0, kid_mean=0.5) and rest == {"n": 20, "extractor": "classifier"}
    assert scores.shown() == {"fid": 2.0, "isc_mean": None, "isc_std": None, "kid_mean_x1e3": 500.0,
                              "kid_std_x1e3": None}  # fmt: skip
    assert Scores.scale("kid_mean") == 1000.0 and Scores.scale("fid") == 1.0


@pytest.mark.parametrize(
    ("cell", "row", "label"),
    [
        (Cell("ddim", "uniform", 20, 0.5, 0), ("ddim", 0.5), "uniform η = 0.5 S = 20 block 0"),
        (Cell("ddim", "quad", 10, 0.0, 2), ("ddim", 0.0), "quad η = 0.0 S = 10 block 2"),
        (Cell("sigma_hat", "quad", 10, None, 1), ("sigma_hat", None), "quad σ̂ S = 10 block 1"),
        (Cell("ddpm", "uniform", 1000, None, 0), ("ddpm", None), "uniform ddpm S = 1000 block 0"),
    ],
)
def test_a_cell_names_its_row_as_the_tables_do(cell, row, label):
    """A grid cell's row is its Table 1 row (``row_key``), and its label (console, W&B captions, the report's
    grid captions) names that row as the tables do (``row_label``)."""
    assert cell.row == row and cell.label == label


def test_interrupted_trials_are_listed_in_trial_order():
    from bench.report.write import interrupted_lines

    cells = {}
    for number in (10, 2, 33):
        cell = Cell("ddim", "uniform", number, 0.0, 0)
        cells[(number,)] = {0: CellRecord(number, "FAIL", cell, None, error="interrupted", interrupted=True)}
    boom = CellRecord(5, "FAIL", Cell("ddim", "uniform", 5, 0.0, 0), None, error="boom")
    cells[(5,)] = {0: boom}  # failed on its own: not listed
    lines = interrupted_lines(cells)
    assert [line.split()[1] for line in lines] == ["#2", "#10", "#33"]  # by number, not as text (#10 < #2)
