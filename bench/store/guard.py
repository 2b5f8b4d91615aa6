"""What opening and reading a sweep store guards against: concurrent first starts racing to create the tables, SQLite
files that are not a sweep store (empty, another program's database, damaged), full disks, and stored values that
JSON cannot read back (``readable_values``)."""

from __future__ import annotations

import contextlib
import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from bench.store.untrusted import safe_url
from ddim.errors import DDIMError, one_line

ATTEMPTS = 8  # openers of fresh storage that lose the race to create its tables retry this often
# What a creation race looks like: PostgreSQL's CREATE TYPE/TABLE ("already exists", UniqueViolation on
# pg_type_typname_nsp_index), SQLite's second insert of the schema version (UNIQUE constraint failed).
_RACE_WORDS = ("already exists", "unique constraint", "uniqueviolation", "duplicate key", "integrityerror")


def lost_creation_race(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says another process created the same tables first."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        text = f"{type(seen).__name__}: {seen}".lower()
        if any(word in text for word in _RACE_WORDS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def backoff(attempt: int) -> float:
    """Seconds before retry ``attempt``: doubling from 0.1 s, with jitter so that the losers spread out."""
    return min(0.1 * 2**attempt, 3.0) * (0.5 + random.random())


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///path`` URL (None for other databases and in-memory SQLite)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


_OPTUNA_TABLES = frozenset({"studies", "trials", "alembic_version"})


def prepare_sqlite(path: Path, shown: str) -> None:
    """Refuse a file that is not a sweep store (a zero-byte file, another program's SQLite database, a damaged
    or non-SQLite file) before Optuna writes its tables into it; create a missing store atomically: the tables
    are made in a private file which is then linked into place (or moved, under a lock, where the filesystem
    has no hard links: ``_place_without_link``), so an opener never sees a half-made store, concurrent first
    starts cannot race on the schema, and none replaces a store another one placed first."""
    import sqlite3

    move = f"move {path} aside (a new sweep creates a fresh store) or pass the --storage the sweep used"
    if not path.exists():
        if not path.parent.is_dir():
            raise DDIMError(f"cannot open sweep storage {shown}: the folder {path.parent} does not exist; create it "
                            "or choose another --storage")  # fmt: skip
        _create_sqlite(path, shown)
        return
    if path.is_file() and path.stat().st_size == 0:
        raise DDIMError(f"{path} is an empty file, not a sweep store; {move}")
    try:
        with contextlib.closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=60)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        if disk_full(exc):
            raise DDIMError(
                f"cannot read sweep storage {path}: the disk is full ({exc}); free space and rerun"
            ) from None
        raise DDIMError(f"{path} is not a readable SQLite database ({exc}: damaged or another kind of file); "
                        f"{move}") from None  # fmt: skip
    if not _OPTUNA_TABLES <= tables:
        raise DDIMError(f"{path} is another program's SQLite database, not a sweep store (its tables: "
                        f"{', '.join(sorted(tables)[:4]) or 'none'}); {move}")  # fmt: skip


def _create_sqlite(path: Path, shown: str) -> None:
    import optuna

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        made = optuna.storages.RDBStorage(f"sqlite:///{tmp}")
        made.engine.dispose()
        try:
            os.link(tmp, path)  # fails when another opener made the store first: theirs is used
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            _place_without_link(tmp, path, shown)
    except DDIMError:
        raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc).strip()[:160]}"
        if disk_full(exc):
            raise DDIMError(f"cannot create sweep storage {shown}: the disk is full ({reason}); free space on the "
                            f"disk that holds {path.parent} and rerun") from None  # fmt: skip
        raise DDIMError(f"cannot create sweep storage {shown} ({reason}); choose another --storage") from None
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)


def _place_without_link(tmp: Path, path: Path, shown: str) -> None:
    """Move the made store ``tmp`` to ``path`` unless another opener placed one there first (theirs is used).

    ``os.replace`` overwrites, so checking for ``path`` and moving are done only by the opener that creates the
    lock file ``.<name>.lock`` (``O_EXCL``: one at a time), which names its holder (``_lock_text``); the others
    wait for the store, or for the lock to free (its holder failed). A lock whose holder died is removed
    (``_stale``); one that stays held, e.g. by a process on another host, is a one-line error.
    """
    lock = path.with_name(f".{path.name}.lock")
    mine = _lock_text()
    for attempt in range(ATTEMPTS):
        if path.exists():
            _remove_if_stale(lock, path)  # a holder killed after its move leaves its lock behind
            return
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if not _remove_if_stale(lock, path):
                time.sleep(backoff(attempt))
            continue
        held = False
        try:
            os.write(fd, mine.encode())
            held = _read(lock) == mine  # not removed meanwhile by an opener that found an earlier holder dead
            if held and not path.exists():
                os.replace(tmp, path)
        finally:
            os.close(fd)
            if _read(lock) == mine:
                lock.unlink(missing_ok=True)
        if held:
            return
    if not path.exists():
        holder = " ".join(_read(lock).split()[:2]) or "an opener that left it empty"
        raise DDIMError(f"cannot create sweep storage {shown}: {lock} is still held (by {holder}); if no other "
                        "sweep is starting on this store (one was killed while creating it), delete that file and "
                        "rerun")  # fmt: skip


def _lock_text() -> str:
    """What a lock holder writes into the lock: its pid, host and a token of its own."""
    import socket

    return f"{os.getpid()} {socket.gethostname()} {uuid.uuid4().hex}\n"


def _read(lock: Path) -> str:
    try:
        return lock.read_text(encoding="utf-8", errors="replace")
    except OSError:  # gone meanwhile
        return ""


def _stale(text: str, path: Path) -> bool:
    """Whether the lock holding ``text`` is left over: its store is in place (the move happened, the holder died
    before removing the lock), or its holder's pid is gone on this host. An empty lock (its holder is between
    creating and writing it) or one from another host is live."""
    import socket

    if path.exists():
        return True
    parts = text.split()
    if len(parts) < 3 or not parts[0].isdigit() or parts[1] != socket.gethostname():
        return False
    return not process_alive(int(parts[0]))


def process_alive(pid: int) -> bool:
    """Whether the process ``pid`` runs on this machine (under any user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def _remove_if_stale(lock: Path, path: Path) -> bool:
    """Remove ``lock`` when it is stale; True when it was. It is read again just before removing it, so a lock
    taken since by another opener (other text: a token of its own) is left alone."""
    text = _read(lock)
    if not _stale(text, path) or _read(lock) != text:
        return False
    lock.unlink(missing_ok=True)
    return True


_DISK_FULL_WORDS = ("database or disk is full", "no space left on device", "disk quota exceeded", "diskfull",
                    "could not extend file")  # fmt: skip


def disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is a full disk or quota: OSError ENOSPC/EDQUOT, SQLite's
    SQLITE_FULL, PostgreSQL's DiskFull."""
    import errno

    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = f"{type(seen).__name__}: {seen}".lower()
        if any(word in text for word in _DISK_FULL_WORDS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def unreadable_value(exc: BaseException) -> bool:
    """True when ``exc`` is Optuna failing to read back a value the store keeps as JSON text: a ValueError raised in
    the json module (truncated or edited text, an integer of more digits than Python converts) under Optuna's
    storage code. Any other ValueError is ours or a library's bug and is left alone."""
    if not isinstance(exc, ValueError):
        return False
    files, tb = [], exc.__traceback__
    while tb is not None:
        files.append(Path(tb.tb_frame.f_code.co_filename))
        tb = tb.tb_next
    return bool(files) and files[-1].parent.name == "json" and any("optuna" in f.parts for f in files)


@contextlib.contextmanager
def readable_values(url: str) -> Iterator[None]:
    """Reading the store at ``url``: a study or trial attribute that JSON cannot read back (an edited or damaged store;
    Optuna raises while loading, whatever reads it) as one DDIMError instead of a traceback."""
    try:
        yield
    except ValueError as exc:
        if not unreadable_value(exc):
            raise
        raise DDIMError(
            f"the sweep store {safe_url(url)} holds a study or trial attribute that is not readable JSON "
            f"({one_line(exc)}): it was edited or damaged; restore the store from a backup, or correct that "
            "value (value_json in its study_user_attributes or trial_user_attributes table)"
        ) from None
