"""Shared pieces of the W&B tests: a recording ``warn`` and fixtures that start each test as a new
process with no credentials would."""

from __future__ import annotations

import pytest

from bench.tracking import reach
from bench.tracking import wandb_run as tracking


class Warnings(list):
    """A ``warn`` callback that records its lines."""

    def __call__(self, message: str) -> None:
        assert "\n" not in message
        self.append(message)


@pytest.fixture(autouse=True)
def fresh_fallback_state(monkeypatch):
    """Each test starts as a new process would: no remembered online failure, no warning shown."""
    monkeypatch.setattr(reach, "online_failures", {})
    monkeypatch.setattr(reach, "bad_base_url", [])
    monkeypatch.setattr(tracking, "_fallback_warnings", set())
    monkeypatch.setattr(tracking, "_offline_said", set())
