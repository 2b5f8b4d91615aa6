"""Refused up front, in one line with exit code 2, with nothing changed or left behind (issue 14): folders
holding files we did not write, and sizes that cannot fit."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.cli import run_err as run

pytestmark = pytest.mark.timeout(120)  # a refusal that does not happen must not run for the suite's 600 s
TINY = ["--max-steps", "2", "--batch-size", "4", "--sample-every", "0", "--wandb", "disabled", "--device", "cpu"]


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


@pytest.fixture
def small_machine(monkeypatch):
    """16 GB of memory and 50 GB of disk (4 KiB blocks, a million inodes), whatever this machine has."""
    import ddim.memory

    monkeypatch.setattr(ddim.memory, "available_bytes", lambda device: 16 * 10**9)
    monkeypatch.setattr(ddim.memory, "free_disk", lambda path: (50 * 10**9, 4096, 10**6))


def test_train_refuses_a_T_that_cannot_fit(tmp_path, capsys, small_machine):
    run_dir = tmp_path / "run"
    code, err = run(["train", "--run-dir", run_dir, "--T", 1_000_000_000, *TINY], capsys)
    one_line(code, err, "--T", "1000000000")
    assert not run_dir.exists()  # no config.json to block the next try


@pytest.mark.parametrize(("n", "words"), [(1_000_000_000, ("disk", "smaller -n")), (2_000_000, ("inodes",))])
def test_sample_refuses_an_n_whose_files_cannot_fit(ckpt, tmp_path, capsys, small_machine, n, words):
    out = tmp_path / "samples"
    code, err = run(["sample", "--checkpoint", ckpt, "-n", n, "--out", out, "--steps", 2, "--device", "cpu"], capsys)
    one_line(code, err, f"-n {n}", *words)
    assert not out.exists()


def test_sample_refuses_an_n_whose_file_list_cannot_fit_in_memory(ckpt, tmp_path, capsys, monkeypatch):
    import ddim.memory

    monkeypatch.setattr(ddim.memory, "available_bytes", lambda device: 10**9)
    monkeypatch.setattr(ddim.memory, "free_disk", lambda path: (10**15, 4096, None))
    out = tmp_path / "samples"
    code, err = run(["sample", "--checkpoint", ckpt, "-n", 10**8, "--out", out, "--steps", 2], capsys)
    one_line(code, err, "-n 100000000", "memory")
    assert not out.exists()


def test_sample_counts_only_the_missing_files_against_the_disk(ckpt, tmp_path, capsys, monkeypatch):
    import ddim.memory

    args = ["sample", "--checkpoint", ckpt, "-n", 6, "--out", tmp_path / "s", "--steps", 2, "--device", "cpu"]
    monkeypatch.setattr(ddim.memory, "free_disk", lambda path: (10**9, 4096, 6))
    assert run(args, capsys)[0] == 0
    (tmp_path / "s" / "000005.png").unlink()
    monkeypatch.setattr(ddim.memory, "free_disk", lambda path: (10**9, 4096, 1))  # room for the one missing
    assert run(args, capsys)[0] == 0


def test_sweep_refuses_an_n_whose_cells_cannot_fit(ckpt, cache, work, capsys, small_machine):
    tokens = [f"checkpoint={ckpt}", f"cache_dir={work / 'cache'}", "steps=2", "eta=0", "n=1000000000"]
    code, err = run(["sweep", *tokens, "--wandb", "disabled"], capsys)
    one_line(code, err, "n=1000000000", "memory", "smaller n=")
    assert list(work.iterdir()) == []  # no store, no artifacts, no cache
    code, err = run(["sweep", *tokens[:-1], "n=1000000", "--workers", "4", "--wandb", "disabled"], capsys)
    one_line(code, err, "4 workers", "fewer --workers")
    code, err = run(["sweep", *tokens[:-1], "n=1000000", "--workers", "4", "--dry-run"], capsys)  # as the run does
    one_line(code, err, "4 workers", "fewer --workers")
    assert list(work.iterdir()) == []


def test_a_rerun_of_sample_removes_the_temp_files_a_killed_run_left(ckpt, tmp_path, capsys):
    out = tmp_path / "s"
    args = ["sample", "--checkpoint", ckpt, "-n", 3, "--out", out, "--steps", 2, "--device", "cpu"]
    assert run(args, capsys)[0] == 0
    ours = [".000001.png.k2j4l5t_.tmp", ".samples.json.abc123.tmp", ".grid.png.x9.tmp", ".1000000.png.zz.tmp"]
    theirs = [".notes.txt.abc.tmp", ".000001.png.tmp", "000001.png.abc.tmp"]
    for name in ours + theirs:
        (out / name).write_bytes(b"half")
    assert run(args, capsys)[0] == 0
    left = sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))
    assert left == sorted(theirs)


def test_a_filesystem_without_a_size_is_not_read_as_a_full_disk(tmp_path, capsys, monkeypatch):
    """/proc reports 0 blocks: the folder that cannot be made is the problem, not "0.0 GB free"."""
    import ddim.memory
    from ddim.errors import DDIMError

    if Path("/proc").is_dir():  # Linux: the real pseudo-filesystem
        assert ddim.memory.free_disk("/proc/nope")[0] is None
    monkeypatch.setattr(ddim.memory, "free_disk", lambda path: (None, 4096, None))
    ddim.memory.check_disk("-n 4", tmp_path, 4, 10**12, "use a smaller -n")  # unknown size: not refused
    monkeypatch.setattr(ddim.memory, "free_disk", lambda path: (10**6, 4096, None))
    with pytest.raises(DDIMError, match=r"needs about 3\.8 MB of disk .* more than the 1\.0 MB free"):
        ddim.memory.check_disk("-n 4", tmp_path, 4, 10**6, "use a smaller -n")  # small sizes in MB, not 0.0 GB
