"""bench.store.grids: a grid read back from a sweep's store (untrusted input) is one ``ddimbench sweep`` could have
run, its values checked as the sweep's keys check them (``bench.store.axes``) and its cells counted before any is
built. Any other stored grid is ignored with one warning line naming its attribute: never a traceback, never a
report that builds 10⁹ cells. The latest run's grid is paired with that run's own command (its run record names
its grid), whoever wrote ``spec`` last."""

from __future__ import annotations

import dataclasses
import time
import types

import optuna
import pytest
from helpers.cli import run
from helpers.sweep import CELL, MEASURED
from optuna.trial import TrialState

from bench.store import grids as stored
from bench.store import study as store
from bench.store.axes import AXES
from bench.store.cell import MAX_GRID_CELLS, grid
from bench.store.grids import spec_grid, stored_grids
from bench.sweep.overrides import KEYS, parse_value
from ddim.errors import DDIMError

pytestmark = pytest.mark.timeout(120)  # a grid built before it is counted would hang here, not for minutes
OK = {"spacing": ["uniform"], "sampler": ["ddim"], "steps": [10, 20], "eta": [0.5, 1.0], "seeds": [1], "T": 1000}
THOUSAND = {**OK, "steps": list(range(1, 1001)), "eta": [i / 1000 for i in range(1000)], "seeds": list(range(1000))}


@pytest.mark.parametrize(
    "change, why, typed",
    [
        ({"steps": [0]}, "steps: 0 is below 1", "steps=0"),
        ({"steps": [10.5]}, "steps: 10.5 is not an integer", "steps=10.5"),
        ({"steps": [True]}, "steps: True is not an integer", None),
        ({"steps": [1001]}, "steps=1001 exceeds T = 1000", None),  # the checkpoint's T: bench.sweep.resolve
        ({"eta": [-0.5]}, "eta: -0.5 is below 0", "eta=-0.5"),
        ({"eta": [float("nan")]}, "eta: nan is not a finite number", "eta=nan"),
        ({"eta": [float("inf")]}, "eta: inf is not a finite number", "eta=inf"),
        ({"eta": ["0.5"]}, "eta: '0.5' is not a finite number", None),
        ({"seeds": [-1]}, "seeds: -1 is below 0", "seeds=-1"),
        ({"sampler": ["euler"]}, "sampler: 'euler' is none of ddim, sigma_hat", "sampler=euler"),
        ({"spacing": ["cosine"]}, "spacing: 'cosine' is none of uniform, quad", "spacing=cosine"),
        ({"steps": [10, 10.0]}, "steps=[10, 10.0] repeats a value", "steps=10,10"),
        ({"seeds": []}, "seeds=[] is not a list of values", "seeds="),
        ({"eta": 0.5}, "eta=0.5 is not a list of values", None),
        ({"steps": [10**400], "T": 10**401}, "T=1000", None),  # an int beyond a float's range: no overflow
        ({"steps": [10**400]}, "steps: 1000", None),  # the command line: above its checkpoint's T
        ({"T": 0}, "T=0 is not an integer in 1..100000", None),
        ({"T": 100_001}, "T=100001 is not an integer in 1..100000", None),  # a checkpoint's MAX_T
        ({"T": "1000"}, "T='1000' is not an integer in 1..100000", None),
        ({"eta": [0.1234567, 0.1234568]}, "name the same cell", None),
    ],
)
def test_a_stored_grid_with_a_value_the_sweep_refuses_is_none(change, why, typed):
    """Each value the sweep's key refuses on the command line is refused in a stored grid, in one line."""
    assert spec_grid(OK) == grid(["uniform"], ["ddim"], [10, 20], [0.5, 1.0], [1], 1000)
    with pytest.raises(DDIMError, match="^[^\n]+$") as err:
        spec_grid({**OK, **change})
    assert why in str(err.value)
    if typed is not None:  # the same value typed as the sweep's key
        with pytest.raises(DDIMError):
            parse_value(*typed.split("=", 1))


def test_the_sweep_keys_take_their_bounds_and_names_from_the_axes():
    for name, axis in AXES.items():
        key = KEYS[name]
        assert key.is_list and key.minimum == axis.minimum
        assert (tuple(key.choices()) if key.choices else ()) == axis.choices


def test_a_grid_of_a_billion_cells_is_refused_before_it_is_built():
    """1000 values each of S, η and seed blocks (a 17 KB attribute): refused at once, counted, not made; ``grid``
    itself refuses more than ``MAX_GRID_CELLS`` cells (``ddimbench sweep`` too: it builds its grid through it)."""
    start = time.monotonic()
    with pytest.raises(DDIMError, match=f"its 1000000000 cells are more than the {MAX_GRID_CELLS} a grid may have$"):
        spec_grid(THOUSAND)
    with pytest.raises(DDIMError, match=f"the grid has 1000000000 cells, more than the {MAX_GRID_CELLS}"):
        grid(THOUSAND["spacing"], THOUSAND["sampler"], THOUSAND["steps"], THOUSAND["eta"], THOUSAND["seeds"], 1000)
    assert time.monotonic() - start < 5


def test_a_sweeps_grids_are_read_up_to_the_cap_in_all(monkeypatch):
    """Many grids each under the cap (one attribute each) are read only up to ``MAX_GRID_CELLS`` cells in all: the
    next is ignored before it is built. The latest run's ``spec`` and its own ``grid:`` attribute count once."""
    monkeypatch.setattr(stored, "MAX_GRID_CELLS", 6)
    four, three = {**OK, "seeds": [0]}, {**OK, "steps": [30], "eta": [0.0, 0.5, 1.0], "seeds": [0]}
    attrs = {"spec": four, f"grid:{stored.grid_digest(four)}": four, "grid:b": three}
    ignored: list[str] = []
    grids = stored_grids(attrs, ignored)
    assert len(grids.cells) == len(grids.latest) == 4 and len(grids.runs) == 1
    assert ignored == ["grid:b (its 3 cells are more than the 2 left of the 6 a sweep's grids may have)"]


def test_a_report_ignores_each_stored_grid_no_sweep_could_have_run_in_one_warning_line(tmp_path, capsys):
    """A real store: a measured cell of the latest run's grid, a 17 KB attribute of 10⁹ cells and one with S = 0.
    The report is written in seconds from the valid grid, and one warning line names the two it ignored."""
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    protocol = {"mode": "grid", "checkpoint_sha256": "c0", "n": 500, "T": 1000}
    study = store.create_study("s", url, 0, protocol, {"name": "s", "n": 500, "command": "ddimbench sweep name=s"})
    stored.save_spec(study, {**OK, "steps": [10], "eta": [0.5], "search": None})
    study.set_user_attr("grid:big", THOUSAND)
    study.set_user_attr("grid:zero", {**OK, "steps": [0]})
    trial = study.ask()
    for key, value in {"cell": CELL.key, **CELL.fields()}.items():
        trial.set_user_attr(key, value)
    store.save_result(trial, dataclasses.replace(MEASURED, grid=None, strip=None))
    study.tell(trial, 1.5, state=TrialState.COMPLETE)
    assert len(optuna.load_study(study_name="s", storage=url).user_attrs["grid:big"]["eta"]) == 1000

    start = time.monotonic()
    code, _, err = run(["report", "s", "--storage", url, "--out", tmp_path / "rep", "--wandb", "disabled"], capsys)
    assert code == 0 and time.monotonic() - start < 30, err
    (line,) = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert line.startswith("warning: 2 stored grid(s) of 's' are none `ddimbench sweep` could have run (edited "
                           "store?) and are left out: grid:big (its 1000000000 cells are more than")  # fmt: skip
    assert line.endswith("grid:zero (steps: 0 is below 1)")
    assert "incomplete" not in (tmp_path / "rep" / "README.md").read_text(encoding="utf-8")  # its one cell measured


# ------------------------------------------------------------------------------- each run's command, its own grid
NARROW, OTHER = {**OK, "steps": [10], "eta": [0.0], "search": None}, {**OK, "steps": [20], "eta": [0.0], "search": None}
FIRST, SECOND = "ddimbench sweep steps=10 eta=0 name=s", "ddimbench sweep steps=20 eta=0 name=s"


def two_runs(tmp_path, second_grid: str | None, saved: tuple[dict, ...], measured: dict | None) -> str:
    """A store of two runs: the first (``FIRST``, the study's ``meta``), then the second (``SECOND``, its run record
    naming ``second_grid``), the grids ``saved`` in that order (the last is ``spec``), the cell of ``measured`` (if
    any) measured. Returns the report's note on what is left."""
    from bench.report.write import incomplete

    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    protocol = {"mode": "grid", "checkpoint_sha256": "c0", "n": 500, "T": 1000}
    study = store.create_study("s", url, 0, protocol, {"name": "s", "n": 500, "command": FIRST})
    store.create_study("s", url, 0, protocol, {"name": "s", "n": 500, "command": SECOND}, second_grid)
    for spec in saved:
        stored.save_spec(study, spec)
    for cell in spec_grid(measured) if measured else ():
        trial = study.ask()
        for key, value in {"cell": cell.key, **cell.fields(), "fid": 2.0}.items():
            trial.set_user_attr(key, value)
        study.tell(trial, 2.0)
    grids: list = []
    records, meta, _ = store.load_results("s", url, grids)
    assert meta["last_run"]["command"] == SECOND and "grid" not in meta["last_run"]  # the provenance as before
    return str(incomplete(records, meta, grids[0]))


def test_two_runs_started_at_once_pair_the_newest_runs_command_with_its_own_grid(tmp_path):
    """The second run started last (its record is the newest) but the first saved its grid last (``spec``): the
    latest grid is still the second run's, so the first's cell left is not said to be finished by rerunning the
    second's command."""
    note = two_runs(tmp_path, stored.grid_digest(OTHER), (OTHER, NARROW), measured=OTHER)
    assert note.endswith("the latest run's command does not cover them all (an earlier run asked for other cells); "
                         "to finish it, run this command (measured cells are skipped): ddimbench sweep name=s "
                         "steps=10 eta=0 spacing=uniform sampler=ddim seeds=1")  # fmt: skip


def test_a_run_that_stored_no_grid_is_passed_for_the_one_before(tmp_path):
    """The second run stopped between recording itself and saving its grid: it asked for nothing that is stored, and
    the first run's command finishes the first run's grid."""
    note = two_runs(tmp_path, stored.grid_digest(OTHER), (NARROW,), measured=None)
    assert note.endswith(f"rerun the same command to finish it: {FIRST}")


def test_a_store_whose_run_records_name_no_grid_pairs_spec_with_the_last_runs_command(tmp_path):
    """Run records of an earlier release name no grid: ``spec`` is the latest run's grid and the newest record's
    command its command, as before."""
    note = two_runs(tmp_path, None, (OTHER, NARROW), measured=OTHER)
    assert note.endswith(f"rerun the same command to finish it: {SECOND}")


def test_a_runs_grid_is_saved_before_its_spec():
    """A run stopped between the two writes leaves its grid without ``spec``, never ``spec`` without its grid: the
    report would pass that run (its grid is not stored) and take an earlier run's ``spec`` as its grid."""
    written: list[str] = []
    stored.save_spec(types.SimpleNamespace(set_user_attr=lambda key, _: written.append(key)), NARROW)
    assert written == [f"grid:{stored.grid_digest(NARROW)}", "spec"]
