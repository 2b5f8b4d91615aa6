"""W&B artifacts for lineage: checkpoints, reference statistics, sample grids and reports.

A run *logs* what it made (``train``: each kept checkpoint as a ``model``; a report: its folder) and *uses*
what it read (a sweep cell: the model it sampled and the reference statistics it scored against), so W&B's
lineage view walks checkpoint -> cells -> report. Files are either uploaded or logged as ``file://``
references; both give the same digest (W&B hashes the entry's name and content), so an artifact a cell
builds from the checkpoint file matches the version ``train`` logged.

Offline, ``run.use_artifact`` refuses every artifact (it needs the server to resolve it), so an offline
run records the use the way ``use_artifact`` itself does for an artifact it was handed: it logs the draft
with "use after commit", and ``wandb sync`` later commits it (an existing version with the same digest is
reused) and marks it used. Logging runs in a background thread: hashing and copying a large checkpoint
never holds up training.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def build(wandb: Any, name: str, kind: str, paths: Iterable[str | Path], upload: bool, metadata: dict | None = None
          ) -> Any:  # fmt: skip
    """A draft ``wandb.Artifact`` holding ``paths`` (files or folders) by upload or by ``file://`` reference."""
    art = wandb.Artifact(name, type=kind, metadata=metadata)
    for path in map(Path, paths):
        if path.is_dir():
            if upload:
                art.add_dir(str(path))
            else:
                art.add_reference(path.resolve().as_uri())
        elif upload:
            art.add_file(str(path), name=path.name)
        else:
            art.add_reference(path.resolve().as_uri(), name=path.name)
    return art


def use(run: Any, art: Any, offline: bool) -> None:
    """Record that ``run`` used the draft ``art`` (see the module doc for the offline path)."""
    if offline:
        # wandb 0.31's use_artifact raises offline; this is the call it makes itself for a draft artifact.
        run._log_artifact(art, is_user_created=True, use_after_commit=True)
    else:
        run.use_artifact(art)


class Background:
    """Runs artifact jobs one after another in a daemon thread; ``join`` waits for them all."""

    def __init__(self, on_error: Callable[[Exception], None]) -> None:
        self._on_error = on_error
        self._last: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], object]) -> None:
        with self._lock:
            before = self._last

            def run() -> None:
                if before is not None:
                    before.join()
                try:
                    job()
                except Exception as exc:
                    self._on_error(exc)

            self._last = threading.Thread(target=run, name="wandb-artifact", daemon=True)
            self._last.start()

    def join(self) -> None:
        with self._lock:
            last = self._last
        if last is not None:
            last.join()
