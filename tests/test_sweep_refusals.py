"""Sweep inputs and stores that used to end in a traceback (issue 14, item 8): one line, exit code 2."""

from __future__ import annotations

import errno
import json
import sqlite3
from pathlib import Path

import pytest
from helpers.cli import run_err as run
from helpers.sweep import url

from bench.store import storage as store
from bench.store.cell import Cell
from bench.sweep.overrides import load_config, parse_overrides
from ddim.errors import DDIMError

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(300)


def one_line(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


# ------------------------------------------------------------------------------------- sweep files
def test_a_sweep_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("steps: 10\nname: caf\xe9\n".encode("latin-1"))
    with pytest.raises(DDIMError, match=r"is not UTF-8 text \(byte \d+\); save it as UTF-8"):
        load_config(path)


@pytest.mark.parametrize("text", ["steps: 10,20\neta: 0\nsteps: 50\n", "seed_base: 1\nseed-base: 2\n"])
def test_a_key_repeated_in_a_sweep_file_is_refused_like_on_the_command_line(tmp_path, text):
    path = tmp_path / "dup.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DDIMError, match="given twice"):
        load_config(path)
    with pytest.raises(DDIMError, match="given twice"):
        parse_overrides(["steps=10", "steps=20"])


def test_minus_zero_eta_is_the_same_cell_as_zero():
    (eta,) = parse_overrides(["eta=-0"])["eta"]
    assert str(eta) == "0.0"
    assert Cell("ddim", "uniform", 10, eta, 0).key == Cell("ddim", "uniform", 10, 0.0, 0).key
    with pytest.raises(DDIMError, match="repeats a value"):
        parse_overrides(["eta=0,-0.0"])


# ----------------------------------------------------------------------------------- store files
@pytest.mark.parametrize("kind", ["empty", "foreign", "damaged"])
def test_a_local_file_that_is_not_a_sweep_store_is_refused_untouched(tmp_path, capsys, kind):
    path = tmp_path / "sweeps.db"
    if kind == "empty":
        path.touch()
    elif kind == "foreign":
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE users (id INTEGER)")
        db.close()
    else:
        path.write_bytes(b"not a database at all\n" * 300)
    before = path.read_bytes()
    for argv in (["report", "x", "--storage", f"sqlite:///{path}"],
                 ["sweep", "checkpoint=x", "steps=2", "--storage", f"sqlite:///{path}"]):  # fmt: skip
        code, err = run(argv, capsys)
        if argv[0] == "sweep" and "checkpoint" in err:
            continue  # the sweep names its missing checkpoint first; the report reaches the store
        one_line(code, err, str(path), "move")
        assert "postgresql" not in err
    assert path.read_bytes() == before  # no Optuna tables written into it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweeps.db"]


def test_a_fresh_store_is_created_and_reopened(tmp_path):
    path = tmp_path / "new.db"
    store.open_storage(f"sqlite:///{path}")
    assert path.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["new.db"]  # no temp file left
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"studies", "trials", "alembic_version"} <= tables


# ------------------------------------------------------------------------------ a full disk mid-sweep
def test_a_full_disk_for_the_artifacts_stops_the_sweep_in_one_line(ckpt, cache, work, capsys, monkeypatch):
    import bench.sweep.evaluate as evaluate

    real = evaluate.save_grid

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "cells/x.png")

    tokens = [f"checkpoint={ckpt}", f"cache_dir={cache}", "steps=2,3", "eta=0", "n=10", "batch=10",
              "interpolation=false", "--storage", url(work), "--wandb", "disabled"]  # fmt: skip
    monkeypatch.setattr(evaluate, "save_grid", full)
    code, err = run(["sweep", *tokens], capsys)
    one_line(code, err.strip().splitlines()[-1] if err.strip() else err, "disk is full", "free space")
    assert "check --storage" not in err
    monkeypatch.setattr(evaluate, "save_grid", real)
    code, err = run(["sweep", *tokens], capsys)  # once there is room, a rerun measures the cell (no final error)
    assert code == 0, err
    assert "2 cells complete, 0 failed" in err


def test_a_full_sqlite_store_mid_sweep_is_one_line(ckpt, cache, work, capsys):
    from sqlalchemy import event

    from bench.sweep.runner import HEARTBEAT_S

    tokens = [f"checkpoint={ckpt}", f"cache_dir={cache}", "steps=2", "eta=0", "n=10", "batch=10",
              "interpolation=false", "--storage", url(work), "--wandb", "disabled"]  # fmt: skip
    assert run(["sweep", *tokens], capsys)[0] == 0
    engine = store.open_storage(url(work), HEARTBEAT_S).engine
    pages = sqlite3.connect(work / "sweeps.db").execute("PRAGMA page_count").fetchone()[0]

    def no_room(dbapi_connection, _record):  # SQLite reports SQLITE_FULL as soon as the file must grow
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    event.listen(engine, "connect", no_room)
    engine.dispose()
    try:
        code, err = run(["sweep", *tokens[:2], "steps=3,4,5,6", *tokens[3:]], capsys)
    finally:
        event.remove(engine, "connect", no_room)
        engine.dispose()
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err, err
    assert "disk is full" in last and "check --storage" not in last, err


# ------------------------------------------------------------------------------- a tampered store
def test_tampered_trial_attributes_are_left_out_of_the_report(ckpt, cache, work, capsys):
    tokens = [f"checkpoint={ckpt}", f"cache_dir={cache}", "steps=2,3", "eta=0", "n=10", "batch=10", "name=t",
              "interpolation=false", "--storage", url(work), "--wandb", "disabled"]  # fmt: skip
    assert run(["sweep", *tokens], capsys)[0] == 0
    db = sqlite3.connect(work / "sweeps.db")

    def tamper(number: int, key: str, value: str) -> None:  # as a hand edit of the store would
        with db:
            db.execute("UPDATE trial_user_attributes SET value_json = ? WHERE key = ? AND trial_id = "
                       "(SELECT trial_id FROM trials WHERE number = ?)", (value, key, number))  # fmt: skip

    tamper(0, "steps", "[2]")
    tamper(1, "result", json.dumps({"fid": "low", "n": 10}))
    code, err = run(["report", "t", "--storage", url(work), "--out", work / "r", "--wandb", "disabled"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 2 and "Traceback" not in err, err
    assert "2 trial(s) of 't' hold fields of the wrong type" in err and "no result records" in err
    tamper(0, "steps", "2")
    code, err = run(["report", "t", "--storage", url(work), "--out", work / "r", "--wandb", "disabled"], capsys)
    assert code == 0 and "1 trial(s) of 't' hold fields of the wrong type" in err and "left out: #1" in err


def test_eta_for_samplers_that_take_none_is_refused_not_ignored(ckpt, work, capsys):
    code, err = run(["sweep", f"checkpoint={ckpt}", "steps=2", "sampler=plms,dpmpp_2m", "eta=0.5", "--dry-run"], capsys)
    one_line(code, err, "eta applies to the ddim sampler only", "sampler=plms,dpmpp_2m", "drop eta=")
    code, err = run(["sweep", f"checkpoint={ckpt}", "steps=2", "sampler=plms,ddim", "eta=0.5", "--dry-run"], capsys)
    assert code == 0, err  # with ddim in the list, eta is ddim's
    # A config file's eta is for its ddim rows: sampler= on the command line may leave it unused.
    code, err = run(["sweep", "--config", ROOT / "sweeps" / "quick.yaml", f"checkpoint={ckpt}", "sampler=sigma_hat",
                     "--dry-run"], capsys)  # fmt: skip
    assert code == 0, err
    # ... but a sweep file whose own samplers take no eta is refused, naming the file.
    own = work / "own.yaml"
    own.write_text("sampler: [sigma_hat]\neta: [0.5]\nsteps: [2]\n")
    code, err = run(["sweep", "--config", own, f"checkpoint={ckpt}", "--dry-run"], capsys)
    one_line(code, err, "eta applies to the ddim sampler only", f"remove eta from {own}")


def test_a_sweep_rerun_on_another_checkpoint_names_both_files(ckpt, cache, work, capsys, tmp_path_factory):
    from ddim.train_config import TrainConfig
    from ddim.training import train

    other = tmp_path_factory.mktemp("other") / "run"
    train(TrainConfig(dataset="digits", max_steps=1, batch_size=8, run_dir=str(other), sample_every=0, save_every=1,
                      log_every=1, warmup=1, device="cpu", num_workers=0, seed=7))  # fmt: skip
    common = [f"cache_dir={cache}", "steps=2", "eta=0", "n=10", "interpolation=false", "name=x", "--storage",
              url(work), "--wandb", "disabled"]  # fmt: skip
    code, err = run(["sweep", f"checkpoint={ckpt}", *common], capsys)
    assert code == 0, err
    code, err = run(["sweep", f"checkpoint={other}", *common], capsys)
    one_line(code, err, "was run on the checkpoint", str(ckpt), str(other), f"pass checkpoint={ckpt}")


@pytest.mark.parametrize("kind", ["folder", "device"])
def test_a_sweep_config_that_is_not_a_regular_file_is_named_so(tmp_path, kind):
    path = tmp_path if kind == "folder" else "/dev/null"
    with pytest.raises(DDIMError, match="is not a regular file; pass a YAML file to --config"):
        load_config(path)
    with pytest.raises(DDIMError, match="not found; pass an existing YAML file"):
        load_config(tmp_path / "missing.yaml")


def test_dry_run_refuses_what_the_stored_sweep_would_refuse_and_writes_nothing(ckpt, cache, work, capsys):
    store = work / "s.db"
    common = [f"checkpoint={ckpt}", f"cache_dir={cache}", "steps=2", "eta=0", "interpolation=false", "name=d",
              "--storage", f"sqlite:///{store}"]  # fmt: skip
    code, err = run(["sweep", *common, "n=10", "--dry-run"], capsys)
    assert code == 0 and "sweep 'd': new" in err and not store.exists(), err  # no store made by a dry run
    assert run(["sweep", *common, "n=10", "--wandb", "disabled"], capsys)[0] == 0
    before = store.read_bytes()
    code, err = run(["sweep", *common, "n=10", "--dry-run"], capsys)
    assert code == 0 and "sweep 'd': stored: the run adds its missing cells" in err, err
    for other, words in ((["n=12"], ("was run with n=10, not n=12",)), (["n=10", "bf16=true"], ("bf16=false",))):
        code, err = run(["sweep", *common, *other, "--dry-run"], capsys)
        one_line(code, err.strip().splitlines()[-1], *words)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert store.read_bytes() == before


def test_a_grid_beyond_the_cell_cap_is_refused_before_it_is_built(ckpt, work, capsys):
    """``MAX_GRID_CELLS`` holds for a typed grid as for a stored one: the report would not read a larger grid."""
    from bench.store.cell import MAX_GRID_CELLS

    etas = ",".join(f"{i / 1000:g}" for i in range(1000))
    code, err = run(["sweep", f"checkpoint={ckpt}", "steps=2", f"eta={etas}", "seeds=" + ",".join(map(str, range(101))),
                     "--dry-run"], capsys)  # fmt: skip
    one_line(code, err, f"the grid has 101000 cells, more than the {MAX_GRID_CELLS} a sweep may have")
