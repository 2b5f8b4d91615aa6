"""bench.report.rerun: the command(s) an incomplete sweep's report offers finish every cell it shows as not run,
also when an earlier run of the same name asked for other cells than the latest run's command does.

Pure checks of the grids offered, the same commands parsed by ``ddimbench sweep --dry-run``, and one real (tiny)
sweep stopped by Ctrl-C, resumed with a narrower grid, then finished by following its report. Offline, CPU only.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shlex
import sys
import types

import pytest
from helpers.cli import run
from helpers.sweep import as_record, url

from bench.cli import main
from bench.report.multi import write_combined_report
from bench.report.rerun import box_of, cover, finish, with_grid
from bench.store.cell import Cell, grid
from bench.store.grids import Grids
from bench.store.table_cells import FAILED, MEASURED, NOT_RUN

pytestmark = pytest.mark.timeout(300)  # real sweeps: one that never ends fails here, not at 600 s
LATEST = "ddimbench sweep steps=10 eta=0 name=s"


def ddim(steps: int, eta: float, spacing: str = "uniform", block: int = 0) -> Cell:
    return Cell("ddim", spacing, steps, eta, block)


def grid_of(steps, etas, spacings=("uniform",), samplers=("ddim",), seeds=(0,), T=1000) -> list[Cell]:
    return grid(list(spacings), list(samplers), list(steps), list(etas), list(seeds), T)


def holds(boxes, todo, allowed) -> None:
    """Every cell of ``todo`` is in some box, and no box holds a cell outside ``allowed``."""
    keys = set().union(*(b.keys() for b in boxes))
    assert {c.key for c in todo} <= keys and all(b.keys() <= allowed for b in boxes), boxes


# ----------------------------------------------------------------------------------------- the advice
def test_cells_not_run_in_the_latest_grid_are_finished_by_the_same_command():
    latest = grid_of((10, 20), (0.0,))
    states = [(latest[0], MEASURED), (latest[1], NOT_RUN), (ddim(10, 1.0), FAILED)]  # a failure is retried anyway
    assert finish(states, latest, LATEST) == f"rerun the same command to finish it: {LATEST}"
    assert finish(states, latest, None) == "rerun the same `ddimbench sweep` command"


@pytest.mark.parametrize(
    "storage, note",
    [("postgresql://me:***@db.lab/sweeps", True), ("postgresql://db.lab/sweeps?user=me&password=***", True),
     ("postgresql://me@db.lab/sweeps", False), ("sqlite:///runs/***.db", False)],
)  # fmt: skip
def test_a_stored_command_whose_password_was_masked_says_to_write_yours(storage, note):
    """The store keeps commands with their passwords masked: copied as offered, the password would be the mask."""
    latest = grid_of((10, 20), (0.0,))
    states = [(latest[0], MEASURED), (latest[1], NOT_RUN)]
    earlier = [*states, (ddim(50, 0.0), NOT_RUN)]  # a cell of an earlier run: the grid-replacing branch too
    for cells in (states, earlier):
        advice = finish(cells, latest, f"{LATEST} --storage {storage}")
        assert (storage in advice) and advice.endswith(
            " (its --storage password reads ***: write yours in its place)"
        ) == note


def test_an_earlier_runs_cells_not_run_get_one_command_when_they_make_one_grid_with_measured_ones():
    """``steps=10,20,50 eta=0,1`` stopped after (10, 0), then ``steps=10 eta=0``: the five cells left and the
    measured one are the earlier grid, so one command, the latest one with that grid, finishes the sweep."""
    earlier = grid_of((10, 20, 50), (0.0, 1.0))
    states = [(c, MEASURED if (c.steps, c.eta) == (10, 0.0) else NOT_RUN) for c in earlier]
    note = finish(states, grid_of((10,), (0.0,)), LATEST)
    assert note == ("the latest run's command does not cover them all (an earlier run asked for other cells); to "
                    "finish it, run this command (measured cells are skipped): ddimbench sweep name=s steps=10,20,50 "
                    "eta=0,1 spacing=uniform sampler=ddim seeds=0")  # fmt: skip
    # Without a stored command (or with one that is no shell line): the grid keys to give the sweep's own command.
    for command in (None, "ddimbench sweep 'unbalanced"):
        assert finish(states, grid_of((10,), (0.0,)), command).endswith(
            "rerun the sweep's `ddimbench sweep` command with: steps=10,20,50 eta=0,1 spacing=uniform sampler=ddim "
            "seeds=0"
        )


def test_cells_that_make_no_one_grid_get_few_commands_that_add_no_cell():
    """(50, η = 1) was never asked for: one grid over every S and η would add it, so two grids, one per η."""
    cells = [c for c in grid_of((10, 20, 50), (0.0, 1.0)) if (c.steps, c.eta) != (50, 1.0)]
    states = [(c, MEASURED if (c.steps, c.eta) == (10, 0.0) else NOT_RUN) for c in cells]
    note = finish(states, grid_of((10,), (0.0,)), LATEST)
    assert note.endswith("run these 2 commands (measured cells are skipped): ddimbench sweep name=s steps=10,20 eta=1 "
                         "spacing=uniform sampler=ddim seeds=0; ddimbench sweep name=s steps=20,50 eta=0 "
                         "spacing=uniform sampler=ddim seeds=0")  # fmt: skip
    assert finish(states, grid_of((10,), (0.0,)), None).endswith(
        "command 2 times, once with each of: steps=10,20 eta=1 spacing=uniform sampler=ddim seeds=0; steps=20,50 "
        "eta=0 spacing=uniform sampler=ddim seeds=0"
    )
    # Over two seed blocks still two grids (one per η), not two per block.
    blocks = [(dataclasses.replace(c, seed_block=b), s) for c, s in states for b in (0, 1)]
    assert [b.tokens() for b in cover([c for c, s in blocks if s == NOT_RUN], {c.key for c, _ in blocks})] == [
        ["steps=10,20", "eta=1", "spacing=uniform", "sampler=ddim", "seeds=0,1"],
        ["steps=20,50", "eta=0", "spacing=uniform", "sampler=ddim", "seeds=0,1"],
    ]


def test_the_runs_own_grids_are_offered_where_they_take_fewer_commands_than_splitting():
    """A cross of five cells left by two earlier runs (``steps=20 eta=0,0.5,1`` and ``steps=10,20,50 eta=0.5``)
    after a latest run of ``steps=10 eta=0``: one axis at a time splits it into three grids; the two runs' own grids
    hold it in two, and are what is offered. A run's grid that would add a cell (the cross's corners) is cut to its
    cells not run, or left out."""
    by_steps, by_eta, latest = grid_of((20,), (0.0, 0.5, 1.0)), grid_of((10, 20, 50), (0.5,)), grid_of((10,), (0.0,))
    cross = list({c.key: c for c in by_steps + by_eta}.values())
    states = [(c, NOT_RUN) for c in cross] + [(latest[0], MEASURED)]
    assert len(cover(cross, {c.key for c, _ in states})) == 3  # the splitting alone
    note = finish(states, latest, LATEST, [latest, by_steps, by_eta])
    assert note.endswith("run these 2 commands (measured cells are skipped): ddimbench sweep name=s steps=20 "
                         "eta=0,0.5,1 spacing=uniform sampler=ddim seeds=0; ddimbench sweep name=s steps=10,20,50 "
                         "eta=0.5 spacing=uniform sampler=ddim seeds=0")  # fmt: skip
    # The run of every S and η would add the four corners: cut to its cells not run, it is the cross's box again.
    assert len(cover(cross, {c.key for c, _ in states}, [grid_of((10, 20, 50), (0.0, 0.5, 1.0))])) == 3
    # A run's grid whose cells not run fit one grid is taken, and the cells it leaves are split as before.
    part = [c for c in cross if c.steps != 50]
    assert [b.tokens()[:2] for b in cover(part, {c.key for c in cross}, [grid_of((10, 20), (0.5,))])] == [
        ["steps=10,20", "eta=0.5"], ["steps=20", "eta=0,1"]]  # fmt: skip


def test_a_store_without_the_latest_grid_is_not_said_to_have_had_other_runs():
    states = [(ddim(10, 0.0), NOT_RUN)]
    assert finish(states, [], LATEST) == (
        "to finish it, run this command (measured cells are skipped): ddimbench sweep name=s steps=10 eta=0 "
        "spacing=uniform sampler=ddim seeds=0"
    )


def test_the_grid_keys_replace_the_commands_own_and_everything_else_is_kept():
    box = box_of([ddim(20, 0.5, "quad", 1)])
    command = ("ddimbench sweep --config sweeps/quick.yaml schedule=uniform seeds=0,1 steps=10 ' eta=0' n=20 "
               "--storage 'sqlite:///my store.db?timeout=30' --storage=x=1 name=s")  # fmt: skip
    assert with_grid(command, box) == (
        "ddimbench sweep --config sweeps/quick.yaml n=20 --storage 'sqlite:///my store.db?timeout=30' --storage=x=1 "
        "name=s steps=20 eta=0.5 spacing=quad sampler=ddim seeds=1"
    )
    assert with_grid("ddimbench sweep 'unbalanced", box) is None  # an edited store: the grid keys alone are given


def test_samplers_without_eta_ddpm_and_exact_etas_are_written_as_the_sweep_takes_them():
    sigma = box_of([Cell("sigma_hat", "uniform", 10, None, 0), Cell("plms", "uniform", 20, None, 0)])
    assert sigma.tokens() == ["steps=10,20", "spacing=uniform", "sampler=sigma_hat,plms", "seeds=0"]  # no eta
    ddpm = box_of([Cell("ddpm", "quad", 1000, None, 0)])
    assert ddpm.tokens() == ["steps=1000", "spacing=quad", "sampler=ddpm", "seeds=0"] and ddpm.keys() == {
        Cell("ddpm", "quad", 1000, None, 0).key
    }
    both = box_of([Cell("ddpm", "quad", 100, None, 0), ddim(10, 1e-5), ddim(10, 0.1234567, "linspace")])
    assert both.tokens() == ["steps=10", "eta=1e-05,0.1234567", "spacing=quad,uniform,linspace", "sampler=ddim,ddpm",
                             "seeds=0"]  # ddpm's spacing first: the grid puts ddpm under the first  # fmt: skip


def test_the_grids_cover_every_cell_and_add_none_whatever_is_left():
    """Every subset of a grid with two spacings, three samplers (ddpm under one spacing), two S, two η and two seed
    blocks left not run (the rest measured, or never asked for), and ddpm left under both spacings: covered."""
    full = grid_of((10, 20), (0.0, 1.0), ("uniform", "quad"), ("ddim", "sigma_hat", "ddpm"), (0, 1), T=100)
    pick = random.Random(0)
    for _ in range(200):  # each cell not run, measured or never asked for
        mask = [pick.choice((0, 0, 1, 2)) for _ in full]
        todo = [c for c, m in zip(full, mask) if m == 0]
        allowed = {c.key for c, m in zip(full, mask) if m < 2}
        holds(cover(todo, allowed), todo, allowed)
    two = [Cell("ddpm", "uniform", 100, None, 0), Cell("ddpm", "quad", 100, None, 0)]  # two runs' first spacings
    assert len(cover(two, {c.key for c in two})) == 2
    todo = [c for c in full if not (c.sampler == "ddim" and c.eta == 1.0)]  # a grid of its own: one
    assert cover(todo, {c.key for c in todo}) == [box_of(todo)]


def test_a_cell_no_grid_holds_gets_its_nearest_grid_not_an_error():
    """σ̂ with an η (an edited store; the store's reader leaves such trials out) fits no grid and no split makes it
    smaller: it gets its own ``box_of``, alone or beside cells that do fit."""
    odd, fine = Cell("sigma_hat", "uniform", 10, 0.5, 0), ddim(20, 0.0)
    assert cover([odd], {odd.key}) == [box_of([odd])]
    assert cover([odd, fine], {odd.key, fine.key}) == [box_of([fine]), box_of([odd])]
    assert finish([(odd, NOT_RUN)], [], LATEST).startswith("to finish it, run this command")
    # A diagonal whose one grid would have 399² cells, beyond MAX_GRID_CELLS: counted, never built, split instead.
    diagonal = [ddim(s, 0.0, block=s) for s in range(1, 400)]
    assert len(cover(diagonal, {c.key for c in diagonal})) == 399


@pytest.mark.parametrize(
    "sampler, steps, eta, state",
    [("sigma_hat", 10, 0.5, "RUNNING"), ("ddim", 10, None, "RUNNING"), ("ddim", 10, -1.0, "RUNNING"),
     ("plms", 10, 0.0, "RUNNING"), ("ddim", 10**400, 0.0, "COMPLETE")],
    ids=["eta-on-sigma_hat", "ddim-without-eta", "eta-below-0", "eta-on-plms", "S-beyond-MAX_T"],
)  # fmt: skip
def test_a_trial_whose_cell_no_grid_has_is_left_out_of_the_report_with_one_warning(tmp_path, sampler, steps, eta,
                                                                                   state):  # fmt: skip
    """A real store, edited: beside a measured cell, a trial whose params no grid makes (η on a sampler that takes
    none, a ddim cell without η, η below 0, S beyond any checkpoint's T), still running or measured. ``ddimbench
    report`` (the module, as a shell runs it) writes the report without it and says so in one warning line: no
    traceback (no advice for a cell no grid holds, no chart at S = 10⁴⁰⁰), exit code 0."""
    import os
    import subprocess

    from helpers import ROOT

    from bench.store import study as store

    storage = f"sqlite:///{tmp_path / 'sweeps.db'}"
    study = store.create_study("s", storage, 0, {"mode": "grid", "checkpoint_sha256": "c0", "n": 20, "T": 1000},
                               {"name": "s", "n": 20, "mode": "grid", "command": LATEST})  # fmt: skip
    for cell, done in ((ddim(10, 0.0), "COMPLETE"), (Cell(sampler, "uniform", steps, eta, 0), state)):
        trial = study.ask()
        for key, value in {"cell": cell.key, **cell.fields(), "fid": 3.0, "images_per_s": 2.0}.items():
            trial.set_user_attr(key, value)
        if done == "COMPLETE":
            study.tell(trial, 3.0)
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "report", "s", "--storage", storage, "--out",
                           str(tmp_path / "rep"), "--wandb", "disabled"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("report written to"), proc.stderr
    assert lines[0] == ("warning: 1 trial(s) of 's' hold fields of the wrong type or no grid's cell (edited store?) "
                        "and are left out: #1")  # fmt: skip
    manifest = json.loads((tmp_path / "rep" / "manifest.json").read_text(encoding="utf-8"))
    assert [c["number"] for c in manifest["cells"]] == [0] and manifest["incomplete"] is None


# ------------------------------------------------------------------------------ the command as the CLI reads it
def test_every_offered_command_is_one_ddimbench_sweep_accepts_for_the_cells_not_run(ckpt, cache, work, capsys):
    """The commands of a remainder that is no one grid (the quad cells and ddpm, which runs all T steps, under
    uniform; uniform σ̂ never asked for), each run through ``ddimbench sweep --dry-run``: the grids the CLI resolves
    hold every cell not run and only cells the sweep has."""
    base = shlex.join(["ddimbench", "sweep", f"checkpoint={ckpt}", f"cache_dir={cache}", "name=s", "n=20",
                       "steps=2", "eta=0", "--storage", url(work), "--wandb", "disabled"])  # fmt: skip
    T = json.loads(run(["sweep", *shlex.split(base)[2:], "--dry-run"], capsys)[1])["T"]
    full = grid_of((2, 3), (0.0, 1.0), ("uniform", "quad"), ("ddim", "sigma_hat", "ddpm"), T=T)
    cells = [c for c in full if (c.spacing, c.sampler) != ("uniform", "sigma_hat")]
    todo = [c for c in cells if c.spacing == "quad" or c.sampler == "ddpm"]
    states = [(c, NOT_RUN if c in todo else MEASURED) for c in cells]
    note = finish(states, grid_of((2,), (0.0,)), base)
    commands = note.split("(measured cells are skipped): ")[1].split("; ")
    assert len(commands) == 2
    resolved = set()
    for command in commands:
        argv = shlex.split(command)
        assert argv[:2] == ["ddimbench", "sweep"], command
        code, out, err = run([*argv[1:], "--dry-run"], capsys)
        assert code == 0, err
        spec = json.loads(out)
        resolved |= {c.key for c in grid(spec["spacing"], spec["sampler"], spec["steps"], spec["eta"], spec["seeds"],
                                         spec["T"])}  # fmt: skip
    assert {c.key for c in todo} <= resolved <= {c.key for c in cells}


def test_a_combined_report_offers_the_same_commands(tmp_path):
    stopped = as_record({"number": 0, "state": "FAIL", "sampler": "ddim", "eta": 1.0, "steps": 20,
                         "spacing": "uniform", "seed_block": 0, "error": "interrupted"})  # fmt: skip
    done = as_record({"number": 1, "state": "COMPLETE", "sampler": "ddim", "eta": 0.0, "steps": 10,
                      "spacing": "uniform", "seed_block": 0, "fid": 5.0})  # fmt: skip
    stopped = dataclasses.replace(stopped, interrupted=True)
    meta = {"name": "s", "mode": "grid", "dataset": "digits", "command": "first", "last_run": {"command": LATEST}}
    sweeps = [("s", [stopped, done], meta), ("t", [done], {**meta, "name": "t"})]
    write_combined_report(sweeps, tmp_path / "out", grids={n: Grids.one(grid_of((10,), (0.0,))) for n in "st"})
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert list(manifest["incomplete"]) == ["s"]
    assert manifest["incomplete"]["s"].endswith(": ddimbench sweep name=s steps=20 eta=1 spacing=uniform sampler=ddim "
                                                "seeds=0")  # fmt: skip
    # Every run's grid shown (S = 10, 20 × η = 0, 1), the latest run's S = 10 η = 0: the earlier grid is offered.
    latest = tuple(grid_of((10,), (0.0,)))
    grids = {"s": Grids((latest, tuple(grid_of((10, 20), (0.0, 1.0)))), latest), "t": Grids.one(latest)}
    write_combined_report(sweeps, tmp_path / "out", grids=grids)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["incomplete"]["s"].startswith("sweep 's' is incomplete: 1 of 4 cells measured, 3 not run")
    assert manifest["incomplete"]["s"].endswith(": ddimbench sweep name=s steps=10,20 eta=0,1 spacing=uniform "
                                                "sampler=ddim seeds=0")  # fmt: skip


def test_a_stores_earlier_grids_are_offered_as_the_runs_asked_for_them(tmp_path, capsys):
    """A real store whose runs asked for ``steps=20 eta=0,0.5,1``, then ``steps=10,20,50 eta=0.5``, then
    ``steps=10 eta=0`` (measured): ``ddimbench report`` offers the two earlier grids, not three splits."""
    from bench.store import study as store
    from bench.store.grids import save_spec

    storage = f"sqlite:///{tmp_path / 'sweeps.db'}"
    study = store.create_study("s", storage, 0, {"mode": "grid", "checkpoint_sha256": "c0", "n": 20, "T": 1000},
                               {"name": "s", "n": 20, "mode": "grid", "command": LATEST})  # fmt: skip
    axes = {"spacing": ["uniform"], "sampler": ["ddim"], "seeds": [0], "T": 1000, "search": None}
    for steps, etas in (([20], [0.0, 0.5, 1.0]), ([10, 20, 50], [0.5]), ([10], [0.0])):
        save_spec(study, {**axes, "steps": steps, "eta": etas})
    trial = study.ask()
    for key, value in {"cell": ddim(10, 0.0).key, **ddim(10, 0.0).fields(), "fid": 3.0}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, 3.0)
    code, _, err = run(["report", "s", "--storage", storage, "--out", tmp_path / "rep", "--wandb", "disabled"], capsys)
    assert code == 0, err
    note = json.loads((tmp_path / "rep" / "manifest.json").read_text(encoding="utf-8"))["incomplete"]
    assert note.startswith("sweep 's' is incomplete: 1 of 6 cells measured, 5 not run")
    assert sorted(note.split("(measured cells are skipped): ")[1].split("; ")) == [
        "ddimbench sweep name=s steps=10,20,50 eta=0.5 spacing=uniform sampler=ddim seeds=0",
        "ddimbench sweep name=s steps=20 eta=0,0.5,1 spacing=uniform sampler=ddim seeds=0",
    ]


# ------------------------------------------------------------------------------------------- end to end
def ddimbench(command: str, monkeypatch) -> int:
    """``command`` as typed: run in-process, with sys.argv as the shell would set it (the sweep records it)."""
    argv = shlex.split(command)
    monkeypatch.setattr(sys, "argv", argv)
    return main(argv[1:])


def test_following_an_interrupted_sweeps_report_finishes_it(ckpt, cache, work, monkeypatch, capsys):
    """``steps=2,3 eta=0,1`` stopped by Ctrl-C in its second cell, then ``steps=3 eta=0``: the report shows the
    stopped cell and the one never started, both outside the latest grid, as not run and offers one command
    that measures them (a combined report the same); once run, the report says nothing is left."""
    from bench.report.multi import make_combined_report
    from bench.sweep import loop
    from bench.sweep.evaluate import Evaluator

    monkeypatch.setattr(loop, "random", types.SimpleNamespace(choice=lambda keys: keys[0]))  # the grid's order
    measure, calls = Evaluator.evaluate, []

    def stop_second(self, cell, display):
        calls.append(cell)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return measure(self, cell, display)

    monkeypatch.setattr(Evaluator, "evaluate", stop_second)
    base = shlex.join(["ddimbench", "sweep", f"checkpoint={ckpt}", f"cache_dir={cache}", "name=s", "n=20", "batch=10",
                       "interpolation=false", "--storage", url(work), "--wandb", "disabled"])  # fmt: skip
    assert ddimbench(f"{base} steps=2,3 eta=0,1", monkeypatch) == 130
    assert [(c.steps, c.eta) for c in calls] == [(2, 0.0), (2, 1.0)]  # (2, 0) measured, (2, 1) stopped
    monkeypatch.setattr(Evaluator, "evaluate", measure)
    assert ddimbench(f"{base} steps=3 eta=0", monkeypatch) == 0

    def report() -> tuple[str, dict]:
        code, _, err = run(["report", "s", "--storage", url(work), "--out", work / "rep", "--wandb", "disabled"],
                           capsys)  # fmt: skip
        assert code == 0, err
        return err, json.loads((work / "rep" / "manifest.json").read_text(encoding="utf-8"))

    err, manifest = report()
    offered = f"{base} steps=2,3 eta=1 spacing=uniform sampler=ddim seeds=0"
    assert manifest["incomplete"].startswith("sweep 's' is incomplete: 2 of 4 cells measured, 2 not run")
    assert manifest["incomplete"].endswith(f"(measured cells are skipped): {offered}") and offered in err
    both = make_combined_report(["s"], storage=url(work), out=work / "both", wandb="disabled")
    combined = json.loads((both / "manifest.json").read_text(encoding="utf-8"))["incomplete"]
    assert combined == {"s": manifest["incomplete"]} and offered in capsys.readouterr().err  # and its warning
    assert ddimbench(offered, monkeypatch) == 0
    err, manifest = report()
    assert manifest["incomplete"] is None and "incomplete" not in err
    assert sorted((c["params"]["steps"], c["params"]["eta"]) for c in manifest["cells"] if c["state"] == "COMPLETE") \
        == [(2, 0.0), (2, 1.0), (3, 0.0), (3, 1.0)]  # fmt: skip
