"""bench.store.plan: where each cell of a grid stands, and which cells a run retries."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from bench.store.cell import Cell
from bench.store.plan import MAX_ATTEMPTS, cell_plan

KEY = Cell("ddim", "uniform", 10, 0.0, 0).key


def retrying_study(tmp_path: Path) -> optuna.Study:
    """A study on storage with Optuna's own retry of stale trials (``RetryHeartbeatStaleTrialCallback``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_ATTEMPTS)
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'p.db'}", heartbeat_interval=60,
                                             grace_period=120, heartbeat_stale_trial_callback=retry)  # fmt: skip
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=storage)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask/tell here stand for a worker's optimize
@pytest.mark.parametrize(
    "run, attrs, state",
    [
        ("now", {"error": "interrupted (Ctrl-C or SIGTERM)", "interrupted": True}, TrialState.FAIL),  # this run's stop
        ("before", {"error": "CUDA out of memory"}, TrialState.FAIL),  # an earlier run's error: a rerun retries it
        ("now", {}, TrialState.PRUNED),  # a duplicate that yielded to a holder which then failed
    ],
)
def test_cells_optuna_s_stale_trial_retry_misses_are_retried_by_the_plan(tmp_path, run, attrs, state):
    study = retrying_study(tmp_path)
    trial = study.ask()
    for k, v in {"cell": KEY, "run": run, **attrs}.items():
        trial.set_user_attr(k, v)
    study.tell(trial, state=state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # what every waiting worker calls: Optuna queues nothing
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [state]
    assert cell_plan(trials, [KEY], "now").retry == [KEY]
