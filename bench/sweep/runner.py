"""Sweeps: one Optuna study per sweep; each trial samples one cell, measures it and stores the result.

Protocol (section 5 of the paper; FID over exactly n samples from common seeds):
- a cell is sampled and measured by ``bench.sweep.evaluate.Evaluator``: common random numbers (sample i of
  seed block b starts from the seed ``seed_base + b·n + i`` in every cell), exactly n samples
  measured in memory, ``wall_s`` timing sampling only; the checkpoint is loaded once per worker process;
- each trial stores checkpoint sha256, extractor and its weights' sha256, reference key and sha256,
  device and library versions (``bench.store.study`` lists what is where).

Grid mode: every cell of ``SweepSpec.cells()`` (η only for ddim; ddpm always runs all T steps) is an
enqueued trial whose Optuna params are the cell's (``bench.store.study.enqueue_cell``). Every cell is
measured exactly once, with any number of workers and machines on one storage:
1. a trial first claims its cell (the ``cell`` user attribute), then reads the store and yields
   (PRUNED) if any other RUNNING or COMPLETE trial holds the cell. Because each claims before it
   reads, two trials can never both go on (at worst both yield and the cell is re-enqueued). This
   also absorbs the race of two workers queueing the same missing cell;
2. Optuna's heartbeat marks a dead worker's trial stale; a waiting worker fails it
   (``fail_stale_trials``) and re-enqueues the cell, up to store.MAX_ATTEMPTS times per run;
3. a cell whose evaluation raised is FAIL with a one-line ``error`` and is not retried in that
   run; running the command again (a new run token) retries failed and missing cells and skips
   complete ones.
Search mode (``search=pareto``): multi-objective TPE minimising (FID, NFE), or (FID, seconds per
image) with ``objective=time``, over ranges (``trailing`` spacing unless ``spacing=`` says otherwise:
it starts at T − 1 for any S); the Pareto front is ``study.best_trials`` (shown by ``bench.report.front``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import signal
import socket
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.console import Display, raise_interrupt, sigterm_interrupts
from bench.store.artifacts import open_store, upload_images
from bench.store.cell import Cell
from bench.store.grids import grid_digest, save_spec
from bench.store.guard import disk_full
from bench.store.plan import cell_plan
from bench.store.record import CellRecord, Measurement, devices_text
from bench.store.storage import DEFAULT_STORAGE, open_storage
from bench.store.study import (
    claim,
    create_study,
    enqueue_cell,
    load_study,
    queued_cell,
    records_of,
    save_error,
    save_result,
)
from bench.store.untrusted import safe_url
from bench.sweep.devices import assign_devices
from bench.sweep.evaluate import Evaluator, device_name
from bench.sweep.guard import check_memory_fits, disk_message, store_errors
from bench.sweep.provenance import check_rerun, meta_for, protocol_for
from bench.sweep.spec import Range, SweepSpec
from bench.tracking.sweep_runs import track_cell, track_summary
from bench.tracking.wandb_run import offline_note_from_parent
from ddim.errors import DDIMError, one_line

HEARTBEAT_S = 10  # seconds between heartbeats; a trial is stale after store.GRACE_FACTOR of them
POLL_S = 1.0


@dataclass
class SweepSummary:
    """What a ``run_sweep`` call left in the store."""

    name: str
    storage: str
    complete: int
    failed: int
    records: list[CellRecord] = field(default_factory=list)
    total: int = 0  # cells of the grid, or trials asked for in search mode
    artifacts: str = ""


class _Worker:
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
        holder = claim(trial, cell, {"run": self.token, "pid": os.getpid(), "host": socket.gethostname()})
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


def _worker_main(spec: SweepSpec, url: str, heartbeat: int, token: str, wandb: str | None, threads: int,
                 sha: str, index: int, progress: bool, share: int = 1) -> None:  # fmt: skip
    """Entry point of a spawned worker process: load the checkpoint once, then work the store (``share``: the
    workers on this one's device, which split its memory for ``batch=auto``)."""
    torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, raise_interrupt)
    offline_note_from_parent()  # the sweep's summary run names the offline folder once, not every worker
    try:
        display = Display(progress, live=False)
        with store_errors(url, spec):
            _Worker(spec, url, heartbeat, token, Evaluator(spec, sha, share=share), display, wandb, seed=index).run()
    except DDIMError as exc:
        print(f"sweep worker {os.getpid()}: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _run_workers(spec: SweepSpec, url: str, heartbeat: int, token: str, wandb: str | None, devices: list[str],
                 sha: str, display: Display, progress: bool) -> None:  # fmt: skip
    """Spawn one process per entry of ``devices`` (its device) on the same store; show their progress."""
    import multiprocessing as mp

    Evaluator.warm_metrics(spec)  # the extractor and reference statistics are built once, not raced for
    ctx = mp.get_context("spawn")  # no forked torch / database state
    threads = max(1, torch.get_num_threads() // len(devices))
    args = [(dataclasses.replace(spec, device=d), url, heartbeat, token, wandb, threads, sha, i, progress,
             devices.count(d)) for i, d in enumerate(devices)]  # fmt: skip
    procs = [ctx.Process(target=_worker_main, args=a, name=f"sweep-{a[7]}") for a in args]
    for p in procs:
        p.start()
    rdb = open_storage(url)
    study_id = rdb.get_study_id_from_name(spec.name)
    labels = {c.key: c.label for c in spec.cells()} if spec.search is None else {}
    keys = list(labels)
    try:
        while any(p.is_alive() for p in procs):
            trials = rdb.get_all_trials(study_id, deepcopy=False)
            if keys:
                plan = cell_plan(trials, keys, token)
                display.cells(plan.done + plan.failed, len(keys))
                display.note(f"running: {'; '.join(labels[k] for k in plan.running)}" if plan.running else "")
            else:
                display.cells(sum(t.state.name == "COMPLETE" for t in trials), spec.trials)
            for p in procs:
                p.join(timeout=POLL_S / len(procs))
    except KeyboardInterrupt:  # a terminal's Ctrl-C reaches the workers too; SIGTERM reaches only us
        for p in procs:
            p.join(timeout=5)
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGINT)  # each marks its trial failed; a rerun retries it
        for p in procs:
            p.join(timeout=60)
        raise
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        display.warn(
            f"{len(bad)} worker process(es) ended abnormally (exit codes {bad}); rerun to finish any cell left"
        )


def run_sweep(
    spec: SweepSpec,
    *,
    workers: int | None = None,
    storage: str | None = None,
    wandb: str | None = None,
    progress: bool = True,
    command: str = "",
    heartbeat: int = HEARTBEAT_S,
    devices: str | None = None,
) -> SweepSummary:
    """Run (or finish) the sweep ``spec`` in ``storage`` with ``workers`` local processes (``place_workers``).

    ``storage``: an Optuna RDB URL (default ``sqlite:///ddimbench-sweeps.db`` in the working
    directory). The same call on other machines with the same ``storage`` shares the work. ``wandb``:
    online / offline / disabled, None for online when a key is configured else offline; W&B
    failures never stop the sweep. ``devices``: the workers' devices, comma-separated: one worker per entry
    unless ``workers`` asks for more (they then share the list round-robin), fewer ``workers`` than entries
    being refused (``bench.sweep.devices``); default: one GPU each when several are visible. The extras
    (interpolation, inversion) run on the first worker's device. Returns the store's records after the run.
    """
    placed = place_workers(spec, workers, devices)
    url = storage or DEFAULT_STORAGE
    with store_errors(url, spec):
        return _run_sweep(spec, placed, url, wandb, progress, command, heartbeat)


def place_workers(spec: SweepSpec, workers: int | None = None, devices: str | None = None) -> list[str]:
    """Each local worker's device (``bench.sweep.devices``; ``workers`` None: not given), once what a sweep refuses
    before it starts is ruled out: a bad ``--workers``/``--devices`` and cells that cannot fit in memory. ``sweep
    --dry-run`` calls this too, so it refuses what the run would."""
    placed = assign_devices(spec.device, workers, devices)
    check_memory_fits(spec, len(placed))
    return placed


def dry_run_lines(spec: SweepSpec, workers: int | None, devices: str | None, storage: str | None) -> list[str]:
    """What ``sweep --dry-run`` says on stderr, after refusing what the run would refuse before it starts (the
    workers and devices; a stored sweep of this name under other settings): whether the sweep is new, and where
    the workers go."""
    placed = place_workers(spec, workers, devices)
    stored = check_rerun(spec, storage)
    return [f"sweep {spec.name!r}: " + ("stored: the run adds its missing cells" if stored else "new"),
            f"workers: {len(placed)} on {workers_devices(placed)}"]  # fmt: skip


def workers_devices(devices: list[str]) -> str:
    """The devices that the workers placed on ``devices`` use, as the sweep's provenance records them (each resolved,
    ``auto`` to what it means here, named as trials name theirs: ``device_name``; each once); ``sweep --dry-run``
    prints the same."""
    from ddim.runtime import resolve_device

    return devices_text(device_name(resolve_device(d)) for d in devices)


def _run_sweep(spec: SweepSpec, devices: list[str], url: str, wandb: str | None, progress: bool, command: str,
               heartbeat: int) -> SweepSummary:  # fmt: skip
    from ddim.files import atomic_write_json, sha256_file

    sha = sha256_file(spec.checkpoint)
    device = workers_devices(devices)
    # Storage reachable, then the folders, then the study (which checks the protocol), then sweep.json: a run
    # that cannot write its outputs fails before it creates the study, and a refused rerun overwrites nothing.
    open_storage(url, heartbeat)
    root = Path(spec.artifacts)
    for folder, key in ((root, "artifacts"), (Path(spec.cache_dir), "cache_dir")):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DDIMError(
                f"{key}={folder} cannot be created ({exc.strerror or exc}); choose another {key}="
            ) from None
    open_store(root, create=True)  # an unwritable $DDIMBENCH_ARTIFACT_STORE is refused before the study exists
    grid = None if spec.search else grid_digest(spec.to_dict())  # its run's record names it: its command's own grid
    meta = meta_for(spec, sha, device, command)
    study = create_study(spec.name, url, heartbeat, protocol_for(spec, sha), meta, grid)
    atomic_write_json(root / "sweep.json", spec.to_dict())  # the resolved config beside the outputs
    save_spec(study, spec.to_dict())  # the report shows every run's grid (bench.store.grids)
    token = uuid.uuid4().hex[:12]
    total = len(spec.cells()) if spec.search is None else spec.trials
    display = Display(progress, total, f"sweep {spec.name!r}")
    with sigterm_interrupts():  # pre-emption: the running cell is marked failed, not left running
        try:
            first, ev = dataclasses.replace(spec, device=devices[0]), None  # the extras run on worker 0's device
            if len(devices) == 1:
                ev = Evaluator(first, sha)
                _Worker(spec, url, heartbeat, token, ev, display, wandb).run()
            else:
                _run_workers(spec, url, heartbeat, token, wandb, devices, sha, display, progress)
            study = load_study(spec.name, url)
            if spec.interpolation or spec.inversion:
                (ev or Evaluator(first, sha)).extras(study, display)
            records, _ = records_of(study)
            track_summary(wandb, spec, records, display)
        finally:
            display.close()

    # Cells, not trials (a cell that failed in several runs is one failed cell), and in a grid only this
    # run's cells (the study may hold cells of earlier grids under the same name).
    mine = {c.key for c in spec.cells()} if spec.search is None else None
    ours = [r for r in records if mine is None or r.cell.key in mine]
    complete = len({r.cell.key for r in ours if r.state == "COMPLETE"})
    failed = len({r.cell.key for r in ours if r.state == "FAIL"})
    return SweepSummary(spec.name, safe_url(url), complete, failed, records, total, spec.artifacts)
