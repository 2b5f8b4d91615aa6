"""``sweep --workers N`` when its worker processes end abnormally: killed workers leave their cells unmeasured
(exit 1, the summary says how many), workers that all refuse give their one line (exit 2), and a Ctrl-C while
they start prints no traceback (exit 130)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.cli import run
from helpers.workers import fake_workers

from bench.sweep import workers

GRID = ["steps=2,3", "eta=0", "n=16", "batch=8", "interpolation=false", "--wandb", "disabled", "--workers", "2"]


def sweep_args(ckpt: Path, cache: Path, *more: str) -> list[str]:
    return ["sweep", f"checkpoint={ckpt}", f"cache_dir={cache}", "name=w", *GRID, *more]


def test_killed_workers_leave_their_cells_missing_and_the_sweep_fails(ckpt, cache, work, monkeypatch, capsys):
    fake_workers(monkeypatch, [-9, -9], [])
    code, _, err = run(sweep_args(ckpt, cache), capsys)
    assert code == 1, err
    assert "2 worker process(es) ended abnormally (exit codes [-9, -9])" in err
    assert "0 cells complete, 0 failed, 2 not measured (a worker ended abnormally; rerun the same command" in err


def test_workers_that_all_refuse_give_their_one_line(ckpt, cache, work, monkeypatch, capsys):
    fake_workers(monkeypatch, [2, 2], ["checkpoint c.pt is corrupt; retrain"] * 2)
    code, _, err = run(sweep_args(ckpt, cache), capsys)
    assert (code, err.splitlines()[-1]) == (2, "error: checkpoint c.pt is corrupt; retrain"), err
    assert err.count("corrupt") == 1 and "Traceback" not in err


def test_a_workers_refusal_is_shown_printable_and_without_credentials(ckpt, cache, work, monkeypatch, capsys):
    fake_workers(monkeypatch, [2, -9], ["store postgresql://u:hunter2@db/x failed \x1b[2J\nforged line"])
    code, _, err = run(sweep_args(ckpt, cache), capsys)
    assert code == 1, err
    assert "warning: a sweep worker stopped: store postgresql://u:***@db/x failed \\x1b[2J\\nforged line\n" in err
    assert "hunter2" not in err and "\x1b" not in err and "2 not measured" in err


def test_workers_refusing_for_real_exit_2_in_one_line(ckpt, cache, work, monkeypatch, capsys):
    """Spawned workers load a checkpoint truncated after the sweep started: each refuses; the sweep says so once."""
    run_dir = work / "run"
    shutil.copytree(ckpt, run_dir)
    warm = workers.Evaluator.warm_metrics

    def warm_then_truncate(spec) -> None:
        warm(spec)
        for f in (run_dir / "checkpoints").glob("*.pt"):
            f.write_bytes(f.read_bytes()[:1000])

    monkeypatch.setattr(workers.Evaluator, "warm_metrics", staticmethod(warm_then_truncate))
    code, _, err = run(sweep_args(run_dir, cache), capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if "truncated" in line]
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint ") and "Traceback" not in err, err


@pytest.mark.skipif(shutil.which("pgrep") is None, reason="needs pgrep")
def test_ctrl_c_while_the_workers_start_prints_no_traceback(ckpt, cache, work):
    """SIGINT to the process group (a terminal's Ctrl-C) the moment the workers exist, while they import."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "bench.cli", *sweep_args(ckpt, cache)]
    proc = subprocess.Popen(argv, env=env, start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            kids = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "spawn_main"], capture_output=True, text=True)
            if kids.stdout.split():
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.splitlines()[-1] == "interrupted; rerun the same command to resume"


def test_more_workers_than_memory_holds_are_refused_in_one_line(ckpt, cache, work, monkeypatch, capsys):
    """Each spawned worker holds torch and the model (``WORKER_BASELINE_BYTES``) before any sample: 1000 of them
    do not fit in 8 GB even at a tiny n."""
    import ddim.memory

    monkeypatch.setattr(ddim.memory, "available_bytes", lambda device: 8 * 2**30)
    code, _, err = run([*sweep_args(ckpt, cache), "--dry-run"], capsys)
    assert code == 0, err
    code, _, err = run([*sweep_args(ckpt, cache), "--workers", "1000", "--dry-run"], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: n=16 per cell in each of 1000 workers (processes of ~750 MB before any cell)")
    assert "; use fewer --workers" in err
