"""What the harness prints on stderr: warnings (one printer) and the progress display of long work."""

from __future__ import annotations

import sys
from typing import Any


def warn(line: str, console: Any = None) -> None:
    """One warning line on stderr in the CLI's ``warning: `` convention (through ``console``, a rich
    Console, while a live progress bar owns the terminal); never raises."""
    text = f"warning: {line}"
    try:
        if console is not None:
            console.print(text, markup=False, highlight=False, style="yellow", soft_wrap=True)
        else:
            print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # a closed or broken stderr must not stop the work
        pass


class Display:
    """Progress on stderr: cells done / total with ETA, the current cell and its sampling steps.

    A live rich bar on a terminal, otherwise one line per finished cell; ``enabled=False`` silences
    both. Warnings always print.
    """

    def __init__(self, enabled: bool, total: int = 0, title: str = "", live: bool = True) -> None:
        from rich.console import Console

        self.console, self.bar, self.label = Console(stderr=True), None, ""
        # Worker processes (live=False) print lines only where the parent shows no live bar.
        self.enabled = enabled and (live or not self.console.is_terminal)
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
        if self.bar:
            self.bar.update(self.cells_task, completed=done, total=total)

    def note(self, text: str) -> None:
        """A line of text under the bar (the cells other workers run, the extras being made)."""
        if self.bar:
            self.bar.update(self.step_task, visible=False)
            self.bar.update(self.note_task, description=f"  {text}"[:150], visible=bool(text))

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
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def warn(self, line: str) -> None:
        warn(line, self.console)

    def close(self) -> None:
        if self.bar:
            self.bar.stop()
            self.bar = None
