"""Strings a sweep store holds reach the terminal as text, never as control sequences: anyone with access to the
database can write ESC codes (clear the screen, recolour, retitle the window) or newlines (a line of its own) into
it, and every line the CLI prints on stderr writes them visibly, as ``repr`` does (``bench.console.printable``).
Real SQLite stores, edited as such a writer would; the CLI run in-process. No torch."""

from __future__ import annotations

import optuna
import pytest
from helpers.cli import run_err as run
from helpers.sweep import fake_sweep

from bench.console import Display, warn
from bench.report import paper
from ddim.errors import printable

ANSI = "\x1b[2J\x1b[31mRED\nsecond line"  # clear the screen, red text, a line of its own
TITLE = "x\x1b]0;T\x07"  # set the window's title


def one_line(err: str) -> str:
    """The one line of ``err``, with no control character in it."""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert printable(err.strip()) == err.strip() and "\x1b" not in err, repr(err)
    return err.strip()


def test_printable_writes_every_control_character_as_repr_does():
    assert printable("plain: η × S — [bold] ~/runs 'x'") == "plain: η × S — [bold] ~/runs 'x'"
    assert printable(ANSI) == r"\x1b[2J\x1b[31mRED\nsecond line"
    assert printable("\x9b2J\x7f\r\t\u202eevil\x00") == r"\x9b2J\x7f\r\t\u202eevil\x00"  # C1, DEL, bidi, NUL


def test_a_warning_or_progress_line_is_one_line_whatever_it_names(capsys):
    warn(f"grid {ANSI!s} left out")
    assert one_line(capsys.readouterr().err) == r"warning: grid \x1b[2J\x1b[31mRED\nsecond line left out"
    Display(True, live=False).done(f"cell {ANSI}")  # a finished cell's line in a log
    assert one_line(capsys.readouterr().err) == r"cell \x1b[2J\x1b[31mRED\nsecond line"


def test_a_stored_dataset_and_extractor_in_a_refusal_are_shown_not_sent(tmp_path, capsys):
    """The reviewer's edit: meta's dataset and extractor hold ESC codes and a newline; ``--compare-paper``'s
    refusal names them in its one line, exit code 2, nothing written."""
    storage = f"sqlite:///{tmp_path / 'sweeps.db'}"
    fake_sweep(storage, "s", "digits" + ANSI, TITLE)
    code, err = run(["report", "s", "--storage", storage, "--out", tmp_path / "rep", "--compare-paper", "cifar10",
                     "--wandb", "disabled"], capsys)  # fmt: skip
    assert code == 2, err
    line = one_line(err)
    assert line.startswith("error: --compare-paper cifar10: ") and r"is digits\x1b[2J\x1b[31mRED\nsecond " in line
    assert r"scored with x\x1b]0;T\x07 features" in line
    assert not (tmp_path / "rep").exists()
    assert paper.mismatch("cifar10", ANSI, TITLE) == printable(f"{ANSI} scored with {TITLE} features")  # the caption


def test_a_stored_grid_named_with_control_characters_is_left_out_in_one_printable_warning(tmp_path, capsys):
    """A ``grid:`` attribute whose name holds ESC codes and whose axes no sweep takes: the warning that leaves it
    out names it visibly (``bench.store.study``'s edited-store warnings go through ``bench.console.warn``)."""
    storage = f"sqlite:///{tmp_path / 'sweeps.db'}"
    fake_sweep(storage, "s", "digits", "classifier")
    study = optuna.load_study(study_name="s", storage=storage)
    study.set_user_attr("grid:" + "\x1b[2J\x1b]0;TITLE\x07\rOVER\nnext", {"steps": "bad"})
    code, err = run(["report", "s", "--storage", storage, "--out", tmp_path / "rep", "--wandb", "disabled"], capsys)
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("report written to"), err
    assert lines[0].startswith("warning: 1 stored grid(s) of 's' are none `ddimbench sweep` could have run"), err
    assert r"grid:\x1b[2J\x1b]0;TITLE\x07\rOVER\nnext (" in lines[0] and "\x1b" not in err, repr(err)


@pytest.mark.parametrize("message", ["bad\nsecond", "bad\x1b[2Jclear"])
def test_an_error_line_is_one_line(message, monkeypatch, capsys):
    """The CLI's own error sink (``_fail``) and status sink (``_say``), whatever text reaches them."""
    from bench import cli

    cli._fail(message)
    cli._say(f"note {message}")
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "\x1b" not in err, repr(err)
    assert printable(message) in err


def test_the_lines_a_command_prints_together_stay_lines(capsys):
    """``_say`` with several lines (a dry run's, a sweep's summary) prints each on its own line."""
    from bench import cli

    cli._say("first\x1b[31m", "second\nthird")
    assert capsys.readouterr().err == "first\\x1b[31m\nsecond\\nthird\n"
