"""Shared helpers of the sweep and report tests (the fixtures ``ckpt``, ``cache`` and ``work`` are in conftest.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.store.cell import Cell
from bench.store.record import CellRecord, Measurement, Protocol, Scores
from bench.sweep.resolve import resolve_spec


def spec_of(ckpt: Path, cache: Path, *tokens: str, name: str = "g", search: str | None = None):
    """A resolved sweep spec on the test checkpoint and cache; ``tokens`` are KEY=VALUES."""
    return resolve_spec([f"checkpoint={ckpt}", f"cache_dir={cache}", f"name={name}", *tokens], search=search)


def url(work: Path) -> str:
    """The SQLite store of one test's working directory."""
    return f"sqlite:///{work / 'sweeps.db'}"


def as_record(flat: Mapping[str, Any]) -> CellRecord:
    """A typed record from a flat dict of the stored attribute names (``fid``, ``kid_mean`` raw, ``grid``, ...),
    built field by field here (not through the store's reader) so report tests state their records plainly."""

    def pick(cls: type) -> dict[str, Any]:
        return {f.name: flat.get(f.name) for f in dataclasses.fields(cls) if f.name in flat}

    scores, protocol = Scores(**pick(Scores)), Protocol(**pick(Protocol))
    plain = {k: v for k, v in pick(Measurement).items() if k not in ("scores", "protocol")}
    cell = Cell(flat["sampler"], flat["schedule"], flat["steps"], flat.get("eta"), flat["seed_block"])
    measurement = Measurement(scores=scores, protocol=protocol, **plain)
    return CellRecord(flat["number"], flat["state"], cell, measurement, flat.get("error"), flat.get("pareto"))


def as_records(flat: Sequence[Mapping[str, Any]]) -> list[CellRecord]:
    return [as_record(r) for r in flat]
