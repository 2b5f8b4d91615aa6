"""What the harness prints on stderr: warnings (one printer), the progress display of long work, and the
command line's texts that need no Typer (option help, usage errors as one line, the version).

Progress is a live rich bar on a terminal. When stderr is not a terminal (``ddimbench train ... 2>
train.log``, a batch job) a live bar would print nothing until the end, so the same displays print
plain lines instead: ``LazyBar`` (train, sample) at the first update, then every ``LINE_EVERY_S``
seconds and at the end, e.g. ``train: step 1200/2000 (60%), loss 0.0312, 950 images/s, ETA 1m24s``;
the sweep's ``Display`` one line per finished cell and the count of cells done.
"""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from ddim.errors import printable
from ddim.names import DEVICES

# The command line's option help that names more than one command's choices.
DEVICE_METAVAR = "<" + "|".join((*DEVICES, "cuda:N")) + ">"  # cuda:N is not a fixed list: checked by the library
DEVICE_HELP = "auto (CUDA when present), cpu, cuda or cuda:N."
WANDB_HELP = "W&B mode (default: online when a W&B key is configured, else offline)."
INCEPTION_HELP = "Inception weights file (default: $DDIMBENCH_INCEPTION_WEIGHTS, else torch-fidelity's, hub cache)."
DOWNLOAD_HELP = "Fetch what is missing first: MNIST / CIFAR-10 into --data-root, torch-fidelity's Inception weights."
COMPARE_HELP = "Show the paper's FID beside the sweep of that dataset (repeat per sweep)."  # its choices: the metavar
FORCE_HELP = (
    "With --compare-paper: show the paper's columns even for another dataset or extractor, labelled as not comparable."
)


def warn(line: str, console: Any = None) -> None:
    """One warning line on stderr in the CLI's ``warning: `` convention (through ``console``, a rich
    Console, while a live progress bar owns the terminal), ``printable``; never raises."""
    _line(f"warning: {printable(line)}", console, "yellow")


def note(line: str, console: Any = None) -> None:
    """One status line on stderr (``note: ``: what is happening and why it takes a while), as ``warn`` prints."""
    _line(f"note: {printable(line)}", console, None)


def _line(text: str, console: Any, style: str | None) -> None:
    try:
        if console is not None:
            console.print(text, markup=False, highlight=False, style=style, soft_wrap=True)
        else:
            print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # a closed or broken stderr must not stop the work
        pass


class Display:
    """Progress on stderr: cells done / total with ETA, the current cell and its sampling steps.

    A live rich bar on a terminal, otherwise one line per finished cell and (``LazyBar``'s plain lines)
    the count of cells done with an ETA; ``enabled=False`` silences both. Warnings always print.
    """

    def __init__(self, enabled: bool, total: int = 0, title: str = "", live: bool = True) -> None:
        self.console, self.bar, self.label = Console(stderr=True), None, ""
        # Worker processes (live=False) print lines only where the parent shows no live bar.
        self.enabled = enabled and (live or not self.console.is_terminal)
        plain = self.enabled and live and not self.console.is_terminal  # the process that counts cells
        self.lines = LazyBar(title, self.console, unit="cells", every_s=0) if plain else None
        if self.enabled and live and self.console.is_terminal:
            from rich import progress as rp

            columns = (rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                       rp.TimeElapsedColumn(), rp.TextColumn("ETA"), rp.TimeRemainingColumn())  # fmt: skip
            self.bar = rp.Progress(*columns, console=self.console)
            self.cells_task = self.bar.add_task(title, total=total)
            self.step_task = self.bar.add_task("", total=1, visible=False)
            self.note_task = self.bar.add_task("", total=None, visible=False)  # text only: running cells, extras
            self.bar.start()

    def cells(self, done: int, total: int) -> None:
        if self.lines:
            self.lines.update(done, total)
        if self.bar:
            self.bar.update(self.cells_task, completed=done, total=total)

    def note(self, text: str) -> None:
        """A line of text under the bar (the cells other workers run, the extras being made)."""
        if self.bar:
            self.bar.update(self.step_task, visible=False)
            self.bar.update(self.note_task, description=f"  {printable(text)}"[:150], visible=bool(text))

    def cell_start(self, label: str, steps: int) -> None:
        self.label = label
        if self.bar:
            self.bar.update(self.note_task, visible=False)
            self.bar.reset(self.step_task, total=steps, description=f"  {label}: sampling", visible=True)

    def step(self) -> None:
        if self.bar:
            self.bar.advance(self.step_task)

    def phase(self, text: str) -> None:
        if self.bar:
            self.bar.update(self.step_task, description=f"  {self.label}: {text}")

    def done(self, line: str) -> None:
        if self.enabled:
            self.console.print(printable(line), markup=False, highlight=False, soft_wrap=True)

    def warn(self, line: str) -> None:
        warn(line, self.console)

    def close(self) -> None:
        if self.bar:
            self.bar.stop()
            self.bar = None


LINE_EVERY_S = 30.0  # seconds between plain progress lines in a log


def duration(seconds: float) -> str:
    """``95`` → ``1m35s``; ``4000`` → ``1h06m``."""
    s = max(0, int(round(seconds)))
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class LazyBar:
    """A one-task progress display that appears on the first update, so input errors print alone.

    ``fields`` are preformatted texts (``loss="loss 0.031"``), shown as columns of the live bar and
    joined into the plain lines; ``unit`` names the count in those lines (``step`` → ``step 12/100``);
    ``every_s``: the least time between two plain lines (0: a line whenever the count changes).
    """

    def __init__(self, description: str, console: Console, *, unit: str = "", every_s: float | None = None,
                 **fields: str) -> None:  # fmt: skip
        self.description, self.console, self.unit, self.fields = description, console, unit, fields
        self.every_s = LINE_EVERY_S if every_s is None else every_s
        self.plain = not console.is_terminal
        self.bar: Any = None  # a rich Progress once shown
        self.task: Any = None
        self.start: tuple[float, int] | None = None  # (time, count) at the first update: the rate's origin
        self.last_line: tuple[float, int] | None = None

    def update(self, completed: int, total: int | None = None, ready: bool = True, **fields: str) -> None:
        """Show ``completed`` of ``total``; ``ready=False``: not worth a plain line yet (no loss or rate to show)."""
        self.fields.update(fields)
        if self.plain:
            self._line(completed, total, ready)
            return
        if self.bar is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            columns = [TextColumn("{task.fields[%s]}" % k) for k in self.fields]  # noqa: UP031 (rich's braces)
            head = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn())
            tail = (TimeElapsedColumn(), TimeRemainingColumn())
            self.bar = Progress(*head, *columns, *tail, console=self.console, transient=False)
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=total, **self.fields)
        self.bar.update(self.task, completed=completed, total=total, **self.fields)

    def _line(self, completed: int, total: int | None, ready: bool) -> None:
        now = time.monotonic()
        if self.start is None:
            self.start = (now, completed)
        finished = total is not None and completed >= total
        if not (ready or finished):
            return
        if self.last_line is not None:
            if self.last_line[1] == completed or (now - self.last_line[0] < self.every_s and not finished):
                return
        self.last_line = (now, completed)
        count = f"{self.unit} {completed}" if self.unit else str(completed)
        parts = [f"{self.description}: {count}" + (f"/{total} ({100 * completed / total:.0f}%)" if total else "")]
        parts += [text for text in self.fields.values() if text]
        t0, c0 = self.start
        if total and not finished and completed > c0:
            parts.append(f"ETA {duration((total - completed) * (now - t0) / (completed - c0))}")
        parts.append(f"elapsed {duration(now - t0)}")
        self.console.print(", ".join(parts), markup=False, highlight=False, soft_wrap=True)

    def __enter__(self) -> LazyBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"ddimbench {version('ddimbench')}"
    except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        return "ddimbench (not installed; run `make install`)"


def usage_line(exc: Exception) -> str:
    """click's usage error ``exc`` as one line that points to the help of the command that was run (``ddimbench
    sweep --help``); a value outside a choice list reads like the library's own refusals."""
    message = " ".join((exc.format_message() if hasattr(exc, "format_message") else str(exc)).split()).rstrip(".")
    m = re.fullmatch(r"Invalid value for '([^']+)': (?:Value error, )?('.*') is not one of (.*?)\.?", message)
    if m:
        return f"unknown {m[1]} {m[2]}; choose one of {m[3].replace(chr(39), '')}"
    ctx = getattr(exc, "ctx", None)  # click's context of the command the error is about
    return f"{message}; see `{ctx.command_path if ctx is not None else 'ddimbench'} --help`"


def error_message(exc: BaseException) -> str:
    """The one line the CLI prints for an error a user can act on (ours, the OS's, a truncated file)."""
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename}; choose a writable location"
    if isinstance(exc, OSError) and not isinstance(exc, EOFError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or str(exc) or type(exc).__name__}{where}; check the path, permissions and free space"
    if isinstance(exc, EOFError):  # a truncated file read by a library; click would report it as an interrupt
        return f"a file ended early while reading ({exc or 'EOFError'}); a cache or input file is truncated"
    return str(exc)


def raise_interrupt(signum: int, frame: Any) -> None:
    """A signal handler that stops the work as Ctrl-C does."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (pre-emption, ``kill``) acts like Ctrl-C inside the block: long commands stop the same way."""
    try:
        old = signal.signal(signal.SIGTERM, raise_interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
