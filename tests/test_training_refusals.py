"""ddim.training's refusals: a run directory that holds another run, bad settings, a corrupt checkpoint, and a
loss that stops being finite (stopped before anything is saved, the last good checkpoint kept).

Every run uses a tiny UNet through TrainConfig's architecture overrides (tests/helpers/training.py).
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers.training import one_line, tiny_config

import ddim.training as training
from ddim.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from ddim.errors import DDIMError
from ddim.files import sha256_file
from ddim.train_config import TrainConfig
from ddim.training import train

tiny = tiny_config


# --- refusals ------------------------------------------------------------------------------------


def test_existing_run_directory_needs_resume(tmp_path):
    cfg = tiny(tmp_path / "run", max_steps=3)
    train(cfg)
    with pytest.raises(DDIMError, match="already holds a run; pass --resume") as info:
        train(cfg)
    one_line(info)
    # A run killed before its first checkpoint still holds config.json: refused too, resumable.
    early = tiny(tmp_path / "early", max_steps=3)
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "config.json").write_text(json.dumps({"train": early.to_dict()}))
    with pytest.raises(DDIMError, match="already holds a run"):
        train(early)
    assert train(early, resume=True).step == 3


@pytest.mark.parametrize(
    "change, match",
    [
        ({"lr": 2e-3}, "--lr 0.002 differs"),
        ({"seed": 1}, "--seed 1 differs"),
        ({"batch_size": 8}, "--batch-size 8 differs"),
        ({"beta_schedule": "cosine"}, "diffusion"),
        ({"ch": 16}, "another UNet architecture: ch=8"),
        ({"ch": None, "ch_mult": None, "attn_resolutions": None, "num_groups": None}, "another UNet architecture"),
    ],
)
def test_resume_with_another_experiment_is_refused(tmp_path, change, match):
    cfg = tiny(tmp_path / "run", max_steps=2, save_every=2)
    train(cfg)
    with pytest.raises(DDIMError, match=match) as info:
        train(tiny(tmp_path / "run", max_steps=4, **change), resume=True)
    one_line(info)
    # Run length and bookkeeping may change.
    assert train(tiny(tmp_path / "run", max_steps=4, log_every=1, keep=1), resume=True).step == 4


def test_resume_from_a_corrupt_checkpoint_is_refused(tmp_path):
    cfg = tiny(tmp_path / "run", max_steps=4, save_every=2)
    path = train(cfg).checkpoint
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DDIMError, match="corrupt, truncated") as info:
        train(tiny(tmp_path / "run", max_steps=6, save_every=2), resume=True)
    assert str(path) in one_line(info)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"max_steps": 0}, "--max-steps"),
        ({"batch_size": 0}, "--batch-size"),
        ({"lr": 0.0}, "--lr"),
        ({"lr": float("nan")}, "--lr"),
        ({"grad_clip": -1.0}, "--grad-clip"),
        ({"ema_decay": 1.0}, "--ema-decay"),
        ({"beta_start": 0.5, "beta_end": 0.1}, "--beta-start"),
        ({"grid_steps": 2000}, "--grid-steps"),
        ({"dataset": "imagenet"}, "unknown dataset"),
        ({"preset": "huge"}, "unknown UNet preset"),
        ({"beta_schedule": "zigzag"}, "unknown beta schedule"),
        ({"ch": 6}, "not divisible by num_groups"),
        ({"ch_mult": "1,x"}, "--ch-mult must be comma-separated integers"),
        ({"device": "tpu"}, "unknown device"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, change, match):
    with pytest.raises(DDIMError, match=match) as info:
        tiny(tmp_path / "run", **change).validate()
    one_line(info)


def test_unet_overrides_accept_cli_strings(tmp_path):
    cfg = tiny(tmp_path, ch_mult="1,2", attn_resolutions="")
    assert cfg.ch_mult == (1, 2) and cfg.attn_resolutions == ()
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    unet = cfg.unet_config()
    assert (unet.ch, unet.ch_mult, unet.in_channels, unet.resolution) == (8, (1, 2), 1, 16)
    assert TrainConfig(dataset="digits").unet_config() == training.TrainConfig().unet_config()


# --- non-finite loss -----------------------------------------------------------------------------


def _nan_at(monkeypatch, bad_step: int, *, grad: bool = False) -> None:
    """Make step ``bad_step`` (1-based) produce a NaN loss, or a finite loss with an inf gradient."""
    real, calls = training.diffusion_loss, []

    class InfGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return g * float("inf")

    def loss(*args):
        calls.append(1)
        value = real(*args)
        if len(calls) == bad_step:
            return InfGrad.apply(value) if grad else value * float("nan")
        return value

    monkeypatch.setattr(training, "diffusion_loss", loss)


@pytest.mark.parametrize("grad", [False, True])
def test_non_finite_loss_stops_before_saving_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, grad):
    cfg = tiny(tmp_path / "run", max_steps=30, save_every=5, log_every=100, keep=5)
    _nan_at(monkeypatch, 13, grad=grad)
    good = {}

    def remember(step, metrics):
        if step == 11:
            good["sha"] = sha256_file(checkpoint_path(cfg.run_dir, 10))

    with pytest.raises(DDIMError) as info:
        train(cfg, progress=remember)
    msg = one_line(info)
    last = checkpoint_path(cfg.run_dir, 10)
    assert msg.startswith("loss or gradient became non-finite (nan/inf) at step 13;"), msg
    assert f"last good checkpoint: {last}" in msg
    # The check ran at the step-15 save (the next host point), before anything was written.
    assert [s for s, _ in list_checkpoints(cfg.run_dir)] == [5, 10]
    assert sha256_file(last) == good["sha"]
    ck = load_checkpoint(cfg.run_dir)
    assert all(torch.isfinite(v).all() for v in ck.state["model"].values())


def test_huge_learning_rate_diverges_into_a_clear_error(tmp_path):
    with pytest.raises(DDIMError, match="non-finite") as info:
        train(tiny(tmp_path / "run", lr=1e30, warmup=0, grad_clip=0.0, max_steps=20))
    assert "last good checkpoint" in one_line(info)
