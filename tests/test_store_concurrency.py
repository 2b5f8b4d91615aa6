"""First starts on fresh storage at the same instant (issue 14, item 4): every opener must succeed.

Each opener is a process that imports everything, says it is ready, then waits for one shared "go" file,
so that all of them create the store's tables together: the race that made the losers exit 2
(SQLite: IntegrityError on alembic_version; PostgreSQL: UniqueViolation on pg_type_typname_nsp_index).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
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


# ------------------------------------------------------------------- a filesystem without hard links
# Where ``os.link`` fails (some network and FAT filesystems) the made store is moved into place under a lock
# file, so that no opener replaces a store another one placed first (checking, then moving, was a race).
def _no_hard_links(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Make ``os.link`` fail as on such a filesystem; returns the list of destinations ``os.replace`` moved to."""
    import errno

    def link(src, dst, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted", str(dst))

    real_replace, moved = os.replace, []

    def replace(src, dst, *args, **kwargs):
        moved.append(Path(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "replace", replace)
    return moved


def _tables(path: Path) -> set[str]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _other_store(folder: Path) -> Path:
    """A sweep store another opener made, marked by an extra table."""
    import sqlite3

    import optuna

    made = folder / "theirs.db"
    optuna.storages.RDBStorage(f"sqlite:///{made}").engine.dispose()
    with contextlib.closing(sqlite3.connect(made)) as db:
        db.execute("CREATE TABLE theirs (x)")
        db.commit()
    return made


def test_without_hard_links_a_fresh_store_is_moved_into_place(tmp_path, monkeypatch):
    from bench.store.guard import prepare_sqlite

    moved = _no_hard_links(monkeypatch)
    path = tmp_path / "fresh.db"
    prepare_sqlite(path, "sqlite:///fresh.db")
    assert moved == [path] and {"studies", "trials", "alembic_version"} <= _tables(path)
    assert [p.name for p in tmp_path.iterdir()] == ["fresh.db"]  # no temp file, journal or lock left


@pytest.mark.parametrize("holder", ["removes its lock", "is killed after its move"])
def test_without_hard_links_a_store_placed_by_a_lock_holder_is_used_not_replaced(tmp_path, monkeypatch, holder):
    """The holder's store is used; a lock it left behind (killed between its move and removing the lock) is stale
    once the store is in place, and removed, though its holder (another host) cannot be asked."""
    from bench.store.guard import prepare_sqlite

    folder = tmp_path / "store"
    folder.mkdir()
    path, lock, theirs = folder / "s.db", folder / ".s.db.lock", _other_store(tmp_path)
    lock.write_text("4242 another-host 0123abcd\n")  # another opener holds the lock: it is about to place its store
    moved, linking = _no_hard_links(monkeypatch), threading.Event()
    failing_link = os.link

    def link(src, dst, *args, **kwargs):
        linking.set()
        failing_link(src, dst, *args, **kwargs)

    def other_opener() -> None:
        linking.wait(60)
        time.sleep(0.3)  # while this opener waits for the lock
        os.replace(theirs, path)
        if holder == "removes its lock":
            lock.unlink(missing_ok=True)  # (this opener may have removed it first: the store is in place)

    monkeypatch.setattr(os, "link", link)
    thread = threading.Thread(target=other_opener)
    thread.start()
    prepare_sqlite(path, "sqlite:///s.db")
    thread.join()
    assert "theirs" in _tables(path) and moved == [path]  # the one move is the other opener's
    assert [p.name for p in folder.iterdir()] == ["s.db"]


def _dead_pid() -> int:
    """The pid of a process that has ended (not reused this soon)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_without_hard_links_a_lock_whose_holder_died_is_removed(tmp_path, monkeypatch):
    """A lock naming a process of this host that has ended (killed before its move) is stale: removed, and the
    store is created as if it were not there."""
    import socket

    import bench.store.guard as guard

    moved = _no_hard_links(monkeypatch)
    monkeypatch.setattr(guard, "backoff", lambda attempt: pytest.fail("waited for a dead holder's lock"))
    lock = tmp_path / ".s.db.lock"
    lock.write_text(f"{_dead_pid()} {socket.gethostname()} 0123abcd\n")
    guard.prepare_sqlite(tmp_path / "s.db", "sqlite:///s.db")
    assert moved == [tmp_path / "s.db"] and [p.name for p in tmp_path.iterdir()] == ["s.db"]


@pytest.mark.parametrize(
    ("text", "holder"),
    [
        ("", "an opener that left it empty"),  # killed between creating the lock and naming itself in it
        ("{pid} {host} 0123abcd\n", "{pid} {host}"),  # alive on this host (another opener, still starting)
        ("{pid} another-host 0123abcd\n", "{pid} another-host"),  # not ours to ask
    ],
)
def test_without_hard_links_a_lock_still_held_is_one_line(tmp_path, monkeypatch, text, holder):
    import socket

    import bench.store.guard as guard
    from ddim.errors import DDIMError

    _no_hard_links(monkeypatch)
    monkeypatch.setattr(guard, "backoff", lambda attempt: 0.0)
    names = {"pid": os.getpid(), "host": socket.gethostname()}
    lock = tmp_path / ".s.db.lock"
    lock.write_text(text.format(**names))
    with pytest.raises(
        DDIMError, match=r"\.s\.db\.lock is still held \(by (.*)\); if no other sweep .* delete that"
    ) as err:
        guard.prepare_sqlite(tmp_path / "s.db", "sqlite:///s.db")
    assert f"(by {holder.format(**names)})" in str(err.value)
    assert "\n" not in str(err.value) and [p.name for p in tmp_path.iterdir()] == [".s.db.lock"]


def test_without_hard_links_openers_at_once_place_one_store(tmp_path, monkeypatch):
    """Two openers (threads of one process standing in for processes), each with its own made store: the first to
    move its store pauses until the other has either reached its own move (check-then-move: both pass the check,
    the second replaces the first's store) or is waiting for the lock; exactly one store is moved into place."""
    import bench.store.guard as guard

    moved = _no_hard_links(monkeypatch)
    moving = os.replace
    lock, arrived, first_mover, failed = threading.Lock(), threading.Event(), [], []

    def replace(src, dst, *args, **kwargs):
        with lock:
            first = not first_mover
            first_mover.append(threading.current_thread().name)
        if first:
            assert arrived.wait(60), "the other opener neither moved nor waited for the lock"
        else:
            arrived.set()
        return moving(src, dst, *args, **kwargs)

    def backoff(attempt: int) -> float:
        arrived.set()  # the other opener is waiting: it passed no check, the lock keeps it out
        return 0.01

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(guard, "backoff", backoff)
    path, start = tmp_path / "s.db", threading.Barrier(2)

    def opener() -> None:
        start.wait()
        try:
            guard.prepare_sqlite(path, "sqlite:///s.db")
        except BaseException as exc:  # reported below, with the others
            failed.append(exc)

    threads = [threading.Thread(target=opener, name=f"opener-{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failed and moved == [path] and [p.name for p in tmp_path.iterdir()] == ["s.db"]
