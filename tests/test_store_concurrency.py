"""First starts on fresh storage at the same instant (issue 14, item 4): every opener must succeed.

Each opener is a process that imports everything, says it is ready, then waits for one shared "go" file,
so that all of them create the store's tables together: the race that made the losers exit 2
(SQLite: IntegrityError on alembic_version; PostgreSQL: UniqueViolation on pg_type_typname_nsp_index).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT
from helpers.postgres import pg_url  # noqa: F401  (a fresh private cluster for this module)

OPENERS = 6

_OPENER = """
import os, sys, time
from pathlib import Path
from bench.store import study as store
import optuna, sqlalchemy  # imported before the start signal, so that every opener starts at once
url, ready, go = sys.argv[1:4]
Path(ready).touch()
while not os.path.exists(go):
    time.sleep(0.001)
study = store.create_study("race", url, 5, {"mode": "grid", "n": 8}, {"command": "test"})
print("opened", study.study_name)
"""


def _open_all_at_once(url: str, folder: Path) -> list[subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    go = folder / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPENER, url, str(folder / f"ready{i}"), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(OPENERS)
    ]
    deadline = time.monotonic() + 120
    while sum((folder / f"ready{i}").exists() for i in range(OPENERS)) < OPENERS:
        assert time.monotonic() < deadline, "the openers did not start"
        assert all(p.poll() is None for p in procs), "an opener died before the start signal"
        time.sleep(0.01)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


def _check(results: list[subprocess.CompletedProcess]) -> None:
    failed = [r.stderr.strip().splitlines()[-1] for r in results if r.returncode != 0]
    assert not failed, f"{len(failed)} of {OPENERS} openers failed: {failed[0]}"
    assert all(r.stdout.strip() == "opened race" for r in results)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_openers_of_a_fresh_sqlite_file_all_succeed(tmp_path):
    for attempt in range(2):  # the race is not lost every time: two fresh files make a miss unlikely
        folder = tmp_path / f"try{attempt}"
        folder.mkdir()
        _check(_open_all_at_once(f"sqlite:///{folder / 'fresh.db'}", folder))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_openers_of_a_fresh_postgres_database_all_succeed(tmp_path, pg_url):  # noqa: F811
    import psycopg2

    base, _, _ = pg_url.rpartition("/")
    dsn = base.replace("postgresql+psycopg2://", "postgresql://") + "/postgres"
    for attempt in range(2):
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE race{attempt}")
        conn.close()
        folder = tmp_path / f"try{attempt}"
        folder.mkdir()
        _check(_open_all_at_once(f"{base}/race{attempt}", folder))


def test_relative_sqlite_url_names_the_current_directorys_file_as_for_workers(tmp_path, monkeypatch):
    """After a chdir, a relative sqlite URL opens the file in the new directory (the one a spawned worker, which
    starts there, opens), not the engine cached for the old directory."""
    import optuna

    from bench.store.storage import open_storage

    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    optuna.create_study(storage=open_storage("sqlite:///rel-store.db"), study_name="in-a")
    monkeypatch.chdir(second)
    assert optuna.get_all_study_names(storage=open_storage("sqlite:///rel-store.db")) == []
    assert (second / "rel-store.db").exists()
