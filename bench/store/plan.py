"""How the cells of a grid stand: done, running, queued, fresh, failed or to retry (``cell_plan``).

Not Optuna's ``RetryHeartbeatStaleTrialCallback``: it re-queues only heartbeat-stale trials, so a cell stopped by
Ctrl-C / SIGTERM, failed in an earlier run or yielded as a duplicate would never be retried (tests/test_plan.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.store.study import stored_key

MAX_ATTEMPTS = 3  # kills of one cell tolerated per run before it is reported failed


@dataclass
class CellPlan:
    """Where each cell of a grid stands (``cell_plan``)."""

    done: int = 0
    failed: int = 0
    waiting: int = 0
    fresh: list[str] = field(default_factory=list)
    retry: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)


def _states() -> Any:
    from optuna.trial import TrialState

    return TrialState


def _weight(trial: Any) -> int:
    """How much a failed trial counts towards MAX_ATTEMPTS: an error of the cell's own is final; a kill or an
    interruption (Ctrl-C / SIGTERM of that worker) counts once, so the other workers retry the cell."""
    ua = trial.user_attrs
    return MAX_ATTEMPTS if ua.get("error") and not ua.get("interrupted") else 1


def cell_plan(trials: list, keys: list[str], token: str) -> CellPlan:
    """Sort the grid's cells by their trials: done (COMPLETE), running, queued (WAITING), fresh (no
    trial), failed in this run (an error, or MAX_ATTEMPTS kills) or to retry (only failures of
    earlier runs, kills below the limit, or duplicates that yielded)."""
    from optuna.trial import TrialState as S

    by_cell: dict[str, list] = {}
    for t in trials:
        if key := stored_key(t):
            by_cell.setdefault(key, []).append(t)
    plan = CellPlan()
    for key in keys:
        ts = by_cell.get(key, [])
        states = {t.state for t in ts}
        if S.COMPLETE in states:
            plan.done += 1
        elif S.RUNNING in states:
            plan.running.append(key)
        elif S.WAITING in states:
            plan.waiting += 1
        elif not ts:
            plan.fresh.append(key)
        else:  # only FAIL / PRUNED trials: failures of this run count, an error counts as final
            mine = [t for t in ts if t.state == S.FAIL and t.user_attrs.get("run") == token]
            if sum(_weight(t) for t in mine) >= MAX_ATTEMPTS:
                plan.failed += 1
            else:
                plan.retry.append(key)
    return plan
