"""What ``--resume`` accepts and refuses, and stop signals reaching the data-loader workers too.

(The bit-exact resume after SIGKILL / SIGINT / SIGTERM of the main process is in test_training.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT as REPO
from helpers.training import tiny_config

from ddim.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from ddim.errors import DDIMError
from ddim.train_config import TrainConfig
from ddim.training import train

SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
from ddim.train_config import TrainConfig
from ddim.training import train
r = train(TrainConfig.from_dict(json.loads(sys.argv[1])))
print(json.dumps({"step": r.step, "interrupted": r.interrupted, "checkpoint": str(r.checkpoint)}))
"""


def _image_folder(folder: Path, n: int = 12) -> Path:
    from PIL import Image

    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        pixels = torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


def _folder_config(run_dir: Path, data: Path, **overrides) -> TrainConfig:
    return tiny_config(run_dir, dataset="folder", data_root=str(data), resolution=16, preset="digits",
                       batch_size=4, **overrides)  # fmt: skip


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_checkpoints_despite_loader_workers(tmp_path):
    """Slurm pre-emption and systemd signal every process of the job, loader workers included: the workers
    must leave the signal to the main process, which checkpoints and exits cleanly."""
    data = _image_folder(tmp_path / "imgs")
    cfg = _folder_config(tmp_path / "run", data, max_steps=1_000_000, save_every=100_000, log_every=2,
                         num_workers=2)  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, json.dumps(cfg.to_dict())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,  # its own process group, as a batch job has
    )  # fmt: skip
    end = time.monotonic() + 120
    while not (tmp_path / "run" / "metrics.jsonl").exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        if time.monotonic() > end:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("training did not start")
        time.sleep(0.02)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # never leave a million-step training behind
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["interrupted"] and result["checkpoint"] == str(checkpoint_path(cfg.run_dir, result["step"]))
    assert load_checkpoint(cfg.run_dir).step == result["step"] >= 2


def test_resume_accepts_explicit_values_equal_to_the_resolved_defaults(tmp_path):
    train(tiny_config(tmp_path / "run", max_steps=2, save_every=2))
    # digits' default resolution is 16: spelling it out is the same experiment.
    assert train(tiny_config(tmp_path / "run", max_steps=4, save_every=2, resolution=16), resume=True).step == 4
    with pytest.raises(DDIMError, match="resolution"):
        train(tiny_config(tmp_path / "run", max_steps=6, save_every=2, resolution=8), resume=True)


def test_a_folder_run_resumes_from_moved_images_but_not_from_other_images(tmp_path):
    data = _image_folder(tmp_path / "imgs")
    train(_folder_config(tmp_path / "run", data, max_steps=2, save_every=2))
    moved = data.rename(tmp_path / "scratch")  # e.g. copied to node-local disk: same files, new place
    assert train(_folder_config(tmp_path / "run", moved, max_steps=4, save_every=2), resume=True).step == 4
    (moved / "0.png").unlink()  # one image fewer: another training set
    with pytest.raises(DDIMError, match="is not what the run in .* trained on") as info:
        train(_folder_config(tmp_path / "run", moved, max_steps=6, save_every=2), resume=True)
    assert "\n" not in str(info.value)


def test_a_run_without_checkpoint_accepts_explicit_defaults_but_not_another_unet(tmp_path):
    cfg = tiny_config(tmp_path / "early", max_steps=3)
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "config.json").write_text(
        json.dumps({"train": cfg.to_dict(), "unet": cfg.unet_config().to_dict()})
    )  # a run killed before its first checkpoint
    assert train(tiny_config(tmp_path / "early", max_steps=3, resolution=16), resume=True).step == 3
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"train": cfg.to_dict(), "unet": cfg.unet_config().to_dict()}))
    with pytest.raises(DDIMError, match="the UNet differs"):
        train(tiny_config(other, max_steps=3, ch=16), resume=True)


def test_resume_refuses_imported_weights(tmp_path):
    cfg = tiny_config(tmp_path / "run", max_steps=2, save_every=2)
    path = train(cfg).checkpoint
    state = torch.load(path, weights_only=True)
    state.update(optimizer=None, train={})  # what import-weights writes: weights, no training state
    torch.save(state, path)
    with pytest.raises(DDIMError, match="holds imported weights, not a training state") as info:
        train(tiny_config(tmp_path / "run", max_steps=4, save_every=2), resume=True)
    assert "\n" not in str(info.value)


def test_a_renamed_checkpoint_is_refused_not_trusted(tmp_path):
    cfg = tiny_config(tmp_path / "run", max_steps=4, save_every=2)
    train(cfg)
    (_, old), _ = list_checkpoints(cfg.run_dir)
    renamed = old.with_name("step-0000090.pt")
    old.rename(renamed)  # now the "newest" file by name, holding step 2
    with pytest.raises(DDIMError, match="holds step 2 but its name says step 90; rename it to step-0000002.pt"):
        load_checkpoint(cfg.run_dir)
    with pytest.raises(DDIMError, match="holds step 2"):
        train(tiny_config(tmp_path / "run", max_steps=6, save_every=2), resume=True)
    assert checkpoint_path(cfg.run_dir, 4).exists()  # nothing was pruned on the strength of the name


def test_corrupt_newest_checkpoint_names_the_way_back_to_the_previous_one(tmp_path):
    cfg = tiny_config(tmp_path / "run", max_steps=4, save_every=2)
    newest = train(cfg).checkpoint
    newest.write_bytes(newest.read_bytes()[:1000])
    again = tiny_config(tmp_path / "run", max_steps=6, save_every=2)
    with pytest.raises(DDIMError, match="to resume from step-0000002.pt instead, move .* aside") as info:
        train(again, resume=True)
    assert "\n" not in str(info.value)
    newest.rename(newest.with_suffix(".bad"))  # following the advice works
    assert train(again, resume=True).step == 6


def test_cpu_training_leaves_the_callers_matmul_precision_alone(tmp_path):
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        train(tiny_config(tmp_path / "run", max_steps=1))
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
