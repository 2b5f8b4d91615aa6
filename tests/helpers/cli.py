"""The command line run in-process, as the CLI tests call it."""

from __future__ import annotations

import pytest

from bench.cli import main


def run(argv: list, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``ddimbench ARGV`` (paths and numbers as text): (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_err(argv: list, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """``ddimbench ARGV``: (exit code, stderr), for the tests that check only refusals and warnings."""
    code, _, err = run(argv, capsys)
    return code, err
