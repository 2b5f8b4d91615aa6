"""Shared test settings: the smallest UNet and training config that still exercise every code path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddim.train_config import TrainConfig

# A 2-level, 8-channel UNet without attention: a training step takes milliseconds on one CPU thread.
TINY = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0, num_groups=4)


def tiny_config(run_dir: Path, **overrides: Any) -> TrainConfig:
    """Digits on the CPU with the tiny UNet, in-process data, no grids; ``overrides`` win."""
    base: dict[str, Any] = dict(
        dataset="digits", run_dir=str(run_dir), batch_size=16, lr=1e-3, warmup=5, max_steps=30, save_every=5,
        log_every=5, sample_every=0, grid_size=4, grid_steps=3, num_workers=0, device="cpu", **TINY,
    )  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def one_line(info: Any) -> str:
    """The message of a ``pytest.raises`` result, checked to be one non-empty line."""
    msg = str(info.value)
    assert msg and "\n" not in msg
    return msg
