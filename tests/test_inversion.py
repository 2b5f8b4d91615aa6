"""DDIM inversion (section 4.3) on a model we trained: reconstruction error falls as S grows.

tests/test_sampling.py checks the same property with the exact ε of Gaussian data; this one uses a
small UNet trained on real digits, so the network's own smoothness in t is what is tested.
"""

from __future__ import annotations

import json

import pytest
import torch

from ddim import data, sampling, schedules
from ddim.checkpoint import load_checkpoint
from ddim.train_config import TrainConfig
from ddim.training import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    run = tmp_path_factory.mktemp("inv") / "run"
    cfg = TrainConfig(
        dataset="digits", run_dir=str(run), batch_size=32, lr=2e-3, warmup=10, max_steps=150, save_every=150,
        log_every=50, sample_every=0, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
        num_groups=4, device="cpu",
    )  # fmt: skip
    result = train(cfg)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    return load_checkpoint(result.checkpoint), losses


def test_the_model_learned_something(trained) -> None:
    _, losses = trained
    assert losses[-1] < 0.5 * losses[0], losses


def test_inversion_error_shrinks_as_S_grows(trained) -> None:
    ck, _ = trained
    model = ck.build_model("cpu")
    ab = ck.alpha_bar()
    x0 = data.load_dataset("digits", split="test").images[:32]  # (32, 1, 16, 16) in [-1, 1]
    errors = []
    for S in (5, 20, 100):
        ts = schedules.timesteps(S, ck.diffusion.T, "uniform")
        x_T = sampling.invert(model, x0, ab, ts)
        x0_rec = sampling.sample(model, x_T, ab, ts, eta=0.0)
        errors.append(float((((x0_rec - x0) / 2) ** 2).mean()))  # per-dimension MSE with pixels in [0, 1]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.5 * errors[0], errors
    # Sanity: encoding gives something Gaussian-like, not x0 itself.
    assert torch.isfinite(x_T).all() and 0.5 < float(x_T.std()) < 2.0
