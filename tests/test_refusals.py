"""Refused up front, in one line with exit code 2, with nothing changed or left behind (issue 14): folders
holding files we did not write, and sizes that cannot fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import main

TINY = ["--max-steps", "2", "--batch-size", "4", "--sample-every", "0", "--wandb", "disabled", "--device", "cpu"]


def run(argv: list, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    return code, err


def tree(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def one_line(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


@pytest.mark.parametrize("resume", [False, True])
def test_train_refuses_a_folder_holding_a_foreign_log_and_grids(tmp_path, capsys, resume):
    run_dir = tmp_path / "theirs"
    (run_dir / "samples").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"step": 900, "loss": 1}\n{"step": 5, "loss": 2}\n', encoding="utf-8")
    (run_dir / "samples" / "step-0000500.png").write_bytes(b"their grid")
    before = tree(run_dir)
    code, err = run(["train", "--run-dir", run_dir, *TINY, *(["--resume"] if resume else [])], capsys)
    one_line(code, err, "not a ddimbench run", "--run-dir")
    assert tree(run_dir) == before  # no config.json, the log and the grid untouched


def test_train_into_a_folder_with_unrelated_files_of_other_names_still_runs(tmp_path, capsys):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("plan\n", encoding="utf-8")
    code, err = run(["train", "--run-dir", run_dir, *TINY], capsys)
    assert code == 0, err
    assert (run_dir / "notes.txt").read_text(encoding="utf-8") == "plan\n" and (run_dir / "config.json").is_file()
