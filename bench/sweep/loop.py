"""One process's loop over a sweep's store (``CellWorker``): pick a cell (or a search point), claim it, measure
it, store it; the protocol that measures each cell exactly once is in ``bench.sweep.runner``'s docstring."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import time
import warnings
from typing import Any

from bench.console import Display
from bench.store.artifacts import open_store, upload_images
from bench.store.cell import Cell
from bench.store.guard import disk_full
from bench.store.plan import cell_plan
from bench.store.record import Measurement
from bench.store.storage import GRACE_FACTOR, open_storage
from bench.store.study import (
    claim,
    enqueue_cell,
    queued_cell,
    save_error,
    save_result,
)
from bench.sweep.evaluate import Evaluator
from bench.sweep.guard import disk_message
from bench.sweep.spec import Range, SweepSpec
from bench.tracking.sweep_runs import track_cell
from ddim.errors import DDIMError, one_line

POLL_S = 1.0  # seconds between looks at the store while other workers hold the cells left


class CellWorker:
    """One process's loop over the store: pick a cell (or a search point), claim it, measure it."""

    def __init__(self, spec: SweepSpec, url: str, heartbeat: int, token: str, ev: Evaluator, display: Display,
                 wandb: str | None, seed: int = 0) -> None:  # fmt: skip
        import optuna

        self.spec, self.token, self.ev, self.display, self.wandb = spec, token, ev, display, wandb
        self.rdb = open_storage(url, heartbeat)
        self.grid = spec.search is None
        self.cells = {c.key: c for c in spec.cells()} if self.grid else {}
        self.keys = list(self.cells)
        # A grid runs only queued trials (a trial nobody queued is pruned at once); a search samples with TPE.
        search = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        sampler: Any = optuna.samplers.RandomSampler(seed=seed) if self.grid else search
        self.study = optuna.load_study(study_name=spec.name, storage=self.rdb, sampler=sampler)
        self.study_id = self.rdb.get_study_id_from_name(spec.name)
        self.images = open_store(spec.artifacts, create=True)  # each cell's grid, for optuna-dashboard and reports
        self.url, self.disk_full = url, ""  # a full disk stops the worker (every later cell would fail too)
        self.grace_s, self.unclaimed = GRACE_FACTOR * heartbeat, {}  # trial number -> when first seen unclaimed

    def trials(self, *states: Any) -> list:
        """Fresh from the database (not Optuna's per-process trial cache)."""
        return self.rdb.get_all_trials(self.study_id, deepcopy=False, states=states or None)

    # -- the objective -----------------------------------------------------------------------------
    def _suggest(self, trial: Any) -> Cell:
        spec = self.spec

        def pick(name: str, values: Any, integer: bool = False) -> Any:
            if isinstance(values, Range):
                if integer:
                    lo, hi = int(values.lo), int(values.hi)
                    return trial.suggest_int(name, lo, hi, log=hi > lo)
                return trial.suggest_float(name, values.lo, values.hi)
            return values[0] if len(values) == 1 else trial.suggest_categorical(name, list(values))

        sampler, spacing = pick("sampler", spec.sampler), pick("spacing", spec.spacing)
        steps = spec.T if sampler == "ddpm" else int(pick("steps", spec.steps, True))
        # η to 4 decimals: a cell's key and file names (6 significant digits) then name it exactly, and
        # two suggestions that agree to 4 decimals are the same cell (the second yields to the first).
        eta = round(float(pick("eta", spec.eta)), 4) if sampler == "ddim" else None
        return Cell(sampler, spacing, steps, eta, int(pick("seed_block", spec.seeds, True)))

    def objective(self, trial: Any) -> float | tuple[float, float]:
        for key, value in {"pid": os.getpid(), "host": socket.gethostname()}.items():  # first: live, not silent
            trial.set_user_attr(key, value)
        try:
            return self._objective(trial)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: Optuna marks the trial FAIL; say why
            with contextlib.suppress(Exception):  # a stop, not the cell's fault: retried like a kill
                save_error(trial, "interrupted (Ctrl-C or SIGTERM); rerun the sweep to measure this cell", True)
            raise

    def _objective(self, trial: Any) -> float | tuple[float, float]:
        import optuna

        cell = queued_cell(trial, self.spec.T) if self.grid else self._suggest(trial)
        if cell is None:  # another worker popped the queued trial first: nothing to measure
            raise optuna.TrialPruned("no queued cell")
        # 1. Claim, then read: yield to any other live or finished holder of the cell.
        holder = claim(trial, cell, {"run": self.token})
        if holder is not None:
            raise optuna.TrialPruned(f"cell held by trial #{holder}")
        # 2. Sample and measure; an error is stored with the trial (FAIL) and shown in one line.
        try:
            got = self.ev.evaluate(cell, self.display)
        except Exception as exc:
            msg = one_line(exc, 300)
            self.disk_full = msg if disk_full(exc) else ""  # not the cell's fault: stop; a rerun retries it
            save_error(trial, msg, interrupted=bool(self.disk_full))
            self.display.warn(f"cell {cell.label} failed: {msg}")
            track_cell(self.wandb, self.spec, cell, None, self.display, error=msg)
            raise
        save_result(trial, got)
        try:
            upload_images(trial, self.images, self.spec.artifacts, got)
        except Exception as exc:  # the cell is measured and its grid is on this disk: a warning, not a failure
            self.display.warn(f"cell {cell.label}: its grid was not put in the artifact store ({one_line(exc, 300)})")
        track_cell(self.wandb, self.spec, cell, got, self.display)
        self.display.done(_summary_line(cell, got))
        s = got.scores
        if self.grid:
            return _finite(next((v for v in (s.fid, s.kid_mean) if v is not None), -(s.isc_mean or 0)))
        cost = got.nfe if self.spec.objective == "nfe" else got.wall_s / self.spec.n
        return _finite(s.fid), float(cost)

    # -- the loop ----------------------------------------------------------------------------------
    def _wait(self) -> None:
        import optuna

        time.sleep(POLL_S)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fail_stale_trials is "experimental"
            optuna.storages.fail_stale_trials(self.study)  # a dead worker's trial -> FAIL -> retried
        self._fail_silent()

    def _fail_silent(self) -> None:
        """Fail a RUNNING trial whose objective never started once this worker has seen it so for the grace period.

        Optuna's heartbeat thread starts after ``ask`` returns, so a worker killed or stopped inside ``ask`` (a
        search's sampler runs there; a grid's ``ask`` pops a queued trial that already names its cell) leaves a
        RUNNING trial without a heartbeat, which ``fail_stale_trials`` never fails: the sweep would wait for it for
        ever. A live trial's objective records its ``pid`` and ``host``
        first thing (a worker of an earlier release recorded them only when it claimed its cell).
        Times are this worker's own clock (workers on other hosts may disagree about the time).
        """
        from optuna.trial import TrialState as S

        now = time.monotonic()
        silent = {t.number for t in self.trials(S.RUNNING) if "pid" not in t.user_attrs}
        self.unclaimed = {n: self.unclaimed.get(n, now) for n in silent}
        for n, since in self.unclaimed.items():
            if now - since >= self.grace_s:
                trial_id = self.rdb.get_trial_id_from_study_id_trial_number(self.study_id, n)
                with contextlib.suppress(Exception):  # it ended meanwhile: nothing to fail
                    if self.rdb.set_trial_state_values(trial_id, S.FAIL):
                        self.display.warn(
                            f"trial #{n} never started (its worker stopped in Optuna's ask); failed, retried"
                        )

    def run(self) -> None:
        import optuna
        from optuna.trial import TrialState as S

        while True:
            trials = self.trials()
            if self.grid:
                plan = cell_plan(trials, self.keys, self.token)
                self.display.cells(plan.done + plan.failed, len(self.keys))
                if plan.waiting:
                    pass  # Optuna pops a queued trial first
                elif plan.fresh or plan.retry:
                    key = random.choice(plan.fresh + plan.retry)  # racing workers: the duplicate yields
                    enqueue_cell(self.study, self.cells[key])
                elif plan.running:
                    self._wait()
                    continue
                else:
                    return
            else:
                finished = sum(t.state == S.COMPLETE or (t.state == S.FAIL and "error" in t.user_attrs) for t in trials)
                running = sum(t.state == S.RUNNING for t in trials)
                self.display.cells(finished, self.spec.trials)
                if finished >= self.spec.trials:
                    return
                if finished + running >= self.spec.trials:
                    self._wait()
                    continue
                if len(trials) >= 4 * self.spec.trials + 10:
                    self.display.warn("search stopped early: the sampler keeps proposing settings already measured")
                    return
            try:
                self.study.optimize(self.objective, n_trials=1, catch=(Exception,))
            except optuna.exceptions.UpdateFinishedTrialError:
                self.display.warn("another worker declared this worker's trial dead (late heartbeat); it is retried")
            if self.disk_full:
                raise DDIMError(disk_message(self.disk_full, self.url, self.spec))


def _finite(v: Any) -> float:
    v = float("inf") if v is None else float(v)
    return float("inf") if v != v else v  # Optuna refuses NaN; an unmeasurable cell ranks last


def _summary_line(cell: Cell, m: Measurement) -> str:
    names = {"fid": "FID", "isc_mean": "IS", "kid_mean_x1e3": "KID ×10³"}  # KID ×10³ as in every output
    shown = m.scores.shown()
    scores = ", ".join(f"{name} {shown[k]:.4g}" for k, name in names.items() if shown[k] is not None)
    return f"{cell.label}: {scores}; {m.wall_s:.1f} s sampling, {m.images_per_s:.1f} img/s, NFE {m.nfe}"
