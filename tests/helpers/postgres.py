"""A private PostgreSQL server for the tests that need one (``pg_url``): initdb + pg_ctl on a free
loopback port, as the ``postgres`` user when the tests run as root; skipped where there is none."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def _unavailable(reason: str) -> None:
    """No PostgreSQL here: a skip on a developer's machine, a failure in CI (CI set), where make test must run it."""
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is needed in CI: {reason}")
    pytest.skip(reason)


def server_binary(name: str) -> str | None:
    """A PostgreSQL server program (initdb, pg_ctl) on PATH or under Debian's /usr/lib/postgresql/<version>/bin;
    ``make system-packages`` (run by ``make test``) looks in the same places before it installs the package."""
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
    initdb, pg_ctl = server_binary("initdb"), server_binary("pg_ctl")
    if not (initdb and pg_ctl):
        _unavailable("PostgreSQL binaries (initdb, pg_ctl) not found (Debian: apt-get install -y postgresql; "
                     "`make test` installs it)")  # fmt: skip
    prefix, owner = [], None
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres system user
        import pwd

        runuser = shutil.which("runuser")
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no 'postgres' user to run initdb as")
        if runuser is None:
            _unavailable("running as root and runuser is missing, so initdb cannot run as 'postgres'")
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
        _unavailable(f"initdb failed: {_tail(made)}")
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    started = subprocess.run([*prefix, pg_ctl, "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "60",
                              "-o", opts, "start"], capture_output=True, text=True, timeout=120)  # fmt: skip
    if started.returncode:
        shutil.rmtree(base, ignore_errors=True)
        _unavailable(f"the PostgreSQL server did not start: {_tail(started)}")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)
