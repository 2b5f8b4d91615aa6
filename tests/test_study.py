"""bench.store.study: the sweep's Optuna schema. Stores written by earlier releases (the timestep spacing named
``schedule``) are migrated as they are read: reports, cell plans, claims and queued trials see ``spacing``."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from bench.store import study as store
from bench.store.cell import Cell
from bench.store.plan import cell_plan

DONE = Cell("ddim", "quad", 10, 0.5, 1)
QUEUED = Cell("ddim", "quad", 20, 0.5, 1)
OLD_CHOICES = {"sampler": ["ddim", "sigma_hat", "ddpm"], "schedule": ["uniform", "quad", "trailing", "linspace"]}


def old_key(cell: Cell) -> str:
    """A cell's key as the earlier releases wrote it."""
    return cell.key.replace(" spacing=", " schedule=")


def old_params(cell: Cell) -> dict:
    return {"sampler": cell.sampler, "schedule": cell.spacing, "steps": cell.steps, "eta": cell.eta,
            "seed_block": cell.seed_block}  # fmt: skip


def old_store(work: Path, name: str = "old") -> str:
    """A grid store as the earlier release left it: one measured cell, one cell queued and not yet popped,
    every name of the spacing ``schedule`` (param, user attribute, cell key, param choices)."""
    url = f"sqlite:///{work / 'old.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=url)
    protocol = {"mode": "grid", "checkpoint_sha256": "c0", "n": 20, "seed_base": 0, "dataset": "digits",
                "extractor": "classifier", "metrics": ["fid"], "T": 1000}  # fmt: skip
    study.set_user_attr("protocol", protocol)
    study.set_user_attr("meta", {"name": name, "dataset": "digits", "n": 20, "mode": "grid", "T": 1000})
    study.set_user_attr("param_choices", OLD_CHOICES)
    dists = {"sampler": CategoricalDistribution(OLD_CHOICES["sampler"]),
             "schedule": CategoricalDistribution(OLD_CHOICES["schedule"]), "steps": IntDistribution(1, 1000),
             "eta": FloatDistribution(0.0, 1.0), "seed_block": IntDistribution(0, 1)}  # fmt: skip
    attrs = {"cell": old_key(DONE), "run": "r0", **old_params(DONE), "fid": 4.5, "nfe": 10,
             "result": {"n": 20, "seeds": "20-39"}}  # fmt: skip
    study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=4.5, params=old_params(DONE),
                                              distributions=dists, user_attrs=attrs))  # fmt: skip
    study.enqueue_trial(old_params(QUEUED), user_attrs={"cell": old_key(QUEUED)})
    return url


def test_an_old_stores_cells_read_back_under_today_s_spacing_name(tmp_path: Path) -> None:
    url = old_store(tmp_path)
    (record,), meta, _ = store.load_results("old", url)
    assert record.cell == DONE and record.cell.key == "sampler=ddim spacing=quad steps=10 eta=0.5 seed_block=1"
    assert record.state == "COMPLETE" and record.scores.fid == 4.5 and meta["seeds"] == "20-39"


def test_an_old_stores_measured_and_queued_cells_count_as_done_and_queued(tmp_path: Path) -> None:
    url = old_store(tmp_path)
    trials = optuna.load_study(study_name="old", storage=url).get_trials(deepcopy=False)
    plan = cell_plan(trials, [DONE.key, QUEUED.key, Cell("ddim", "quad", 50, 0.5, 1).key], "r1")
    assert (plan.done, plan.waiting, plan.fresh, plan.retry) == (1, 1, [Cell("ddim", "quad", 50, 0.5, 1).key], [])


def test_a_cell_measured_by_an_old_release_is_not_claimed_again(tmp_path: Path) -> None:
    url = old_store(tmp_path)
    study = optuna.load_study(study_name="old", storage=url)
    study.ask()  # pops the queued trial (#1)
    trial = study.ask()
    assert store.claim(trial, DONE, {"run": "r1"}) == 0  # the old trial #0 holds the cell: this one yields


def test_a_trial_queued_by_an_old_release_is_popped_as_its_cell(tmp_path: Path) -> None:
    url = old_store(tmp_path)
    trial = optuna.load_study(study_name="old", storage=url).ask()
    assert trial.number == 1 and store.queued_cell(trial, 1000) == QUEUED
    assert trial.params["schedule"] == "quad"  # the param it was queued with, not a resampled one


def test_an_old_search_store_accepts_a_rerun_with_the_same_space(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    space = {"steps": "2..20", "eta": "0..1", "sampler": ["ddim"], "seeds": [0], "objective": "nfe"}
    protocol = {"mode": "pareto", "checkpoint_sha256": "c0", "n": 20, "T": 1000}
    store.create_study("s", url, 0, {**protocol, "space": {**space, "schedule": ["trailing"]}}, {"name": "s"})
    store.create_study("s", url, 0, {**protocol, "space": {**space, "spacing": ["trailing"]}}, {"name": "s"})
    with pytest.raises(store.DDIMError, match="space="):
        store.create_study("s", url, 0, {**protocol, "space": {**space, "spacing": ["uniform"]}}, {"name": "s"})


def test_ddimbench_report_reads_an_old_store(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from bench.cli import main

    url = old_store(tmp_path)
    code = main(["report", "old", "--storage", url, "--out", str(tmp_path / "rep"), "--wandb", "disabled"])
    assert code == 0, capsys.readouterr().err
    with open(tmp_path / "rep" / "results.csv", newline="", encoding="utf-8") as f:
        (row,) = list(csv.DictReader(f))
    assert "schedule" not in row and (row["spacing"], row["steps"], row["fid"]) == ("quad", "10", "4.5")
