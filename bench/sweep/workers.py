"""A sweep's local worker processes (``sweep --workers N``): spawn them on one store, show their progress, and
say how they ended.

A terminal's Ctrl-C reaches every process of the group. SIGINT stays blocked while a worker starts (the mask
is inherited through spawn's exec), so a Ctrl-C during its seconds of imports cannot print a traceback: the
worker unblocks it first thing in ``worker_main``, inside the ``try`` that turns it into exit 130. A worker
reports a refusal (a ``DDIMError``) to this process, which prints it once (``WorkersEnded``)."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import torch

from bench.console import Display, raise_interrupt
from bench.store.plan import cell_plan
from bench.store.storage import open_storage
from bench.store.untrusted import safe_url
from bench.sweep.evaluate import Evaluator
from bench.sweep.guard import store_errors
from bench.sweep.loop import POLL_S, CellWorker
from bench.sweep.spec import SweepSpec
from bench.tracking.wandb_run import offline_note_from_parent
from ddim.allocator import keep_freed_memory
from ddim.errors import DDIMError

REFUSED = 2  # a worker's exit code after a DDIMError


@dataclass
class WorkersEnded:
    """How the workers ended: each one's exit code, and the refusals (one line each) of those that exited 2."""

    codes: list[int | None]
    errors: list[str]

    @property
    def abnormal(self) -> bool:
        return any(self.codes)

    @property
    def all_refused(self) -> bool:
        return bool(self.codes) and all(c == REFUSED for c in self.codes) and len(self.errors) == len(self.codes)


def worker_main(spec: SweepSpec, url: str, heartbeat: int, token: str, wandb: str | None, threads: int,
                sha: str, index: int, progress: bool, share: int = 1, errors: Any = None) -> None:  # fmt: skip
    """Entry point of a spawned worker process: load the checkpoint once, then work the store (``share``: the
    workers on this one's device, which split its memory for ``batch=auto``; ``errors``: where a refusal goes)."""
    try:
        signal.signal(signal.SIGTERM, raise_interrupt)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a Ctrl-C while starting arrives now
        keep_freed_memory()  # as the parent did (ddim.allocator): a spawned process starts with malloc's defaults
        torch.set_num_threads(threads)
        offline_note_from_parent()  # the sweep's summary run names the offline folder once, not every worker
        display = Display(progress, live=False)
        with store_errors(url, spec):
            ev = Evaluator(spec, sha, share=share)
            CellWorker(spec, url, heartbeat, token, ev, display, wandb, seed=index).run()
    except DDIMError as exc:
        if errors is not None:
            errors.put(str(exc))
        sys.exit(REFUSED)
    except KeyboardInterrupt:
        sys.exit(130)


def run_workers(spec: SweepSpec, url: str, heartbeat: int, token: str, wandb: str | None, devices: list[str],
                sha: str, display: Display, progress: bool) -> WorkersEnded:  # fmt: skip
    """Spawn one process per entry of ``devices`` (its device) on the same store; show their progress; warn of
    each worker that ended abnormally."""
    import multiprocessing as mp

    Evaluator.warm_metrics(spec)  # the extractor and reference statistics are built once, not raced for
    ctx = mp.get_context("spawn")  # no forked torch / database state
    errors = ctx.SimpleQueue()
    threads = max(1, torch.get_num_threads() // len(devices))
    args = [(dataclasses.replace(spec, device=d), url, heartbeat, token, wandb, threads, sha, i, progress,
             devices.count(d), errors) for i, d in enumerate(devices)]  # fmt: skip
    procs = [ctx.Process(target=worker_main, args=a, name=f"sweep-{a[7]}") for a in args]
    rdb = open_storage(url)
    study_id = rdb.get_study_id_from_name(spec.name)
    labels = {c.key: c.label for c in spec.cells()} if spec.search is None else {}
    keys = list(labels)
    try:
        _start(procs)
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
        _stop(procs)
        raise
    ended = WorkersEnded([p.exitcode for p in procs], [])
    while not errors.empty():
        ended.errors.append(safe_url(errors.get()))
    if not ended.all_refused:
        for line in dict.fromkeys(ended.errors):
            display.warn(f"a sweep worker stopped: {line}")
        bad = [c for c in ended.codes if c]
        if bad:
            display.warn(f"{len(bad)} worker process(es) ended abnormally (exit codes {bad})")
    return ended


def _start(procs: list) -> None:
    """Start ``procs`` with SIGINT blocked (they inherit the mask) and a Ctrl-C meanwhile held back until all have
    their start data: one cut short would die of an EOFError traceback. Python runs signal handlers in the main
    thread, so a SIGINT delivered to another thread (a progress bar's) is held back too."""
    held: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        for p in procs:
            p.start()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, old)
    if held:
        raise KeyboardInterrupt


def _stop(procs: list) -> None:
    """After a Ctrl-C: give the workers 5 s to mark their cells failed, then SIGTERM those left (a worker still
    starting ends quietly; a working one marks its trial failed, as on Ctrl-C)."""
    for p in procs:
        if p.pid is not None:
            p.join(timeout=5)
    for p in procs:
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        if p.pid is not None:
            p.join(timeout=60)
