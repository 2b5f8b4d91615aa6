"""Sweep worker processes faked in place (``multiprocessing.get_context`` patched): each ends at once with its exit
code, having reported its errors on the queue; they measure nothing. What ``bench.sweep.workers`` starts is kept."""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence

import pytest

from bench.sweep import workers


def fake_workers(monkeypatch: pytest.MonkeyPatch, codes: Sequence[int] = (), errors: Sequence[str] = ()) -> list:
    """Patch the spawn context with fakes; returns the list that collects each started process's ``args``. The
    i-th process exits with ``codes[i]`` (0 beyond them); the queue holds ``errors``."""
    started: list = []
    ended = iter(codes)

    class Process:
        def __init__(self, target, args, name) -> None:
            self.args, self.name, self.exitcode, self.pid = args, name, next(ended, 0), None

        def start(self) -> None:
            started.append(self.args)

        def is_alive(self) -> bool:
            return False

        def join(self, timeout=None) -> None:
            pass

    class Queue:
        def __init__(self) -> None:
            self.left = list(errors)

        def empty(self) -> bool:
            return not self.left

        def get(self) -> str:
            return self.left.pop(0)

    class Context:
        pass

    Context.Process, Context.SimpleQueue = Process, Queue  # type: ignore[attr-defined]
    monkeypatch.setattr(multiprocessing, "get_context", lambda method: Context)
    monkeypatch.setattr(workers.Evaluator, "warm_metrics", staticmethod(lambda spec: None))
    return started
