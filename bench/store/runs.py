"""A sweep's runs as its study records them: the first run's provenance is the study user attribute ``meta``
(``bench.store.study.create_study``), and each later run adds a ``run:<time>-<id>`` attribute with its command,
device, git commit and time: an insert under a key of its own, so runs started at once on several machines cannot
overwrite each other, named so that the keys sort by time. A grid run's record also names its grid (``grid``: the
digest of its ``grid:`` attribute, ``bench.store.grids``), so its command is paired with its own grid even when
another run wrote the study's ``spec`` last; records of earlier releases name none.

A report names the runs after the first (``meta["runs"]``, ``meta["last_run"]``) and every run's devices. Every
string read back is passed through ``redact`` (the store is untrusted: ``bench.store.untrusted``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from bench.store.record import devices_text, listed_devices
from bench.store.untrusted import redact

_PREFIX = "run:"
_FIELDS = ("command", "device", "git_commit", "created")


def record_run(study: Any, meta: Mapping[str, Any], grid: str | None = None) -> None:
    """Record a run after the first: the ``command``, ``device``, ``git_commit`` and ``created`` of its ``meta``,
    and the digest of its ``grid`` (None: a search)."""
    run = {k: meta.get(k) for k in _FIELDS} | ({"grid": grid} if grid else {})
    study.set_user_attr(f"{_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}", run)


def later_runs(attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The records of the runs after the first, oldest first, redacted (a record that is no mapping is skipped)."""
    return [redact(v) for k, v in sorted(attrs.items()) if k.startswith(_PREFIX) and isinstance(v, dict)]


def add_runs(meta: dict[str, Any], attrs: Mapping[str, Any]) -> None:
    """Add the later runs of a study (its user attributes ``attrs``) to its provenance ``meta``: how many runs there
    were, the last one's record, and every run's devices."""
    runs = later_runs(attrs)
    if runs:
        meta["runs"] = 1 + len(runs)
        meta["last_run"] = {k: runs[-1].get(k) for k in _FIELDS}
        # Every run's workers' devices: a sweep resumed on other GPUs ran there too (no "differs" warning for them).
        texts = [t for t in (meta.get("device"), *(r.get("device") for r in runs)) if isinstance(t, str) and t]
        if texts:
            meta["device"] = devices_text(d for t in texts for d in listed_devices(t))
