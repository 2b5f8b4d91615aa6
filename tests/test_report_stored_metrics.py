"""A sweep's stored ``metrics`` (its meta's list of the metrics it asked for) is read back from a store anyone with
access to the database can write: a value that is no list of metric names is left out with one warning, and the
report shows every metric measured (``bench.report.asked``), alone or in a combined report; never a traceback.
Real SQLite stores, edited; the CLI run in-process. No torch."""

from __future__ import annotations

import json

import optuna
import pytest
from helpers.cli import run_err as run
from helpers.sweep import fake_sweep

EDITED = {"int": 5, "nested": [[1]], "unknown": ["fid", "x"], "text": "fid", "dict": {"fid": 1}, "null-in": [None]}


def store(tmp_path, metrics: object, names=("s",)) -> str:
    """A store with grid sweeps ``names`` (FID and KID measured), the first one's meta ``metrics`` set so."""
    storage = f"sqlite:///{tmp_path / 'sweeps.db'}"
    for name in names:
        fake_sweep(storage, name, "cifar10", "inception")
    study = optuna.load_study(study_name=names[0], storage=storage)
    study.set_user_attr("meta", {**study.user_attrs["meta"], "metrics": metrics})
    return storage


def report(tmp_path, storage: str, capsys, *names: str) -> tuple[list[str], list[str]]:
    """(stderr's lines, the manifest's metrics) of ``ddimbench report NAMES``, which must succeed."""
    code, err = run(["report", *names, "--storage", storage, "--out", tmp_path / "rep", "--wandb", "disabled"], capsys)
    assert code == 0 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("report written to"), err
    return lines[:-1], json.loads((tmp_path / "rep" / "manifest.json").read_text(encoding="utf-8"))["metrics"]


@pytest.mark.parametrize("value", EDITED.values(), ids=EDITED.keys())
@pytest.mark.parametrize("names", [("s",), ("s", "t")], ids=["alone", "combined"])
def test_stored_metrics_that_are_no_list_of_names_are_left_out_with_one_warning(tmp_path, capsys, value, names):
    storage = store(tmp_path, value, names)
    warnings, metrics = report(tmp_path, storage, capsys, *names)
    assert warnings == [f"warning: the metrics stored for 's' are not a list of fid, isc, kid (edited store?) and are "
                        f"left out: {value!r}"], warnings  # fmt: skip
    assert metrics == ["fid", "kid"]  # every metric measured


def test_a_list_of_metric_names_is_the_reports_with_no_warning(tmp_path, capsys):
    """The control: the same store with a list of names (one repeated) reports those, silently."""
    for value, shown in ((["kid", "kid"], ["kid"]), ([], ["fid", "kid"])):  # none listed: all
        (tmp_path / str(value)).mkdir()
        assert report(tmp_path / str(value), store(tmp_path / str(value), value), capsys, "s") == ([], shown)
