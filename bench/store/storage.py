"""Opening the sweep store: an Optuna RDB storage per URL and process.

Any Optuna RDB URL works. The default, ``sqlite:///ddimbench-sweeps.db``, is a SQLite file in the
working directory (fine for workers on one machine); many machines share a PostgreSQL database
(``postgresql+psycopg2://user:password@host:5432/db``). Trials are written with an Optuna heartbeat,
so a worker that dies mid-cell leaves a RUNNING trial that goes stale and is retried. What is stored
is described in ``bench.store.study``.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

from bench.store.guard import ATTEMPTS, backoff, disk_full, lost_creation_race, prepare_sqlite, sqlite_path
from bench.store.untrusted import safe_url, url_password
from ddim.errors import DDIMError

if TYPE_CHECKING:
    import optuna

DEFAULT_STORAGE = "sqlite:///ddimbench-sweeps.db"
GRACE_FACTOR = 4  # a trial is stale after GRACE_FACTOR heartbeats without a beat


_OPEN: dict[tuple[str, int | None], Any] = {}


def _with_driver(url: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2; use psycopg2 when only that driver is installed."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        if importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def open_storage(url: str | None = None, heartbeat: int | None = None) -> optuna.storages.RDBStorage:
    """An RDB storage (``heartbeat`` seconds between beats, or none for read-only use).

    An unreachable server, a missing driver or a bad URL is a one-line DDIMError.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own progress and errors are shown instead
    url = _with_driver(url or DEFAULT_STORAGE)
    shown = safe_url(url)
    fix = "check --storage (e.g. postgresql+psycopg2://user:pw@host/db) or omit it for the local SQLite file"
    if "://" not in url:
        raise DDIMError(f"storage {shown!r} is not a database URL; {fix}")
    sqlite_file = sqlite_path(url)
    if sqlite_file is not None and not sqlite_file.is_absolute():
        # Cached engines are keyed by URL: made absolute, a relative URL opened after a chdir reaches the new
        # directory's file (the one spawned workers, which start there, open), not the old directory's engine.
        sqlite_file = sqlite_file.absolute()
        url = f"sqlite:///{sqlite_file}" + "".join(f"?{q}" for q in url.split("?", 1)[1:])
    if sqlite_file is not None:
        fix = f"check the SQLite file {sqlite_file} and its folder, or pass the --storage the sweep used"
    if "@" in (url_password(url) or ""):  # SQLAlchemy ends the password at the first "@": the rest becomes the host
        raise DDIMError(f"storage {shown}: the password holds a raw '@'; write it as %40 (user:p%40ss@host)")
    if url.startswith("sqlite"):
        engine = {"connect_args": {"timeout": 60}}  # several local workers share one file
    else:
        engine = {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            engine["connect_args"] = {"connect_timeout": 10}
    memo = (url, heartbeat or None)
    if memo in _OPEN:  # one engine (and connection pool) per storage and process
        return _OPEN[memo]
    if sqlite_file is not None:
        prepare_sqlite(sqlite_file, shown)
    beat = {}
    if heartbeat:
        beat = {"heartbeat_interval": int(heartbeat), "grace_period": GRACE_FACTOR * int(heartbeat)}
    for attempt in range(ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat options
                _OPEN[memo] = optuna.storages.RDBStorage(url, engine_kwargs=engine, **beat)
                if url.startswith("sqlite"):
                    _fast_sqlite(_OPEN[memo])
                return _OPEN[memo]
        except ModuleNotFoundError as exc:
            raise DDIMError(
                f"storage {shown}: the database driver {exc.name!r} is not installed; "
                "pip install psycopg2-binary (PostgreSQL) or use a sqlite:/// URL"
            ) from None
        except Exception as exc:  # sqlalchemy raises many kinds: OperationalError, ArgumentError, ...
            text = str(exc).strip().splitlines()
            reason = f"{type(exc).__name__}: {safe_url(text[0])[:160]}" if text else type(exc).__name__
            if disk_full(exc):
                raise DDIMError(f"cannot open sweep storage {shown}: the disk is full ({reason}); free space on "
                                "the disk that holds it and rerun") from None  # fmt: skip
            if lost_creation_race(exc) and attempt < ATTEMPTS - 1:
                _OPEN.pop(memo, None)
                time.sleep(backoff(attempt))
                continue
            raise DDIMError(f"cannot open sweep storage {shown} ({reason}); {fix}") from None
    raise AssertionError("unreachable")


def _fast_sqlite(storage: Any) -> None:
    """WAL journal + synchronous=NORMAL: a commit no longer waits for two fsyncs (a trial makes dozens).

    Still safe for several processes on one machine; a power cut can lose the last commits, which a
    rerun simply measures again.
    """
    from sqlalchemy import event

    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # connections opened while creating the tables get the pragmas too
