"""A sweep store holding a value JSON cannot read back (an edited or damaged attribute: truncated text, an integer
longer than Python converts): every command that reads the store says so in one line, exit code 2, no traceback,
and leaves the store as it was. A real tiny sweep on SQLite, offline, CPU only."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import optuna
import pytest
from helpers.cli import run_err as run
from helpers.sweep import url

from bench.report.dashboard import dashboard_app
from bench.store.guard import readable_values, unreadable_value
from bench.store.storage import open_storage
from ddim.errors import DDIMError

pytestmark = pytest.mark.timeout(300)

# (table, key, what replaces its value_json): each is text Optuna's json.loads refuses while loading the study
EDITS = {
    "study-truncated": ("study_user_attributes", "meta", '{"command": "ddimbench sw'),
    "study-long-int": ("study_user_attributes", "protocol", "7" * 5000),
    "trial-truncated": ("trial_user_attributes", "fid", "[1,"),
    "trial-long-int": ("trial_user_attributes", "cell", "-" + "9" * 4400),
}


@pytest.fixture(scope="module")
def measured(tmp_path_factory, ckpt, cache) -> tuple[Path, list[str]]:
    """A store with one measured sweep ``s`` (2 cells), and the sweep's tokens."""
    import os

    from bench.cli import main

    work = tmp_path_factory.mktemp("unreadable")
    tokens = [f"checkpoint={ckpt}", f"cache_dir={cache}", "steps=2,3", "eta=0", "n=10", "batch=10",
              "interpolation=false", "name=s", "--storage", url(work), "--wandb", "disabled"]  # fmt: skip
    here = Path.cwd()
    os.chdir(work)
    try:
        assert main(["sweep", *tokens]) == 0
    finally:
        os.chdir(here)
    return work / "sweeps.db", tokens


def copied(store: Path, tmp_path: Path) -> Path:
    """A copy of ``store`` made by SQLite (what it holds in its write-ahead log included)."""
    path = tmp_path / "sweeps.db"
    with sqlite3.connect(store) as src, sqlite3.connect(path) as dst:
        src.backup(dst)
    src.close()
    dst.close()
    return path


def edited(measured, tmp_path: Path, edit: str) -> Path:
    """A copy of the measured store with the edit ``edit`` made to one attribute."""
    table, key, text = EDITS[edit]
    path = copied(measured[0], tmp_path)
    with sqlite3.connect(path) as db:
        assert db.execute(f"UPDATE {table} SET value_json = ? WHERE key = ?", (text, key)).rowcount >= 1
    db.close()
    return path


def one_line(code: int, err: str, store: Path) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"the sweep store sqlite:///{store} holds a study or trial attribute that is not readable JSON" in err, err
    assert "restore the store from a backup" in err, err


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_every_command_reading_an_edited_store_says_so_in_one_line(measured, tmp_path, monkeypatch, capsys, edit):
    path = edited(measured, tmp_path, edit)
    before = path.read_bytes()
    monkeypatch.chdir(tmp_path)
    storage = ["--storage", f"sqlite:///{path}"]
    tokens = [t for t in measured[1] if not t.startswith("sqlite:///") and t != "--storage"]
    readers = [
        ["report", "s", *storage, "--out", str(tmp_path / "rep"), "--wandb", "disabled"],
        ["report", "s", "s", *storage, "--out", str(tmp_path / "both"), "--wandb", "disabled"],
    ]
    if edit.startswith("study"):
        readers.append(["sweep", *tokens, "--dry-run", *storage])  # it reads the study's attributes, not its trials
    for argv in readers:
        code, err = run(argv, capsys)
        one_line(code, err, path)
        assert path.read_bytes() == before, argv  # nothing written into it
    assert not (tmp_path / "rep").exists() and not (tmp_path / "both").exists()
    code, err = run(["sweep", *tokens, *storage], capsys)  # the resumed sweep (its workers read every trial)
    one_line(code, err, path)
    with pytest.raises(DDIMError, match="is not readable JSON"):  # before the server shows anything
        dashboard_app("s", f"sqlite:///{path}")


def test_the_same_store_unedited_reads_back(measured, tmp_path, capsys):
    """The control: the copy before its edit reports (so the refusals above come from the edits)."""
    path = copied(measured[0], tmp_path)
    code, err = run(["report", "s", "--storage", f"sqlite:///{path}", "--out", str(tmp_path / "rep"), "--wandb",
                     "disabled"], capsys)  # fmt: skip
    assert code == 0 and (tmp_path / "rep" / "manifest.json").is_file(), err


def test_only_json_refusing_what_optuna_reads_is_taken_for_an_edited_store(measured, tmp_path):
    """A ValueError of our own (or a JSON file of ours) is no store's fault: it goes on as it was."""
    with pytest.raises(ValueError, match="Expecting value") as ours:
        with readable_values("sqlite:///x.db"):
            json.loads("[1,")
    assert not unreadable_value(ours.value)
    with pytest.raises(ValueError, match="not ours"), readable_values("sqlite:///x.db"):
        raise ValueError("not ours")
    path = edited(measured, tmp_path, "trial-truncated")
    study = optuna.load_study(study_name="s", storage=open_storage(f"sqlite:///{path}"))
    with pytest.raises(ValueError) as theirs:
        study.get_trials(deepcopy=False)
    assert unreadable_value(theirs.value)
