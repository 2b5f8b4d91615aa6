"""bench.store.study: the sweep's Optuna schema. A record is written under the release's attribute names and read
back equal; ill-typed attributes are left out. Stores written by earlier releases (the timestep spacing named
``schedule``) are migrated as they are read: reports, cell plans, claims and queued trials see ``spacing``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import optuna
import pytest
from helpers.sweep import CELL, MEASURED
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from bench.store import study as store
from bench.store.cell import Cell
from bench.store.plan import cell_plan
from bench.store.record import CellRecord

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


def test_the_sweeps_devices_are_every_runs_devices(tmp_path: Path) -> None:
    """A sweep resumed on other devices lists them all in its provenance, so its cells there are not flagged."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    protocol = {"mode": "grid", "checkpoint_sha256": "c0", "n": 20, "T": 1000}
    store.create_study("s", url, 0, protocol, {"name": "s", "device": "cuda:0 (A), cuda:1 (A)"})
    store.create_study("s", url, 0, protocol, {"name": "s", "device": "cuda:1 (A)"})
    store.create_study("s", url, 0, protocol, {"name": "s", "device": "cpu"})
    _, meta, _ = store.load_results("s", url)
    assert meta["device"] == "cuda:0 (A), cuda:1 (A), cpu" and meta["runs"] == 3
    assert meta["last_run"]["device"] == "cpu"


def test_ddimbench_report_reads_an_old_store(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from bench.cli import main

    url = old_store(tmp_path)
    code = main(["report", "old", "--storage", url, "--out", str(tmp_path / "rep"), "--wandb", "disabled"])
    assert code == 0, capsys.readouterr().err
    with open(tmp_path / "rep" / "results.csv", newline="", encoding="utf-8") as f:
        (row,) = list(csv.DictReader(f))
    assert "schedule" not in row and (row["spacing"], row["steps"], row["fid"]) == ("quad", "10", "4.5")


# ------------------------------------------------------------------------------------------ the store
def new_trial(tmp_path, name: str = "s") -> tuple[optuna.Study, optuna.Trial, str]:
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    protocol = {"mode": "grid", "checkpoint_sha256": "c0", "n": 500, "seed_base": 0, "dataset": "digits",
                "extractor": "classifier", "metrics": ["fid", "isc", "kid"], "T": 1000}  # fmt: skip
    study = store.create_study(name, url, 0, protocol, {"name": name, "n": 500})
    trial = study.ask()
    for key, value in {"cell": CELL.key, **CELL.fields()}.items():
        trial.set_user_attr(key, value)
    return study, trial, url


def test_a_measurement_is_stored_under_the_releases_attribute_names_and_read_back_equal(tmp_path):
    study, trial, url = new_trial(tmp_path)
    store.save_result(trial, MEASURED)
    study.tell(trial, MEASURED.scores.fid, state=TrialState.COMPLETE)
    # On disk as before: each metric its own attribute (KID raw), the rest of the measurement as ``result``.
    attrs = optuna.load_study(study_name="s", storage=url).trials[0].user_attrs
    metrics = {"fid", "isc_mean", "isc_std", "kid_mean", "kid_std", "nfe", "wall_s", "images_per_s"}
    assert set(attrs) == {"cell", "sampler", "steps", "eta", "spacing", "seed_block", "result"} | metrics
    assert attrs["kid_mean"] == 0.0123 and attrs["nfe"] == 10
    assert set(attrs["result"]) == {"n", "seeds", "grid", "strip", "checkpoint_sha256", "extractor",
                                    "extractor_sha256", "ref_key", "ref_sha256", "device", "precision",
                                    "versions"}  # fmt: skip
    (record,), meta, _ = store.load_results("s", url)
    assert record == CellRecord(0, "COMPLETE", CELL, MEASURED) and record.measured.versions == {"torch": "2.3"}
    assert meta["ref_sha256"] == "r2" and meta["seeds"] == "500-999"  # known from the cells


@pytest.mark.parametrize(
    "name, value",
    [
        ("steps", "ten"),
        ("seed_block", 1.5),
        ("fid", "low"),
        ("wall_s", True),
        ("result", {"grid": ["a.png"]}),
        ("result", {"n": {"a": 1}}),
        ("result", {"versions": "torch"}),
        ("error", 3),
        pytest.param("fid", 10**400, id="fid-beyond-a-float"),  # an int beyond a float's range
        pytest.param("eta", -(10**400), id="eta-beyond-a-float"),
    ],
)
def test_a_trial_with_an_ill_typed_attribute_is_left_out_with_a_warning(tmp_path, capsys, name, value):
    study, trial, url = new_trial(tmp_path)
    store.save_result(trial, MEASURED)
    trial.set_user_attr(name, value)
    study.tell(trial, 1.0, state=TrialState.COMPLETE)
    good = study.ask()  # a second, untouched trial is still read
    for key, v in {"cell": CELL.key, **CELL.fields(), "seed_block": 2}.items():
        good.set_user_attr(key, v)
    store.save_result(good, MEASURED)
    study.tell(good, 1.0, state=TrialState.COMPLETE)
    records, _, _ = store.load_results("s", url)
    assert [r.number for r in records] == [1] and records[0].measured == MEASURED
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "1 trial(s) of 's' hold fields of the wrong type" in line and line.endswith("left out: #0")


def test_numbers_stored_as_other_number_types_read_as_the_fields_types(tmp_path):
    study, trial, url = new_trial(tmp_path)
    store.save_result(trial, MEASURED)
    for name, value in {"fid": 3, "nfe": 10.0, "eta": 1}.items():  # JSON keeps 3 and 1 ints, 10.0 a float
        trial.set_user_attr(name, value)
    study.tell(trial, 3.0, state=TrialState.COMPLETE)
    (record,), _, _ = store.load_results("s", url)
    assert isinstance(record.scores.fid, float) and isinstance(record.measured.nfe, int) and record.cell.eta == 1.0
    assert not math.isnan(record.scores.fid)


def test_load_study_reads_a_sqlite_url_with_options(tmp_path):
    """``sqlite:///file?timeout=30`` names the file without its options: open_storage accepts it, so must the
    readers (report, dashboard); a missing file is still the one-line 'does not exist'."""
    import optuna

    from bench.store.storage import open_storage
    from bench.store.study import load_study

    url = f"sqlite:///{tmp_path / 'opts.db'}?timeout=30"
    optuna.create_study(storage=open_storage(url), study_name="with-options")
    assert load_study("with-options", url).study_name == "with-options"
    with pytest.raises(store.DDIMError, match="does not exist"):
        load_study("with-options", f"sqlite:///{tmp_path / 'none.db'}?timeout=30")


# ------------------------------------------------------------------------------------- an interrupted sweep
def test_an_interrupted_sweeps_report_shows_every_cell_and_says_how_to_finish(tmp_path, capsys):
    """A grid of four cells: one measured, one failed on its own, one stopped by Ctrl-C, one never started. The
    stopped and the unstarted cells are not run ("—", as the legend says), not failed, every row and column of the
    grid is in the table, and the report (and its warning) says the sweep is incomplete and how to finish it."""
    from bench.cli import main

    study, trial, url = new_trial(tmp_path)  # CELL: ddim uniform S = 10 η = 0.5 block 1
    command = "ddimbench sweep steps=10,20 eta=0.5,1 seeds=1 name=s"
    study.set_user_attr("meta", {"name": "s", "n": 500, "command": command})
    study.set_user_attr("spec", {"spacing": ["uniform"], "sampler": ["ddim"], "steps": [10, 20], "eta": [0.5, 1.0],
                                 "seeds": [1], "T": 1000, "search": None})  # fmt: skip
    store.save_error(trial, "interrupted (Ctrl-C or SIGTERM); rerun the sweep to measure this cell", True)
    study.tell(trial, state=TrialState.FAIL)
    for cell, state in ((Cell("ddim", "uniform", 10, 1.0, 1), TrialState.COMPLETE),
                        (Cell("ddim", "uniform", 20, 0.5, 1), TrialState.FAIL)):  # fmt: skip
        t = study.ask()
        for key, value in {"cell": cell.key, **cell.fields()}.items():
            t.set_user_attr(key, value)
        if state == TrialState.FAIL:
            store.save_error(t, "CUDA out of memory; retry with a smaller batch")
        else:
            store.save_result(t, MEASURED)
        study.tell(t, 1.5 if state == TrialState.COMPLETE else None, state=state)
    grids: list = []
    records, _, _ = store.load_results("s", url, grids)
    assert [(r.interrupted, r.failed) for r in records] == [(True, False), (False, False), (False, True)]
    assert len(grids[0].cells) == 4

    code = main(["report", "s", "--storage", url, "--out", str(tmp_path / "rep"), "--wandb", "disabled"])
    err = capsys.readouterr().err
    assert code == 0, err
    fid = (tmp_path / "rep" / "table.md").read_text(encoding="utf-8").split("### IS")[0]
    rows = {line.strip("| ").split(" | ")[0]: line.strip("| ").split(" | ")[1:] for line in fid.splitlines()
            if line.startswith("| η = ")}  # fmt: skip
    assert rows == {"η = 0.5": ["—", "failed"], "η = 1.0": ["**1.50**", "—"]}
    note = "sweep 's' is incomplete: 1 of 4 cells measured, 1 failed, 2 not run"
    readme = (tmp_path / "rep" / "README.md").read_text(encoding="utf-8")
    assert readme.index("## Incomplete sweep") < readme.index("## Results")
    first = readme[readme.index("## Incomplete sweep") : readme.index("## Provenance")]
    stopped = "trial #0 (uniform η = 0.5 S = 10 block 1): interrupted (Ctrl-C or SIGTERM)"
    assert stopped in first and "CUDA out of memory" not in first  # the stopped trial is listed, the failed one not
    assert note in readme and f"rerun the same command to finish it: {command}" in readme
    assert note in err and command in err
    assert json.loads((tmp_path / "rep" / "manifest.json").read_text(encoding="utf-8"))["incomplete"].startswith(note)
    failed = readme[readme.index("## Failed cells") :].split("##")[1]
    assert "CUDA out of memory" in failed and "Ctrl-C" not in failed  # the stop is listed as not run, not failed


def test_every_runs_grid_is_kept_and_read_back_with_the_latest_runs(tmp_path):
    """Each grid run keeps its grid, once per distinct grid; ``load_results`` gives every grid's cells (the latest
    run's first) and the latest run's. A store of the previous release (the latest ``spec`` alone) gives that one
    grid for both; a search keeps none."""
    from bench.store.grids import save_spec, spec_grid

    study, _, url = new_trial(tmp_path)
    common = {"name": "s", "n": 500, "spacing": ["uniform"], "sampler": ["ddim"], "T": 1000, "search": None}
    wide = {**common, "steps": [10, 20], "eta": [0.0, 1.0], "seeds": [0]}
    narrow = {**common, "steps": [10], "eta": [0.0], "seeds": [0, 1]}

    def grids() -> tuple[list[str], list[str]]:
        stored: list = []
        store.load_results("s", url, stored)
        return [c.key for c in stored[0].cells], [c.key for c in stored[0].latest]

    study.set_user_attr("spec", wide)  # as the previous release stored it
    assert grids() == ([c.key for c in spec_grid(wide)],) * 2
    for spec in (wide, narrow, narrow):
        save_spec(study, spec)
    every, latest = grids()
    assert latest == [c.key for c in spec_grid(narrow)]
    assert every == latest + [c.key for c in spec_grid(wide) if c.key not in latest]  # (10, 0) block 0 once
    kept = optuna.load_study(study_name="s", storage=url).user_attrs
    assert sorted(v["steps"] for k, v in kept.items() if k.startswith("grid:")) == [[10], [10, 20]]
    search = optuna.create_study(study_name="p", storage=url)
    save_spec(search, {**wide, "search": "pareto", "steps": "2..10"})
    assert list(optuna.load_study(study_name="p", storage=url).user_attrs) == ["spec"]


def test_a_stored_grid_with_numbers_beyond_a_floats_range_is_no_grid(tmp_path, capsys):
    """``T: 10**400`` or ``eta: [10**400]`` (valid JSON, an edited store): never a float conversion that overflows;
    neither is a grid (T is at most a checkpoint's MAX_T, η a float), the report shows the trials."""
    from bench.cli import main
    from bench.store.grids import spec_grid

    study, trial, url = new_trial(tmp_path)
    store.save_result(trial, MEASURED)
    study.tell(trial, 1.5, state=TrialState.COMPLETE)
    axes = {"spacing": ["uniform"], "sampler": ["ddim"], "steps": [10], "eta": [0.5], "seeds": [1], "T": 1000}
    with pytest.raises(store.DDIMError, match=r"T=1000\d+… is not an integer in 1\.\.100000"):
        spec_grid({**axes, "T": 10**400})
    with pytest.raises(store.DDIMError, match="eta: 1000.* is not a finite number"):
        spec_grid({**axes, "eta": [10**400]})
    for bad in ({**axes, "T": 10**400}, {**axes, "eta": [10**400]}):
        study.set_user_attr("spec", bad)
        code = main(["report", "s", "--storage", url, "--out", str(tmp_path / "rep"), "--wandb", "disabled"])
        assert code == 0, capsys.readouterr().err


def test_a_checkpoint_change_is_named_even_without_the_first_runs_path() -> None:
    from bench.store.same_sweep import check_same_sweep
    from ddim.errors import DDIMError

    stored, now = {"checkpoint_sha256": "a" * 64, "n": 10}, {"checkpoint_sha256": "b" * 64, "n": 10}
    with pytest.raises(DDIMError, match=r"was run on the checkpoint runs/x\.pt \(sha256 aaaaaaaaaaaa…\), not y\.pt "):
        check_same_sweep("s", stored, "runs/x.pt", now, "y.pt")
    with pytest.raises(DDIMError) as err:  # a store whose meta names no checkpoint (tampered, or very old)
        check_same_sweep("s", stored, None, now, "y.pt")
    assert "None" not in str(err.value) and "pass the checkpoint it was run with" in str(err.value)
    check_same_sweep("s", stored, None, dict(stored), "y.pt")  # the same protocol passes
