"""W&B settings from the environment and servers that misbehave (issue 14, item 9): the explicit mode wins, a
bad WANDB_MODE costs one warning naming it, and a server that accepts connections but never answers costs
seconds once, not wandb's whole init timeout, and leaves no run folder of its own."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time

import pytest
from helpers.tracking import Warnings, fresh_fallback_state  # noqa: F401 (an autouse fixture)

from bench.cli import main
from bench.tracking import reach
from bench.tracking import wandb_run as tracking
from bench.tracking.conventions import WandbOptions

pytestmark = pytest.mark.timeout(90)  # the bug this guards against costs ~54 s per run


@pytest.mark.parametrize("value", ["bogus", ""])
def test_a_bad_wandb_mode_variable_warns_once_and_the_explicit_mode_wins(tmp_path, monkeypatch, value):
    monkeypatch.setattr(reach, "env_warned", set())
    monkeypatch.setenv("WANDB_MODE", value)
    warnings = Warnings()
    trackers = [tracking.make_tracker("offline", dir=tmp_path / str(i), warn=warnings) for i in range(2)]
    for t in trackers:
        t.log({"a": 1.0}, step=0)
        t.finish()
    assert [t.mode for t in trackers] == ["offline", "offline"]
    assert all(list((tmp_path / str(i) / "wandb").glob("offline-run-*")) for i in range(2))
    assert len(warnings) == 1 and f"WANDB_MODE={value!r}" in warnings[0], warnings


@pytest.mark.parametrize("value", ["OFFLINE", " offline"])
def test_a_wandb_mode_in_capitals_or_with_spaces_is_read_with_one_warning(tmp_path, monkeypatch, value):
    monkeypatch.setattr(reach, "env_warned", set())
    monkeypatch.setenv("WANDB_MODE", value)
    monkeypatch.delitem(sys.modules, "wandb", raising=False)  # wandb reads the variable when first imported
    warnings = Warnings()
    trackers = [tracking.make_tracker("offline", dir=tmp_path / str(i), warn=warnings) for i in range(2)]
    for t in trackers:
        t.finish()
    assert [t.mode for t in trackers] == ["offline", "offline"], warnings
    assert len(warnings) == 1 and f"WANDB_MODE={value!r}" in warnings[0], warnings


def test_the_cli_warns_once_about_wandb_mode(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reach, "env_warned", set())
    monkeypatch.setenv("WANDB_MODE", "bogus")
    run_dir = tmp_path / "run"
    argv = ["train", "--run-dir", str(run_dir), "--max-steps", "1", "--batch-size", "2", "--sample-every", "0",
            "--device", "cpu", "--wandb", "offline"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("WANDB_MODE") == 1 and err.count("warning") == 1, err
    assert list((run_dir / "wandb").glob("offline-run-*"))


@pytest.fixture
def silent_server():
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.usefixtures("no_credentials")
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_server_that_never_answers_costs_one_short_probe(tmp_path, monkeypatch, silent_server, scheme):
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setattr(tracking, "_wandb_base_url", lambda wandb: f"{scheme}://127.0.0.1:{silent_server}")
    monkeypatch.setattr(reach, "REACHABILITY_TIMEOUT_S", 1.0)
    warnings = Warnings()
    start = time.perf_counter()
    trackers = [tracking.make_tracker("online", dir=tmp_path, warn=warnings) for _ in range(2)]
    elapsed = time.perf_counter() - start
    for t in trackers:
        t.finish()
    assert [t.mode for t in trackers] == ["offline", "offline"] and elapsed < 15
    assert len(warnings) == 1 and "no answer" in warnings[0], warnings
    runs = sorted(p.name for p in (tmp_path / "wandb").iterdir() if p.is_dir() and not p.is_symlink())
    assert len(runs) == 2 and all(name.startswith("offline-run-") for name in runs), runs


@pytest.fixture
def rejecting_server():
    """An HTTP server on 127.0.0.1 that answers every request 401, as W&B does for a key it rejects."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Reject(BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"errors":[{"message":"user is not logged in"}]}')

        do_GET = do_POST = do_HEAD = answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Reject)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.usefixtures("no_credentials")
def test_a_rejected_key_logs_the_run_offline_under_the_same_id(tmp_path, monkeypatch, capsys, rejecting_server):
    import wandb

    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef0123abcd")
    monkeypatch.setenv("WANDB_BASE_URL", rejecting_server)
    monkeypatch.setattr(tracking, "_live", set())
    wandb.teardown()  # wandb reads WANDB_BASE_URL when it is set up
    try:
        run_dir = tmp_path / "run"
        argv = ["train", "--run-dir", str(run_dir), "--max-steps", "1", "--batch-size", "2", "--sample-every", "0",
                "--device", "cpu", "--wandb", "online"]  # fmt: skip
        assert main(argv) == 0
    finally:
        wandb.teardown()
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "online init failed" in err and "logging offline to" in err, err
    assert "tracking disabled" not in err and "Failed to export" not in err, err
    folders = [p.name for p in (run_dir / "wandb").iterdir() if p.is_dir() and not p.is_symlink()]
    (offline,) = folders  # no half-written run-* folder of the online try
    run_id = (run_dir / "wandb-run-id").read_text().strip()
    assert offline.startswith("offline-run-") and offline.endswith(run_id), folders
    back = tracking.read_offline_run(run_dir / "wandb" / offline)
    assert back["run"]["exit_code"] == 0 and back["history"], back
    # wandb's telemetry exporter logs its 401s at exit ("Failed to export metrics batch code: 401"): silenced
    assert logging.getLogger("opentelemetry.exporter.otlp.proto.http.metric_exporter").getEffectiveLevel() > 40


LONG = "t" * 65


@pytest.fixture
def fresh_wandb():
    """wandb set up anew (it reads the WANDB_* variables once per setup), and again after the test."""
    import wandb

    wandb.teardown()
    yield
    wandb.teardown()


@pytest.mark.parametrize(
    ("var", "value", "flag"),
    [("WANDB_PROJECT", "a/b", None), ("WANDB_PROJECT", "p" * 129, "mine"), ("WANDB_BASE_URL", "garbage", None)],
)
@pytest.mark.usefixtures("fresh_wandb")
def test_a_wandb_variable_wandb_rejects_is_dropped_with_one_warning(tmp_path, monkeypatch, var, value, flag):
    monkeypatch.setattr(reach, "env_warned", set())
    monkeypatch.setenv(var, value)
    monkeypatch.setenv("WANDB_TAGS", f"keep,{LONG}")
    warnings = Warnings()
    opts = WandbOptions(wandb="offline", wandb_project=flag, wandb_tags=f"mine,{LONG}x")
    trackers = [tracking.make_tracker(opts, dir=tmp_path / str(i), warn=warnings) for i in range(2)]
    for t in trackers:
        t.finish()
    assert [t.mode for t in trackers] == ["offline", "offline"], warnings
    run = tracking.read_offline_run(trackers[0].run_dir)["run"]
    assert run["project"] == (flag or "ddimbench") and run["tags"] == ["keep", "mine"], run
    assert len(warnings) == (2 if flag else 3), warnings  # the flag beats the variable: no word about it
    assert (var in warnings[0]) == (flag is None) and "WANDB_TAGS" in warnings[-2] and LONG in warnings[-1]


@pytest.mark.usefixtures("fresh_wandb")
def test_a_flag_beats_an_invalid_wandb_project(tmp_path, monkeypatch):
    monkeypatch.setattr(reach, "env_warned", set())
    monkeypatch.setenv("WANDB_PROJECT", "a/b")
    warnings = Warnings()
    tracking.make_tracker(WandbOptions(wandb="offline", wandb_project="mine"), dir=tmp_path, warn=warnings).finish()
    assert warnings == [] and "WANDB_PROJECT" not in os.environ


@pytest.mark.usefixtures("no_credentials", "fresh_wandb")
def test_an_invalid_base_url_keeps_the_key_away_from_the_default_server(tmp_path, monkeypatch):
    monkeypatch.setattr(reach, "env_warned", set())
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "garbage")
    warnings = Warnings()
    tracker = tracking.make_tracker("online", dir=tmp_path, warn=warnings)
    tracker.finish()
    assert tracker.mode == "offline" and len(warnings) == 2 and "is not a server address" in warnings[1], warnings
    assert "valid URL" in warnings[0], warnings  # the reason itself, not "1 validation error for Settings"


def test_the_offline_folder_line_escapes_control_characters(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wd\x1b[31mRED"))
    tracking.make_tracker("offline", dir=tmp_path, warn=Warnings()).finish()
    err = capsys.readouterr().err
    assert "offline runs go to" in err and "\x1b" not in err and "\\x1b[31mRED" in err, err


@pytest.mark.usefixtures("no_credentials")
def test_a_sweep_worker_leaves_the_online_unavailable_warning_to_its_parent(tmp_path, monkeypatch):
    warnings = Warnings()
    monkeypatch.setattr(tracking, "_parent_notes", True)
    tracking.make_tracker("online", dir=tmp_path / "w", warn=warnings).finish()
    assert warnings == []
    monkeypatch.setattr(tracking, "_parent_notes", False)
    monkeypatch.setattr(tracking, "_fallback_warnings", set())
    tracker = tracking.make_tracker("online", dir=tmp_path / "p", warn=warnings)
    tracker.finish()
    assert tracker.mode == "offline" and len(warnings) == 1 and "online mode unavailable" in warnings[0], warnings
