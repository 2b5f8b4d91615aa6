"""bench.store: what a report is built from when a sweep is run more than once, or a trial was stopped right
after claiming its cell. Real (tiny) sweeps on a SQLite store, as in test_runner.py; offline, CPU only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
from helpers.sweep import spec_of, url
from optuna.trial import TrialState

from bench.report.build import make_report
from bench.store.plan import cell_plan
from bench.store.storage import open_storage
from bench.store.study import load_results
from bench.sweep.runner import run_sweep

pytestmark = pytest.mark.timeout(240)  # every test reruns a sweep: one that never ends fails here, not at 600 s
FAST = ["steps=2", "eta=0", "n=20", "batch=10", "interpolation=false"]


def sweep(spec, work: Path, command: str = ""):
    return run_sweep(spec, storage=url(work), wandb="disabled", progress=False, command=command, heartbeat=1)


def test_caption_and_provenance_cover_every_run(ckpt, cache, work):
    first, second = "ddimbench sweep name=sb seeds=0 n=20", "ddimbench sweep name=sb seeds=0,1 n=20"
    sweep(spec_of(ckpt, cache, *FAST, "seeds=0", name="sb"), work, first)
    records, meta, _ = load_results("sb", url(work))
    assert meta["seeds"] == "0-19" and meta["command"] == first and "runs" not in meta and "last_run" not in meta
    sweep(spec_of(ckpt, cache, *FAST, "seeds=0,1", name="sb"), work, second)
    records, meta, _ = load_results("sb", url(work))
    assert sorted(r.measured.seeds for r in records) == ["0-19", "20-39"]
    assert meta["seeds"] == "0-19, 20-39"  # the seeds of the reported cells, not of the first run alone
    assert meta["command"] == first and meta["runs"] == 2  # the first run's provenance, and the latest run's
    assert meta["last_run"]["command"] == second and meta["last_run"]["device"] == "cpu"
    assert meta["last_run"]["created"] >= meta["created"]
    out = make_report("sb", storage=url(work), wandb="disabled")
    table = (out / "table.md").read_text(encoding="utf-8")
    assert "20 samples per cell (seeds 0-19, 20-39)" in table and "over 2 seed blocks" in table
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert f"| command | {first} |" in readme and f"| last_run.command | {second} |" in readme
    assert "| runs | 2 |" in readme
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8"))["meta"]["last_run"]["command"] == second
    # A third run (nothing left to measure) is recorded too; the seeds stay those of the cells.
    sweep(spec_of(ckpt, cache, *FAST, "seeds=0", name="sb"), work, "third")
    _, meta, _ = load_results("sb", url(work))
    assert meta["runs"] == 3 and meta["last_run"]["command"] == "third" and meta["seeds"] == "0-19, 20-39"
    # Each later run's record names its own grid (the report pairs its command with that grid, not with ``spec``).
    attrs = optuna.load_study(study_name="sb", storage=url(work)).user_attrs
    digests = [v["grid"] for k, v in sorted(attrs.items()) if k.startswith("run:")]
    assert [f"grid:{d}" in attrs for d in digests] == [True, True] and digests[0] != digests[1]
    assert attrs[f"grid:{digests[1]}"]["seeds"] == [0]


def _stopped_trial(storage: str, name: str, cell: str, **attrs) -> int:
    """A trial that claimed ``cell`` and stopped before recording the cell's fields: FAIL, as the heartbeat or
    an interrupt leaves it."""
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    trial = study.ask()
    for key, value in {"cell": cell, "run": "stopped", **attrs}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, state=TrialState.FAIL)
    return trial.number


def test_trial_stopped_before_its_cell_fields_is_no_result(ckpt, cache, work):
    full = spec_of(ckpt, cache, *FAST[1:], "steps=2,3", name="st")
    done, todo = (c.key for c in full.cells())
    sweep(spec_of(ckpt, cache, *FAST, name="st"), work)  # S = 2 only
    bare = _stopped_trial(url(work), "st", todo)  # only the claim and the run token
    partial = _stopped_trial(url(work), "st", done, pid=1, host="h", sampler="ddim", steps=2)  # stopped mid-way
    records, meta, _ = load_results("st", url(work))
    assert [(r.state, r.cell.steps) for r in records] == [("COMPLETE", 2)]
    assert {bare, partial}.isdisjoint(r.number for r in records)
    assert meta["superseded_trials"] == 1  # the stopped try of the measured cell; the other cell is just not run
    out = make_report("st", storage=url(work), wandb="disabled")  # no "result record lacks 'sampler'"
    assert "S = 2" in (out / "table.md").read_text(encoding="utf-8")
    # The claim alone still makes the cell one to retry, and the next run measures it.
    trials = optuna.load_study(study_name="st", storage=open_storage(url(work))).trials
    plan = cell_plan(trials, [done, todo], "next")
    assert plan.done == 1 and plan.retry == [todo] and not plan.fresh
    assert sweep(full, work).complete == 2
    records, _, _ = load_results("st", url(work))
    assert sorted((r.state, r.cell.steps) for r in records) == [("COMPLETE", 2), ("COMPLETE", 3)]


def test_grid_trials_carry_native_params_and_one_attribute_per_metric(ckpt, cache, work):
    """What optuna-dashboard sees: a grid cell's S, η, sampler, spacing and seed block as real Optuna
    params (numbers as numbers), and each metric as its own user attribute."""
    spec = spec_of(ckpt, cache, "steps=2,3", "eta=0,0.5", "sampler=ddim,sigma_hat", "n=20", "batch=10",
                   "interpolation=false", name="native")  # fmt: skip
    assert sweep(spec, work).complete == len(spec.cells()) == 6
    study = optuna.load_study(study_name="native", storage=url(work))  # plain Optuna, none of our code
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 6
    seen = set()
    for t in done:
        assert isinstance(t.params["steps"], int) and isinstance(t.params["seed_block"], int)
        assert t.params["sampler"] in ("ddim", "sigma_hat") and t.params["spacing"] == "uniform"
        if t.params["sampler"] == "ddim":
            assert isinstance(t.params["eta"], float) and t.params["eta"] in (0.0, 0.5)
        else:
            assert "eta" not in t.params  # σ̂ has no η: a conditional param, as Optuna expects
        for k in ("fid", "isc_mean", "kid_mean", "nfe", "wall_s"):
            assert isinstance(t.user_attrs[k], (int, float)), k
        assert t.value == t.user_attrs["fid"]  # the objective is the FID
        assert t.user_attrs["nfe"] == t.params["steps"]
        seen.add((t.params["sampler"], t.params["steps"], t.params.get("eta")))
    assert seen == {("ddim", s, e) for s in (2, 3) for e in (0.0, 0.5)} | {("sigma_hat", s, None) for s in (2, 3)}
    # The report reads the same trials back.
    records, _, _ = load_results("native", url(work))
    assert {(r.cell.sampler, r.cell.steps, r.cell.eta) for r in records} == seen


def test_a_cell_already_measured_is_not_measured_again_without_any_race(ckpt, cache, work, monkeypatch):
    """The claim check itself, made deterministic: the worker's first look at the store is stale (as when
    another machine finished the cell a moment ago), so it queues a measured cell again; the trial must see
    the complete holder and yield (PRUNED) without sampling, and the cell stays stored once."""
    import bench.sweep.loop as loop
    from bench.sweep.evaluate import Evaluator

    spec = spec_of(ckpt, cache, *FAST, name="once")
    sweep(spec, work)
    (key,) = (c.key for c in spec.cells())
    real, calls = cell_plan, {"plan": 0, "evaluate": 0}

    def stale_once(trials, keys, token):
        plan = real(trials, keys, token)
        calls["plan"] += 1
        if calls["plan"] == 1:  # the first look misses the completed trial
            plan.done, plan.fresh = plan.done - 1, [key]
        return plan

    monkeypatch.setattr(loop, "cell_plan", stale_once)
    evaluate = Evaluator.evaluate
    monkeypatch.setattr(Evaluator, "evaluate", lambda self, *a: calls.update(evaluate=calls["evaluate"] + 1)
                        or evaluate(self, *a))  # fmt: skip
    sweep(spec, work)
    trials = optuna.load_study(study_name="once", storage=open_storage(url(work))).trials
    states = sorted(t.state.name for t in trials if t.user_attrs.get("cell") == key)
    assert states == ["COMPLETE", "PRUNED"] and calls["evaluate"] == 0, (states, calls)


@pytest.mark.timeout(120)
def test_a_trial_stopped_inside_optuna_s_ask_is_failed_and_the_search_finishes(ckpt, cache, work, capsys):
    """A worker stopped inside ``ask`` (a search's sampler runs there) leaves a RUNNING trial that never gets a
    heartbeat, so Optuna's ``fail_stale_trials`` never fails it; the search must not wait for it for ever."""
    args = ["steps=2..4", "eta=0", "n=20", "batch=10", "interpolation=false"]
    sweep(spec_of(ckpt, cache, *args, "trials=1", name="zombie", search="pareto"), work)
    study = optuna.load_study(study_name="zombie", storage=open_storage(url(work)))
    zombie = study.ask()  # RUNNING, no heartbeat, no claim: as a worker killed inside ask leaves it
    summary = sweep(spec_of(ckpt, cache, *args, "trials=2", name="zombie", search="pareto"), work)
    trials = optuna.load_study(study_name="zombie", storage=open_storage(url(work))).trials
    assert trials[zombie.number].state == TrialState.FAIL and summary.complete == 2
    assert f"trial #{zombie.number} never started" in capsys.readouterr().err
    assert all(t.user_attrs.get("pid") == os.getpid() for t in trials if t.state == TrialState.COMPLETE)


@pytest.mark.timeout(120)
def test_a_queued_cell_popped_by_a_worker_stopped_inside_ask_is_measured(ckpt, cache, work, capsys):
    """In a grid, the trial Optuna's ``ask`` pops is RUNNING and already names its cell (queued with it): a worker
    stopped there left the cell held for ever. It is failed after the grace and the cell measured."""
    from bench.store.study import enqueue_cell

    sweep(spec_of(ckpt, cache, *FAST, name="zgrid"), work)  # the sweep exists, η = 0 measured
    spec = spec_of(ckpt, cache, "steps=2", "eta=0,0.5", "n=20", "batch=10", "interpolation=false", name="zgrid")
    (cell,) = (c for c in spec.cells() if c.eta == 0.5)
    study = optuna.load_study(study_name="zgrid", storage=open_storage(url(work)))
    enqueue_cell(study, cell)
    zombie = study.ask()  # pops the queued cell: RUNNING, holding it, never started
    assert zombie.user_attrs.get("cell") == cell.key
    summary = sweep(spec, work)
    trials = optuna.load_study(study_name="zgrid", storage=open_storage(url(work))).trials
    assert trials[zombie.number].state == TrialState.FAIL and summary.complete == 2 and not summary.failed
    assert [t.state for t in trials if t.user_attrs.get("cell") == cell.key].count(TrialState.COMPLETE) == 1
    assert f"trial #{zombie.number} never started" in capsys.readouterr().err
