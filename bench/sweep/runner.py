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
   (``fail_stale_trials``) and re-enqueues the cell, up to store.MAX_ATTEMPTS times per run; a trial
   stopped inside Optuna's ``ask`` never beats nor starts its objective: a waiting worker fails it after the
   same grace (``CellWorker._fail_silent``), so no grid or search waits for it;
3. a cell whose evaluation raised is FAIL with a one-line ``error`` and is not retried in that
   run; running the command again (a new run token) retries failed and missing cells and skips
   complete ones.
Search mode (``search=pareto``): multi-objective TPE minimising (FID, NFE), or (FID, seconds per
image) with ``objective=time``, over ranges (``trailing`` spacing unless ``spacing=`` says otherwise:
it starts at T − 1 for any S); the Pareto front is ``study.best_trials`` (shown by ``bench.report.front``).
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench.console import Display, note, sigterm_interrupts, warn
from bench.store.artifacts import open_store
from bench.store.grids import grid_digest, save_spec
from bench.store.record import CellRecord, devices_text
from bench.store.storage import DEFAULT_STORAGE, open_storage
from bench.store.study import (
    create_study,
    load_study,
    records_of,
)
from bench.store.untrusted import safe_url
from bench.sweep.devices import assign_devices
from bench.sweep.evaluate import Evaluator, device_name
from bench.sweep.guard import check_memory_fits, store_errors
from bench.sweep.loop import CellWorker
from bench.sweep.provenance import check_rerun, meta_for, protocol_for
from bench.sweep.spec import SweepSpec
from bench.tracking.sweep_runs import track_summary
from ddim.errors import DDIMError

HEARTBEAT_S = 10  # seconds between heartbeats; a trial is stale after store.GRACE_FACTOR of them


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
    missing: int = 0  # cells (or trials) left unmeasured by a worker that ended abnormally: rerun to finish


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
    lines = [f"sweep {spec.name!r}: " + ("stored: the run adds its missing cells" if stored else "new"),
             f"workers: {len(placed)} on {workers_devices(placed)}"]  # fmt: skip
    slow = slow_bf16_on(spec, placed)
    return [*lines, f"warning: {slow}"] if slow else lines


def slow_bf16_on(spec: SweepSpec, devices: list[str]) -> str | None:
    """Why ``bf16=true`` would run slowly on one of the workers' ``devices`` (``ddim.runtime.slow_bf16``), or None."""
    from ddim.runtime import resolve_device, slow_bf16

    whys = (slow_bf16(resolve_device(d)) for d in dict.fromkeys(devices)) if spec.bf16 else ()
    return next((why for why in whys if why), None)


def workers_devices(devices: list[str]) -> str:
    """The devices that the workers placed on ``devices`` use, as the sweep's provenance records them (each resolved,
    ``auto`` to what it means here, named as trials name theirs: ``device_name``; each once); ``sweep --dry-run``
    prints the same."""
    from ddim.runtime import resolve_device

    return devices_text(device_name(resolve_device(d)) for d in devices)


def _run_sweep(spec: SweepSpec, devices: list[str], url: str, wandb: str | None, progress: bool, command: str,
               heartbeat: int) -> SweepSummary:  # fmt: skip
    from ddim import fused_norm
    from ddim.files import atomic_write_json, sha256_file
    from ddim.runtime import resolve_device, use_compile

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
    if slow := slow_bf16_on(spec, devices):  # past the refusals of the sweep's settings: an error is one line alone
        warn(slow)
    used = [resolve_device(d) for d in dict.fromkeys(devices)]
    if spec.channels_last and any(fused_norm.needs_build(d, compiled=use_compile(spec.compile, d), bf16=spec.bf16)
                                  for d in used):  # fmt: skip
        note(fused_norm.BUILD_NOTE)
        fused_norm.kernels()  # here, once, before the progress display, rather than in each worker at once
    display = Display(progress, total, f"sweep {spec.name!r}")
    with sigterm_interrupts():  # pre-emption: the running cell is marked failed, not left running
        try:
            first, ev, ended = dataclasses.replace(spec, device=devices[0]), None, None  # extras: worker 0's device
            if len(devices) == 1:
                ev = Evaluator(first, sha)
                CellWorker(spec, url, heartbeat, token, ev, display, wandb).run()
            else:
                from bench.sweep.workers import run_workers

                ended = run_workers(spec, url, heartbeat, token, wandb, devices, sha, display, progress)
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
    measured = len({r.cell.key for r in ours if r.state in ("COMPLETE", "FAIL")})
    missing = max(0, total - measured) if ended is not None and ended.abnormal else 0
    if missing and ended is not None and ended.all_refused:
        raise DDIMError(ended.errors[0])  # every worker refused the same way: the one line a single worker gives
    return SweepSummary(spec.name, safe_url(url), complete, failed, records, total, spec.artifacts, missing)
