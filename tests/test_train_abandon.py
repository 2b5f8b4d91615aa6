"""A training run that fails before its first checkpoint leaves nothing that blocks rerunning the same command.

`train` writes config.json before the first image is decoded; an unreadable image then used to leave a run
directory that made the rerun (the image fixed) answer "already holds a run; pass --resume". What this
process began is removed; what existed before it started is never touched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import run_err
from PIL import Image

import ddim.training as training


def image(path: Path, seed: int) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Four images, one of them unreadable: every batch of four decodes it at the first step."""
    root = tmp_path / "images"
    root.mkdir()
    for i in range(3):
        image(root / f"{i}.png", i)
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\njunk")
    return root


def train(folder: Path, run: Path, capsys: pytest.CaptureFixture, *more) -> tuple[int, str]:
    argv = ["train", "--dataset", "folder", "--data-root", folder, "--preset", "celeba", "--resolution", 16,
            "--max-steps", 2, "--batch-size", 4, "--ch", 8, "--ch-mult", "1,2", "--num-res-blocks", 1,
            "--attn-resolutions=", "--num-groups", 4, "--sample-every", 0, "--device", "cpu", "--num-workers", 0,
            "--T", 100, "--wandb", "disabled", "--run-dir", run, *more]  # fmt: skip
    return run_err(argv, capsys)


def failed_on_the_image(code: int, err: str) -> None:
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "cannot read image" in err and "bad.png" in err, err


def test_a_new_run_directory_is_removed_and_the_same_command_then_runs(folder, tmp_path, capsys):
    run = tmp_path / "run"
    failed_on_the_image(*train(folder, run, capsys))
    assert not run.exists()
    image(folder / "bad.png", 3)  # the image replaced, as the message says
    code, err = train(folder, run, capsys)  # the same command: no --resume needed
    assert code == 0, err
    assert (run / "checkpoints" / "step-0000002.pt").is_file()


def test_a_folder_that_existed_keeps_what_it_held(folder, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    failed_on_the_image(*train(folder, run, capsys))
    assert [p.name for p in run.iterdir()] == ["notes.txt"] and (run / "notes.txt").read_text() == "mine"
    image(folder / "bad.png", 3)
    assert train(folder, run, capsys)[0] == 0


def test_a_run_begun_before_is_left_as_it_was(folder, tmp_path, capsys):
    """A run killed before its first checkpoint (config.json, no checkpoint) and resumed: its files existed
    before this process, so the failure removes none (resuming at step 0 empties the log, as it always has)."""
    run = tmp_path / "run"
    good = folder / "bad.png"
    good.rename(folder.parent / "kept.png")
    image(good, 3)
    assert train(folder, run, capsys)[0] == 0
    (run / "checkpoints" / "step-0000002.pt").unlink()  # as if killed before its first save
    (folder.parent / "kept.png").replace(good)  # the unreadable image back
    before, config = sorted(p.name for p in run.iterdir()), (run / "config.json").read_bytes()
    failed_on_the_image(*train(folder, run, capsys, "--resume"))
    assert sorted(p.name for p in run.iterdir()) == before and (run / "config.json").read_bytes() == config


@pytest.mark.parametrize("save_every, kept", [(5, False), (1, True)])
def test_a_failure_after_the_first_checkpoint_keeps_the_run(folder, tmp_path, capsys, monkeypatch, save_every, kept):
    """Diverging at step 2: with a checkpoint at step 1 the run is kept (it resumes from there), without one
    it is removed like any failure before the first checkpoint."""
    image(folder / "bad.png", 3)
    real = training.diffusion_loss
    calls = []

    def nan_at_step_2(*args):
        calls.append(1)
        return real(*args) * (float("nan") if len(calls) == 2 else 1.0)

    monkeypatch.setattr(training, "diffusion_loss", nan_at_step_2)
    run = tmp_path / "run"
    code, err = train(folder, run, capsys, "--save-every", save_every, "--log-every", 1)
    assert code == 2 and "non-finite" in err, err
    assert run.exists() == kept
    if kept:
        assert (run / "config.json").is_file() and (run / "checkpoints" / "step-0000001.pt").is_file()
        assert torch.load(run / "checkpoints" / "step-0000001.pt", weights_only=True)["step"] == 1
