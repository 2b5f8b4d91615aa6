"""What opening a sweep store guards against: concurrent first starts racing to create the tables."""

from __future__ import annotations

import random

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
