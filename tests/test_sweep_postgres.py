"""Sweeps on a real PostgreSQL server (issue 5): many workers, every cell once, a killed worker's cell retried.

The module starts a private server on loopback in a temporary folder (initdb + pg_ctl) and stops it
at the end. It is skipped, with the reason printed (``-ra``), only where it truly cannot run: no
PostgreSQL binaries, no psycopg2 driver, or a server that does not start. initdb refuses to run as
root; as root the server runs as the ``postgres`` system user (through runuser) when there is one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import optuna
import pytest
from helpers import ROOT
from helpers.postgres import pg_url, server_binary  # noqa: F401  (pg_url: a private server; skipped where none)
from helpers.sweep import RUNNER, complete_cells, kill_mid_cell, spec_of

from bench.store.storage import open_storage
from bench.store.study import load_results
from bench.sweep.resolve import resolve_spec
from bench.sweep.runner import run_sweep

pytestmark = pytest.mark.slow  # a PostgreSQL server and worker processes


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
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, pg_url, "2", *tokens], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    killed = kill_mid_cell(pg_url, "pg-kill", proc)
    assert proc.wait(timeout=180) == 0  # the surviving worker retried the dead one's cell
    cells = complete_cells(pg_url, "pg-kill")
    assert len(cells) == 4 and len(set(cells)) == 4
    study = optuna.load_study(study_name="pg-kill", storage=open_storage(pg_url))
    assert study.trials[killed].state.name == "FAIL"
    # The same command again (as on another machine) finds nothing missing.
    monkeypatch.chdir(tmp_path)
    again = run_sweep(resolve_spec(tokens), storage=pg_url, wandb="disabled", progress=False, heartbeat=1)
    assert again.complete == 4 and sorted(complete_cells(pg_url, "pg-kill")) == sorted(cells)


@pytest.mark.parametrize("path", ["inherited", "/usr/bin:/bin", "nowhere"])
def test_make_system_packages_looks_for_the_server_where_these_tests_do(path, monkeypatch):
    """``make test`` installs Debian's postgresql (``make system-packages``) exactly when this module would not
    find initdb and pg_ctl: its check (run alone here, never the install) agrees with ``server_binary``; with
    neither PATH nor Debian's folder holding them ("nowhere") it reports them missing."""
    make, sh = shutil.which("make"), shutil.which("sh")
    if make is None:
        pytest.skip("no make")
    extra = []
    if path != "inherited":
        monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if path == "nowhere":
        if shutil.which("initdb") or shutil.which("pg_ctl"):
            pytest.skip("initdb or pg_ctl is in /usr/bin or /bin")
        extra = ["PG_LIB=/nonexistent"]
    found = path != "nowhere" and bool(server_binary("initdb") and server_binary("pg_ctl"))
    command = [make, "-s", "-C", str(ROOT), f"SHELL={sh}", *extra, "--eval", "pg-found: ; @$(PG_FOUND)", "pg-found"]
    check = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert (check.returncode == 0) == found, check.stderr


@pytest.mark.parametrize("uid", ["0", "1000"])
def test_make_installs_what_is_missing_in_one_apt_get_run(tmp_path, uid):
    """``make system-packages`` with Chromium and PostgreSQL both missing: as root, one ``apt-get update`` and one
    install of both (two runs at once would race for the dpkg lock); otherwise a note that says what fails in CI
    and the sudo command. apt-get and id are stubs on PATH here: nothing is installed."""
    make, sh = shutil.which("make"), shutil.which("sh")
    if make is None:
        pytest.skip("no make")
    log = tmp_path / "apt.log"
    for name, body in (("apt-get", f'echo "$*" >> {log}'), ("id", f"echo {uid}")):
        (tmp_path / name).write_text(f"#!{sh}\n{body}\n")
        (tmp_path / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}

    def run(*found: str) -> subprocess.CompletedProcess:
        return subprocess.run([make, "-s", "-C", str(ROOT), f"SHELL={sh}", "system-packages", *found], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    def calls() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    done = run("CHROMIUM_FOUND=false", "PG_FOUND=exit 1")
    assert done.returncode == 0, done.stderr
    if uid == "0":
        assert calls() == ["update -qq", "install -y -qq chromium postgresql"] and done.stdout == ""
    else:
        assert calls() == [] and "fail with CI set" in done.stdout
        assert "sudo apt-get install chromium postgresql" in done.stdout
    before = calls()
    present = run("CHROMIUM_FOUND=true", "PG_FOUND=true")  # everything found: nothing run, nothing said
    assert present.returncode == 0 and present.stdout == "" and calls() == before


@pytest.mark.parametrize("ci", ["", "true"])
def test_a_failed_install_fails_make_test_only_in_ci(tmp_path, ci):
    """Offline as root, apt-get fails: outside CI `make test` goes on (those tests skip) with one note; in CI it
    stops, since the tests would fail anyway. apt-get is a failing stub: nothing is installed."""
    make, sh = shutil.which("make"), shutil.which("sh")
    if make is None:
        pytest.skip("no make")
    for name, body in (("apt-get", "exit 100"), ("id", "echo 0")):
        (tmp_path / name).write_text(f"#!{sh}\n{body}\n")
        (tmp_path / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "CI": ci}
    done = subprocess.run([make, "-s", "-C", str(ROOT), f"SHELL={sh}", "system-packages", "CHROMIUM_FOUND=false",
                           "PG_FOUND=true"], env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    if ci:
        assert done.returncode != 0
    else:
        assert done.returncode == 0 and "could not install chromium" in done.stdout, done.stderr
