"""bench.store.record: a cell's result as one typed record, its columns (results.csv, W&B tables), and its
storage by bench.store.study (the Optuna attributes it is written to and read back from). No torch."""

from __future__ import annotations

import dataclasses
import math

import optuna
import pytest
from optuna.trial import TrialState

from bench.store import study as store
from bench.store.cell import Cell
from bench.store.record import CellRecord, Measurement, Protocol, Scores, columns, table

CELL = Cell("ddim", "uniform", 10, 0.5, 1)
MEASURED = Measurement(
    nfe=10, n=500, seeds="500-999", scores=Scores(fid=1.5, isc_mean=7.5, isc_std=0.25, kid_mean=0.0123, kid_std=0.002),
    wall_s=2.0, images_per_s=250.0, grid="cells/g.png", strip="cells/g-strip.png",
    protocol=Protocol(checkpoint_sha256="c0", extractor="classifier", extractor_sha256="e1", ref_key="digits/k",
                      ref_sha256="r2", device="cpu"),
    versions={"torch": "2.3"},
)  # fmt: skip


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
    expected = {k: v for k, v in leaves(record).items() if k != "versions"}  # versions: stored, not shown
    for k in ("kid_mean", "kid_std"):
        expected[f"{k}_x1e3"] = expected.pop(k) * 1000.0
    assert cols == expected
    # The trial and its cell, the measured values, error, images, then the rest alphabetically.
    head = ["number", "state", "spacing", "sampler", "eta", "steps", "seed_block", "nfe", "n", "seeds", "fid"]
    assert list(cols)[: len(head)] == head
    assert list(cols)[-7:] == sorted(list(cols)[-7:]) and list(cols)[-8] == "strip"


def test_an_unmeasured_record_has_every_column_empty_and_no_pareto_column_outside_searches():
    failed = CellRecord(3, "FAIL", Cell("sigma_hat", "quad", 20, None, 0), None, error="boom")
    assert failed.measured == Measurement() and failed.scores == Scores()
    names, rows = table([failed, CellRecord(4, "COMPLETE", CELL, MEASURED)])
    assert "pareto" not in names and names == list(columns(failed))
    assert rows[0][names.index("fid")] is None and rows[0][names.index("error")] == "boom"
    assert rows[1][names.index("kid_mean_x1e3")] == pytest.approx(12.3)
    names, _ = table([dataclasses.replace(failed, pareto=False)])
    assert names[-1] == "ref_sha256" and "pareto" in names


def test_scores_split_and_shown():
    scores, rest = Scores.split({"fid": 2.0, "kid_mean": 0.5, "n": 20, "extractor": "classifier"})
    assert scores == Scores(fid=2.0, kid_mean=0.5) and rest == {"n": 20, "extractor": "classifier"}
    assert scores.shown() == {"fid": 2.0, "isc_mean": None, "isc_std": None, "kid_mean_x1e3": 500.0,
                              "kid_std_x1e3": None}  # fmt: skip
    assert Scores.scale("kid_mean") == 1000.0 and Scores.scale("fid") == 1.0


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
                                    "extractor_sha256", "ref_key", "ref_sha256", "device", "versions"}  # fmt: skip
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
