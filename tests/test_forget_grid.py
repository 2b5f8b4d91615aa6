"""``ddimbench sweep KEY=VALUES name=s --forget``: a grid asked for by mistake is forgotten. The report no longer
expects its cells not run nor offers to run them, its queued cells are cancelled so that no worker of the sweep
runs them, its measured cells stay, a cell another grid has stays expected, and a later run of the grid brings it
back. Real tiny sweeps on SQLite through the command line (``ckpt``, ``cache``, ``work``), offline, CPU only."""

from __future__ import annotations

import json
import shlex
import sys
import types

import optuna
import pytest
from helpers.cli import run
from helpers.sweep import spec_of, url
from optuna.trial import TrialState

from bench.cli import main
from bench.report.multi import make_combined_report
from bench.store import study as store
from bench.store.cell import Cell
from bench.store.grids import forgotten_mark, grid_attr, save_spec, spec_grid, stored_grids
from bench.store.storage import open_storage

pytestmark = pytest.mark.timeout(300)  # real sweeps: one that never ends fails here, not at 600 s


def ddim(steps: int, eta: float) -> Cell:
    return Cell("ddim", "uniform", steps, eta, 0)


@pytest.fixture
def sweep(ckpt, cache, work, monkeypatch, capsys):
    """``sweep(grid, stop=k)``: ``ddimbench sweep ... GRID`` as typed (the store records the command), its cells
    taken in the grid's order; ``stop``: Ctrl-C in its k-th cell. Returns (exit code, stderr, the command)."""
    from bench.sweep import loop
    from bench.sweep.evaluate import Evaluator

    monkeypatch.setattr(loop, "random", types.SimpleNamespace(choice=lambda keys: keys[0]))
    measure = Evaluator.evaluate
    base = shlex.join(["ddimbench", "sweep", f"checkpoint={ckpt}", f"cache_dir={cache}", "name=s", "n=20", "batch=10",
                       "interpolation=false", "--storage", url(work), "--wandb", "disabled"])  # fmt: skip

    def go(grid: str, stop: int = 0, *flags: str) -> tuple[int, str, str]:
        calls = []

        def stopping(self, cell, display):
            calls.append(cell)
            if len(calls) == stop:
                raise KeyboardInterrupt
            return measure(self, cell, display)

        monkeypatch.setattr(Evaluator, "evaluate", stopping)
        command = f"{base} {grid}"
        argv = [*shlex.split(command), *flags]
        monkeypatch.setattr(sys, "argv", argv)
        code = main(argv[1:])
        return code, capsys.readouterr().err, command

    return go


def report(work, capsys) -> dict:
    """``ddimbench report s``: its manifest (the note on what is left: ``incomplete``, and every cell shown)."""
    code, _, err = run(["report", "s", "--storage", url(work), "--out", work / "rep", "--wandb", "disabled"], capsys)
    assert code == 0, err
    return json.loads((work / "rep" / "manifest.json").read_text(encoding="utf-8"))


def shown(manifest: dict) -> dict[tuple[int, float], str]:
    return {(c["params"]["steps"], c["params"]["eta"]): c["state"] for c in manifest["cells"]}


def trials(work) -> list:
    study = optuna.load_study(study_name="s", storage=open_storage(url(work)))
    return study.get_trials(deepcopy=False)


def spec_grid_of(work) -> dict:
    """The grid the last run asked for, as the store keeps it (``spec``)."""
    return optuna.load_study(study_name="s", storage=open_storage(url(work))).user_attrs["spec"]


def test_a_forgotten_grid_leaves_the_sweep_complete_with_its_measured_cells_until_a_run_brings_it_back(
    sweep, work, capsys
):
    """``steps=2 eta=0``, then ``steps=2,3,4 eta=0`` by mistake, stopped in (4, 0) after measuring (3, 0): forgotten,
    the sweep reports complete with no advice, (3, 0) still in its tables and (4, 0) nowhere. Run again, the grid
    is expected again and its command offered."""
    assert sweep("steps=2 eta=0")[0] == 0
    code, _, mistake = sweep("steps=2,3,4 eta=0", 2)
    assert code == 130
    before = report(work, capsys)
    assert before["incomplete"].startswith("sweep 's' is incomplete: 2 of 3 cells measured, 1 not run")
    assert before["incomplete"].endswith(f"rerun the same command to finish it: {mistake}")

    code, err, _ = sweep("steps=2,3,4 eta=0", 0, "--forget")
    digest = grid_attr(spec_grid_of(work))
    assert code == 0 and err.strip().splitlines()[-1] == (
        f"forgot {digest} of sweep 's' (3 cells): 0 queued cells cancelled, 2 measured cells kept; a run of the same "
        "grid brings it back"
    ), err
    after = report(work, capsys)
    assert after["incomplete"] is None
    assert shown(after) == {(2, 0.0): "COMPLETE", (3, 0.0): "COMPLETE"}  # the stopped (4, 0) is no cell shown
    readme = (work / "rep" / "README.md").read_text(encoding="utf-8")
    assert "incomplete" not in readme and "to finish it" not in readme  # the mistaken run's command: provenance only
    assert [t.state for t in trials(work)].count(TrialState.COMPLETE) == 2  # nothing measured is lost
    both = make_combined_report(["s"], storage=url(work), out=work / "both", wandb="disabled")
    assert json.loads((both / "manifest.json").read_text(encoding="utf-8"))["incomplete"] == {}

    code, err, again = sweep("steps=2,3,4 eta=0", 1)  # the same grid run again, stopped in (4, 0): remembered
    assert code == 130
    back = report(work, capsys)
    assert back["incomplete"].startswith("sweep 's' is incomplete: 2 of 3 cells measured, 1 not run")
    assert back["incomplete"].endswith(f"rerun the same command to finish it: {again}")


def test_queued_cells_of_a_forgotten_grid_are_cancelled_and_a_cell_another_grid_has_stays(sweep, work, capsys):
    """``steps=2 eta=0,1`` stopped in (2, 1), then ``steps=2,3 eta=0,1`` by mistake, stopped at once, whose workers
    died having queued (3, 0), (3, 1) and (2, 1). Forgotten: its two queued cells only it has are PRUNED, the queued
    (2, 1), which the first grid has too, stays queued and expected; the first grid run again measures (2, 1) and
    nothing of the forgotten grid."""
    assert sweep("steps=2 eta=0,1", 2)[0] == 130
    assert sweep("steps=2,3 eta=0,1", 1)[0] == 130  # stopped in (3, 0)
    study = optuna.load_study(study_name="s", storage=open_storage(url(work)))
    for cell in (ddim(3, 0.0), ddim(3, 1.0), ddim(2, 1.0)):  # older queued trials are popped first
        store.enqueue_cell(study, cell)
    queued = {t.number: t.user_attrs["cell"] for t in trials(work) if t.state == TrialState.WAITING}
    assert sorted(queued.values()) == sorted(c.key for c in (ddim(3, 0.0), ddim(3, 1.0), ddim(2, 1.0)))

    code, err, _ = sweep("steps=2,3 eta=0,1", 0, "--forget")
    assert code == 0 and "(4 cells): 2 queued cells cancelled, 1 measured cell kept" in err, err
    states = {n: trials(work)[n].state for n in queued}
    assert {queued[n]: s for n, s in states.items()} == {
        ddim(3, 0.0).key: TrialState.PRUNED,
        ddim(3, 1.0).key: TrialState.PRUNED,
        ddim(2, 1.0).key: TrialState.WAITING,
    }
    code, err, _ = sweep("steps=2,3 eta=0,1", 0, "--forget")  # again: nothing left to cancel, not an error
    assert code == 0 and "(4 cells, already forgotten): 0 queued cells cancelled, 1 measured cell kept" in err, err
    note = report(work, capsys)["incomplete"]
    assert note.startswith("sweep 's' is incomplete: 1 of 2 cells measured, 1 not run")  # (2, 1): the first grid's
    assert "steps=2 eta=1 " in note and "steps=3" not in note and "steps=2,3" not in note

    assert sweep("steps=2 eta=0,1")[0] == 0
    measured = [t.user_attrs["cell"] for t in trials(work) if t.state == TrialState.COMPLETE]
    assert sorted(measured) == sorted(c.key for c in (ddim(2, 0.0), ddim(2, 1.0)))  # nothing of steps=3
    assert {queued[n]: trials(work)[n].state for n in queued} == {
        ddim(3, 0.0).key: TrialState.PRUNED,
        ddim(3, 1.0).key: TrialState.PRUNED,
        ddim(2, 1.0).key: TrialState.COMPLETE,
    }  # the queued (2, 1) is the trial that measured it
    final = report(work, capsys)
    assert final["incomplete"] is None and shown(final) == {(2, 0.0): "COMPLETE", (2, 1.0): "COMPLETE"}


def test_forget_refuses_in_one_line_and_writes_nothing(ckpt, cache, work, capsys):
    """A grid no run asked for (how many grids the sweep keeps, and the fix), an unknown sweep or store, a search:
    one line, exit 2. ``--dry-run`` says what would be forgotten and writes nothing."""
    spec = spec_of(ckpt, cache, "steps=2", "eta=0", name="s")
    study = store.create_study("s", url(work), 0, {"mode": "grid", "checkpoint_sha256": "c0", "n": 1000, "T": spec.T},
                               {"name": "s", "command": "ddimbench sweep steps=2 eta=0 name=s"})  # fmt: skip
    save_spec(study, spec.to_dict())
    store.enqueue_cell(study, ddim(2, 0.0))
    common = [f"checkpoint={ckpt}", f"cache_dir={cache}", "--forget"]

    def refused(*argv: str) -> str:
        code, _, err = run(["sweep", *common, *argv], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        return err

    assert refused("name=s", "steps=3", "eta=0", "--storage", url(work)).strip() == (
        "error: no run of sweep 's' asked for this grid (1 cell); it keeps 1 grid: give --forget the KEY=VALUES (and "
        "--config) of the run to forget, as it was run"
    )
    assert "no sweep named 't'" in refused("name=t", "steps=2", "eta=0", "--storage", url(work))
    assert "does not exist" in refused("name=s", "steps=2", "eta=0", "--storage", f"sqlite:///{work / 'none.db'}")
    assert "a search keeps none" in refused("name=s", "steps=2..3", "eta=0..1", "--search", "pareto", "--storage",
                                            url(work))  # fmt: skip
    code, _, err = run(["sweep", *common, "name=s", "steps=2", "eta=0", "--storage", url(work), "--dry-run"], capsys)
    assert code == 0 and err.strip().endswith(
        "(1 cell): 1 queued cell to cancel, 0 measured cells kept; nothing written"
    ), err
    again = optuna.load_study(study_name="s", storage=open_storage(url(work)))
    assert again.user_attrs[grid_attr(spec.to_dict())]["steps"] == [2]  # no tombstone
    assert [t.state for t in again.get_trials()] == [TrialState.WAITING]


def test_a_store_that_kept_only_the_latest_spec_forgets_its_grid(ckpt, cache, work, capsys):
    """A store written before grids were kept (``spec`` alone): its grid is forgotten all the same; a trial of it
    left running is then no cell the report expects, a measured one stays."""
    spec = spec_of(ckpt, cache, "steps=2,3", "eta=0", name="s")
    protocol = {"mode": "grid", "checkpoint_sha256": "c0", "n": 20, "T": spec.T}
    meta = {"name": "s", "mode": "grid", "command": "ddimbench sweep steps=2,3 eta=0 name=s"}
    study = store.create_study("s", url(work), 0, protocol, meta)
    study.set_user_attr("spec", spec.to_dict())
    for cell, done in ((ddim(2, 0.0), True), (ddim(3, 0.0), False)):
        trial = study.ask()
        for key, value in {"cell": cell.key, **cell.fields(), "fid": 3.0}.items():
            trial.set_user_attr(key, value)
        if done:
            study.tell(trial, 3.0)
    assert report(work, capsys)["incomplete"].startswith("sweep 's' is incomplete: 1 of 2 cells measured, 1 not run")
    code, _, err = run(["sweep", f"checkpoint={ckpt}", f"cache_dir={cache}", "name=s", "steps=2,3", "eta=0",
                        "--storage", url(work), "--forget"], capsys)  # fmt: skip
    assert code == 0 and "(2 cells): 0 queued cells cancelled, 1 measured cell kept" in err, err
    after = report(work, capsys)
    assert after["incomplete"] is None and shown(after) == {(2, 0.0): "COMPLETE"}


def test_a_tombstone_is_no_grid_and_no_warning_even_malformed():
    """Forgotten grids, well-formed or edited (no grid, a grid of 10⁹ cells, not a mapping of axes), are left out
    without a warning; ``spec`` holding a forgotten grid is no grid either. An earlier release reads a tombstone as
    a search's grid (``spec_grid``: None), so it skips it silently too."""
    ok = {"spacing": ["uniform"], "sampler": ["ddim"], "steps": [10], "eta": [0.0], "seeds": [0], "T": 1000}
    other = {**ok, "steps": [20]}
    huge = {**ok, "steps": list(range(1, 1001)), "eta": [i / 1000 for i in range(1000)], "seeds": list(range(1000))}
    attrs = {"spec": ok, grid_attr(ok): forgotten_mark(ok), grid_attr(other): other, "grid:a": {"forgotten": 1},
             "grid:b": {"forgotten": "x", "grid": huge}, "grid:c": {"forgotten": "x", "grid": [1]}}  # fmt: skip
    ignored: list[str] = []
    grids = stored_grids(attrs, ignored)
    assert ignored == [] and [[c.key for c in cells] for cells in grids.runs] == [[ddim(20, 0.0).key]]
    assert grids.forgotten == {ddim(10, 0.0).key}
    assert spec_grid(forgotten_mark(ok)) is None
