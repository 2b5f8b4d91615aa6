"""Shared helpers of the sweep tests (the fixtures ``ckpt``, ``cache`` and ``work`` are in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from bench.sweep.resolve import resolve_spec


def spec_of(ckpt: Path, cache: Path, *tokens: str, name: str = "g", search: str | None = None):
    """A resolved sweep spec on the test checkpoint and cache; ``tokens`` are KEY=VALUES."""
    return resolve_spec([f"checkpoint={ckpt}", f"cache_dir={cache}", f"name={name}", *tokens], search=search)


def url(work: Path) -> str:
    """The SQLite store of one test's working directory."""
    return f"sqlite:///{work / 'sweeps.db'}"
