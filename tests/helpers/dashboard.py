"""Shared helpers of the dashboard and browser tests: a tiny swept store, a running ``ddimbench dashboard``
(always stopped, every wait bounded) and headless Chromium driven from its command line."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from helpers import ROOT

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")  # fmt: skip


# ------------------------------------------------------------------------------------------ the server
class Dashboard:
    """A ``ddimbench dashboard`` subprocess and the URL it printed; its stderr lines are collected."""

    def __init__(self, proc: subprocess.Popen, lines: queue.Queue) -> None:
        self.proc, self._lines, self.seen, self.url = proc, lines, [], ""

    def wait_for(self, pattern: str, timeout: float = 90) -> re.Match | None:
        """The first stderr line matching ``pattern`` (None if the process ends or ``timeout`` passes first)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self._lines.empty():
                    return None
                continue
            if line is None:
                return None
            self.seen.append(line)
            if m := re.search(pattern, line):
                return m
        return None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        """Send ``sig`` and wait for the exit code; the rest of stderr goes to ``seen``."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self.wait_for(r"(?!)", timeout=5)  # drain what is left
        return code


@contextlib.contextmanager
def dashboard(cwd: Path, *args: str, env: dict | None = None) -> Iterator[Dashboard]:
    """Run ``ddimbench dashboard ARGS`` in ``cwd`` until the block ends; it is killed in any case."""
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    cmd = [sys.executable, "-m", "bench.cli", "dashboard", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=full, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    board = Dashboard(proc, lines)
    try:
        yield board
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def start(board: Dashboard) -> str:
    """Wait for the study page's URL the dashboard prints; fail with what it said otherwise."""
    m = board.wait_for(r"(http://\S+/dashboard/studies/\d+)")
    assert m, f"no URL from ddimbench dashboard: {board.seen}"
    board.url = m[1]
    return board.url


# ------------------------------------------------------------------------------------------ the browser
def chromium() -> str:
    """The Chromium binary; in CI (``CI`` set) its absence is a failure, elsewhere a skip."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    message = "chromium is not installed (Debian: apt-get install -y chromium; `make test` installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run_chromium(tmp: Path, url: str, *action: str, budget_ms: int = 5000, timeout: float = 90) -> str:
    """Headless Chromium on ``url`` with a fresh profile; ``action`` e.g. ``--dump-dom`` (its stdout is returned)
    or ``--screenshot=FILE``. ``budget_ms`` of virtual time lets the page's scripts and requests finish."""
    profile = tmp / f"profile-{time.monotonic_ns()}"
    cmd = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
           *action, url]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


class Page(HTMLParser):
    """What a person sees in a dumped DOM: tables as rows of cell texts, images with their attributes,
    headings; script and style contents are not text."""

    def __init__(self, dom: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.titles: list[str] = []  # the heading above each table (in ``tables``' order)
        self.images: list[dict[str, str]] = []
        self.headings: list[str] = []
        self._stack: list[list] = []  # open tables' rows
        self._titles: list[str] = []
        self._cell: list[str] | None = None
        self._heading: list[str] | None = None
        self._skip = 0
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "table":
            self._stack.append([])
            self._titles.append(self.headings[-1] if self.headings else "")
        elif tag == "tr" and self._stack:
            self._stack[-1].append([])
        elif tag in ("td", "th") and self._stack and self._stack[-1]:
            self._cell = []
        elif tag == "img":
            self.images.append({k: v or "" for k, v in attrs})
        elif tag in ("h1", "h2", "h3"):
            self._heading = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag == "table" and self._stack:
            self.tables.append(self._stack.pop())
            self.titles.append(self._titles.pop())
        elif tag in ("td", "th") and self._cell is not None:
            self._stack[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag in ("h1", "h2", "h3") and self._heading is not None:
            self.headings.append(" ".join("".join(self._heading).split()))
            self._heading = None

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        for buf in (self._cell, self._heading):
            if buf is not None:
                buf.append(data)
