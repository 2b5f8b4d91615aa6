"""bench.store.renames: an earlier release's ``schedule`` read as ``spacing``, by one rule wherever it is read
back. A sample folder's ``samples.json`` (``ddimbench sample`` resuming) and a sweep store's trials
(``bench.store.study``) are given the same stored fields and must agree on the spacing they hold."""

from __future__ import annotations

import json

import optuna
import pytest
from helpers.cli import run
from optuna.trial import TrialState

from bench.store import study as store
from bench.store.cell import Cell
from bench.store.renames import current_names

# The stored fields an earlier release, today's release or a hand edit leaves; each reads as spacing=trailing.
VARIANTS = {
    "old name only": {"schedule": "trailing"},
    "new name only": {"spacing": "trailing"},
    "both names: today's wins": {"spacing": "trailing", "schedule": "quad"},
}


@pytest.mark.parametrize("fields", VARIANTS.values(), ids=VARIANTS.keys())
def test_the_spacing_is_read_under_today_s_name(fields) -> None:
    read = current_names({"sampler": "ddim", **fields, "steps": 2})
    assert read == {"sampler": "ddim", "spacing": "trailing", "steps": 2}
    assert list(read) == ["sampler", "spacing", "steps"]  # the renamed field keeps its place


@pytest.mark.parametrize("value", [None, "schedule", ["schedule"], 3])
def test_what_is_not_a_mapping_is_returned_as_it_is(value) -> None:
    assert current_names(value) is value


def test_a_mapping_without_the_old_name_is_returned_as_it_is() -> None:
    fields = {"sampler": "ddim", "spacing": "quad"}
    assert current_names(fields) is fields


def _store_spacing(fields: dict) -> str:
    """The spacing ``bench.store.study`` reads from a trial holding ``fields``."""
    study = optuna.create_study()
    cell = Cell("ddim", "trailing", 2, 0.0, 0)
    attrs = {"cell": cell.key, "sampler": "ddim", "steps": 2, "eta": 0.0, "seed_block": 0, **fields, "fid": 1.0}
    study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=1.0, user_attrs=attrs))
    (record,), _ = store.records_of(study)
    return record.cell.spacing


@pytest.mark.parametrize("fields", VARIANTS.values(), ids=VARIANTS.keys())
def test_sample_folders_and_sweep_stores_read_the_same_spacing(fields, ckpt, tmp_path, capsys) -> None:
    out = tmp_path / "s"
    args = ["sample", "--checkpoint", ckpt, "--out", out, "-n", 1, "--steps", 2, "--device", "cpu"]
    assert run([*args, "--spacing", "trailing"], capsys)[0] == 0
    manifest = json.loads((out / "samples.json").read_text())
    manifest["settings"] = {**{k: v for k, v in manifest["settings"].items() if k != "spacing"}, **fields}
    (out / "samples.json").write_text(json.dumps(manifest))

    assert _store_spacing(fields) == "trailing"
    code, _, err = run([*args, "--spacing", "quad"], capsys)  # not quad (the value of a dropped old name)
    assert code == 2 and "holds samples made with other settings" in err
    assert run([*args, "--spacing", "trailing"], capsys)[0] == 0  # the folder resumes as spacing=trailing
