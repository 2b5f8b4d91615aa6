"""Sweeps on a real PostgreSQL server (issue 5): many workers, every cell once, a killed worker's cell retried.

The module starts a private server on loopback in a temporary folder (initdb + pg_ctl) and stops it
at the end. It is skipped, with the reason printed (``-ra``), only where it truly cannot run: no
PostgreSQL binaries, no psycopg2 driver, or a server that does not start. initdb refuses to run as
root; as root the server runs as the ``postgres`` system user (through runuser) when there is one.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from sweep_helpers import spec_of
from test_sweep import _RUNNER, ROOT, _kill_mid_cell, complete_cells

from bench.store.storage import open_storage
from bench.store.study import load_results
from bench.sweep.resolve import resolve_spec
from bench.sweep.runner import run_sweep

pytestmark = pytest.mark.slow  # a PostgreSQL server and worker processes


def _binary(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(result: subprocess.CompletedProcess) -> str:
    lines = (result.stderr or result.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit code {result.returncode}"


@pytest.fixture(scope="module")
def pg_url():
    pytest.importorskip("psycopg2", reason="the psycopg2 driver is not installed (pip install psycopg2-binary)")
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found")
    prefix, owner = [], None
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres system user
        import pwd

        runuser = shutil.which("runuser")
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run initdb as")
        if runuser is None:
            pytest.skip("running as root and runuser is missing, so initdb cannot run as 'postgres'")
        prefix = [runuser, "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="ddimbench-pg-"))
    os.chmod(base, 0o755)
    if owner is not None:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    data, port = base / "data", _free_port()
    made = subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    if made.returncode:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"initdb failed: {_tail(made)}")
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    started = subprocess.run([*prefix, pg_ctl, "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "60",
                              "-o", opts, "start"], capture_output=True, text=True, timeout=120)  # fmt: skip
    if started.returncode:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"the PostgreSQL server did not start: {_tail(started)}")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def test_two_workers_on_postgres_every_cell_once(ckpt, cache, tmp_path, monkeypatch, pg_url):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    spec = spec_of(ckpt, cache, "steps=2,3", "eta=0,1", "n=20", "batch=8", "interpolation=false", name="pg-grid")
    summary = run_sweep(spec, workers=2, storage=pg_url, wandb="disabled", progress=False, heartbeat=1)
    assert summary.complete == 4 and summary.failed == 0
    assert sorted(complete_cells(pg_url, "pg-grid")) == sorted(c.key for c in spec.cells())
    records, meta, _ = load_results("pg-grid", pg_url)
    assert len(records) == 4 and meta["n"] == 20


@pytest.mark.timeout(240)  # a rerun that never ends fails here, not at the suite's 600 s
def test_killed_worker_on_postgres_is_retried(ckpt, cache, tmp_path, monkeypatch, pg_url):  # noqa: F811
    tokens = [f"checkpoint={ckpt}", f"cache_dir={cache}", "name=pg-kill", "steps=8,9", "eta=0,1", "n=24",
              "batch=12", "interpolation=false"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", _RUNNER, pg_url, "2", *tokens], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    killed = _kill_mid_cell(pg_url, "pg-kill", proc)
    assert proc.wait(timeout=180) == 0  # the surviving worker retried the dead one's cell
    cells = complete_cells(pg_url, "pg-kill")
    assert len(cells) == 4 and len(set(cells)) == 4
    study = optuna.load_study(study_name="pg-kill", storage=open_storage(pg_url))
    assert study.trials[killed].state.name == "FAIL"
    # The same command again (as on another machine) finds nothing missing.
    monkeypatch.chdir(tmp_path)
    again = run_sweep(resolve_spec(tokens), storage=pg_url, wandb="disabled", progress=False, heartbeat=1)
    assert again.complete == 4 and sorted(complete_cells(pg_url, "pg-kill")) == sorted(cells)
