"""``ddimbench sweep KEY=VALUES name=s --forget``: the grid those KEY=VALUES resolve to, as a run resolves them
(``bench.sweep.resolve``), forgotten in the sweep's store (``bench.store.forget``) instead of run."""

from __future__ import annotations

from bench.store import forget as store
from bench.store.storage import DEFAULT_STORAGE
from bench.sweep.guard import store_errors
from bench.sweep.spec import SweepSpec


def forget_grid(spec: SweepSpec, storage: str | None, dry_run: bool = False) -> str:
    """Forget the grid of ``spec`` (``dry_run``: say what would be forgotten, write nothing); returns the line that
    says what. A database that fails meanwhile is one line (``store_errors``): the same command finishes it."""
    with store_errors(storage or DEFAULT_STORAGE, spec):
        return store.forget_grid(spec.name, storage, spec.to_dict(), dry_run)
