"""Forgetting a grid that a run of a sweep asked for by mistake (``ddimbench sweep KEY=VALUES name=s --forget``, the
same KEY=VALUES as the run: the same grid).

Its ``grid:<digest>`` becomes a tombstone (``bench.store.grids.forgotten_mark``), so the report no longer expects its
cells not run nor offers to run them, and its queued cells (WAITING trials that ``enqueue_cell`` made, which any grid
worker of the sweep pops) that no remembered grid has are finished as PRUNED, what a trial that yielded its cell is:
the store's readers skip PRUNED trials (``records_of``) and ``cell_plan`` retries their cells when a grid asks for
them again. A queued trial is first taken as a worker takes one (WAITING to RUNNING, which only one process can do),
so a trial a worker popped meanwhile is left to it. Measured (COMPLETE) trials are never touched: the report shows
them. A sweep of the grid still running goes on queueing and measuring its cells (stop it first). Refusals come
before any write; the tombstone is written before the trials are pruned, and the same command run again finishes
what a failed store left undone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.store.grids import forgotten_mark, grid_attr, is_forgotten, spec_grid, stored_grids
from bench.store.renames import current_names
from bench.store.storage import open_storage
from bench.store.study import load_study, stored_key
from ddim.errors import DDIMError


def forget_grid(name: str, storage: str | None, spec: Mapping[str, Any], dry_run: bool = False) -> str:
    """Forget the grid of the resolved config ``spec`` (``bench.sweep.spec.SweepSpec.to_dict``) in the sweep
    ``name``; returns the line that says what was (``dry_run``: would be) forgotten. A grid that no run of the sweep
    asked for, and a search, are one-line DDIMErrors."""
    from optuna.trial import TrialState

    cells = spec_grid(spec)
    if cells is None:
        raise DDIMError("--forget forgets a grid a run asked for; a search keeps none: drop --search or --forget")
    study = load_study(name, storage)
    attrs, attr = study.user_attrs, grid_attr(spec)
    latest = current_names(attrs.get("spec"))  # a store written before grids were kept has this grid alone
    if attr not in attrs and not (isinstance(latest, Mapping) and grid_attr(latest) == attr):
        grids = len(stored_grids(attrs).runs)
        raise DDIMError(f"no run of sweep {name!r} asked for this grid ({_count(len(cells), 'cell')}); it keeps "
                        f"{_count(grids, 'grid')}: give --forget the KEY=VALUES (and --config) of the run to forget, "
                        "as it was run")  # fmt: skip
    mark = forgotten_mark(spec)
    keys = {c.key for c in cells}
    only = keys - {c.key for c in stored_grids({**attrs, attr: mark}).cells}  # no remembered grid has these
    rdb = open_storage(storage)
    study_id = rdb.get_study_id_from_name(name)
    trials = rdb.get_all_trials(study_id, deepcopy=False)
    queued = [t.number for t in trials if t.state == TrialState.WAITING and stored_key(t) in only]
    measured = len({k for t in trials if t.state == TrialState.COMPLETE and (k := stored_key(t)) in keys})
    again = ", already forgotten" if is_forgotten(attrs.get(attr)) else ""
    what = f"{attr} of sweep {name!r} ({_count(len(cells), 'cell')}{again})"
    kept = f"{_count(measured, 'measured cell')} kept"
    if dry_run:
        return f"would forget {what}: {_count(len(queued), 'queued cell')} to cancel, {kept}; nothing written"
    study.set_user_attr(attr, mark)
    cancelled = sum(_cancel(rdb, rdb.get_trial_id_from_study_id_trial_number(study_id, n)) for n in queued)
    return f"forgot {what}: {_count(cancelled, 'queued cell')} cancelled, {kept}; a run of the same grid brings it back"


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _cancel(rdb: Any, trial_id: int) -> bool:
    """Finish a queued trial as PRUNED unless a worker took it first; True when this call did."""
    import optuna
    from optuna.trial import TrialState

    try:
        if not rdb.set_trial_state_values(trial_id, TrialState.RUNNING):  # popped as a worker pops it: WAITING only
            return False
        return rdb.set_trial_state_values(trial_id, TrialState.PRUNED)
    except optuna.exceptions.UpdateFinishedTrialError:  # finished meanwhile (another --forget, a stale-trial check)
        return False
