"""Shared helpers of the sweep and report tests (the fixtures ``ckpt``, ``cache`` and ``work`` are in conftest.py)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from bench.store.cell import Cell
from bench.store.record import CellRecord, Measurement, Protocol, Scores
from bench.store.storage import open_storage
from bench.store.study import create_study
from bench.sweep.resolve import resolve_spec

GRID = ["steps=2,3", "eta=0,1", "n=20", "batch=8"]  # four cells of the tiny checkpoint, each well under a second

# One cell and its measurement, as the record and store tests state them.
CELL = Cell("ddim", "uniform", 10, 0.5, 1)
MEASURED = Measurement(
    nfe=10, n=500, seeds="500-999", scores=Scores(fid=1.5, isc_mean=7.5, isc_std=0.25, kid_mean=0.0123, kid_std=0.002),
    wall_s=2.0, images_per_s=250.0, grid="cells/g.png", strip="cells/g-strip.png",
    protocol=Protocol(checkpoint_sha256="c0", extractor="classifier", extractor_sha256="e1", ref_key="digits/k",
                      ref_sha256="r2", device="cpu"),
    versions={"torch": "2.3"},
)  # fmt: skip


def spec_of(ckpt: Path, cache: Path, *tokens: str, name: str = "g", search: str | None = None):
    """A resolved sweep spec on the test checkpoint and cache; ``tokens`` are KEY=VALUES."""
    return resolve_spec([f"checkpoint={ckpt}", f"cache_dir={cache}", f"name={name}", *tokens], search=search)


def url(work: Path) -> str:
    """The SQLite store of one test's working directory."""
    return f"sqlite:///{work / 'sweeps.db'}"


def as_record(flat: Mapping[str, Any]) -> CellRecord:
    """A typed record from a flat dict of the stored attribute names (``fid``, ``kid_mean`` raw, ``grid``, ...),
    built field by field here (not through the store's reader) so report tests state their records plainly."""

    def pick(cls: type) -> dict[str, Any]:
        return {f.name: flat.get(f.name) for f in dataclasses.fields(cls) if f.name in flat}

    scores, protocol = Scores(**pick(Scores)), Protocol(**pick(Protocol))
    plain = {k: v for k, v in pick(Measurement).items() if k not in ("scores", "protocol")}
    cell = Cell(flat["sampler"], flat["spacing"], flat["steps"], flat.get("eta"), flat["seed_block"])
    measurement = Measurement(scores=scores, protocol=protocol, **plain)
    return CellRecord(flat["number"], flat["state"], cell, measurement, flat.get("error"), flat.get("pareto"))


def as_records(flat: Sequence[Mapping[str, Any]]) -> list[CellRecord]:
    return [as_record(r) for r in flat]


def complete_cells(storage: str, name: str) -> list[str]:
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    return [t.user_attrs["cell"] for t in study.get_trials(states=(TrialState.COMPLETE,))]


RUNNER = """
import sys, torch
torch.set_num_threads(1)
from bench.sweep.resolve import resolve_spec
from bench.sweep.runner import run_sweep
spec = resolve_spec(sys.argv[3:])
run_sweep(spec, workers=int(sys.argv[2]), storage=sys.argv[1], wandb="disabled", progress=False, heartbeat=1)
"""


def _until_stopped(pid: int, timeout: float = 10) -> None:
    """Wait until the kernel shows ``pid`` stopped (state T in /proc/PID/stat) or gone."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return
        if stat[stat.rindex(")") + 2] in "tTZX":
            return
        time.sleep(0.001)


def kill_mid_cell(storage: str, name: str, proc: subprocess.Popen, sig: int = signal.SIGKILL, deadline_s=120) -> int:
    """Send ``sig`` to the worker of a RUNNING trial while it is frozen mid-cell; return the trial's number.

    The worker is stopped (SIGSTOP) before its trial is read again, so the cell cannot finish between
    the check and the signal.
    """
    rdb, end = open_storage(storage), time.monotonic() + deadline_s
    while time.monotonic() < end:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "sweep ended before a kill"
        try:
            study = optuna.load_study(study_name=name, storage=rdb)
        except KeyError:  # the study is not created yet
            time.sleep(0.02)
            continue
        for t in study.get_trials(states=(TrialState.RUNNING,)):
            pid = t.user_attrs.get("pid")
            if pid is None or "sampler" not in t.user_attrs:  # not yet measuring: the claim is still being written
                continue
            os.kill(pid, signal.SIGSTOP)
            _until_stopped(pid)  # kill() only queues SIGSTOP: the worker may run on (and finish the cell) meanwhile
            now = study.get_trials(deepcopy=False)[t.number]
            # Still measuring: no result stored yet. (Stopped inside the final commits, the cell would finish
            # after SIGCONT, before the signal's handler runs: the kill would miss.)
            if now.state == TrialState.RUNNING and "result" not in now.user_attrs:
                os.kill(pid, sig)
                os.kill(pid, signal.SIGCONT)
                return t.number
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError("no running cell to kill")


STEPS = (10, 20)
CIFAR = {("ddim", 0.0): (15.0, 8.0), ("ddim", 0.5): (17.5, 9.25), ("sigma_hat", None): (300.0, 120.0)}


def fake_sweep(storage: str, name: str, dataset: str, extractor: str, spacing: str = "quad") -> None:
    """A grid sweep's study as ``run_sweep`` leaves it (protocol, meta, one COMPLETE trial per cell)."""
    protocol = {"mode": "grid", "checkpoint_sha256": "c1fa", "n": 50000, "seed_base": 0, "dataset": dataset,
                "extractor": extractor, "metrics": ["fid", "kid"], "T": 1000}  # fmt: skip
    meta = {"name": name, "dataset": dataset, "extractor": extractor, "n": 50000, "T": 1000, "mode": "grid",
            "metrics": ["fid", "kid"], "checkpoint_sha256": "c1fa", "seeds": "0-49999"}  # fmt: skip
    study = create_study(name, storage, 0, protocol, meta)
    for (sampler, eta), fids in CIFAR.items():
        for steps, fid in zip(STEPS, fids, strict=True):
            cell = Cell(sampler, spacing, steps, eta, 0)
            trial = study.ask()
            for key, value in {"cell": cell.key, **cell.fields()}.items():
                trial.set_user_attr(key, value)
            result = {"fid": fid, "kid_mean": fid / 1000, "kid_std": 0.0001, "nfe": steps, "n": 50000,
                      "seeds": "0-49999", "wall_s": steps * 10.0, "images_per_s": 5000 / steps,
                      "extractor": extractor, "checkpoint_sha256": "c1fa", "device": "cpu"}  # fmt: skip
            trial.set_user_attr("result", result)
            study.tell(trial, fid, state=TrialState.COMPLETE)
