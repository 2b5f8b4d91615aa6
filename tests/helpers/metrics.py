"""Shared helpers of the metrics tests (their fixtures ``train_u8``, ``test_u8``, ``fid_vs_train`` and
``feature_calls`` are in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from ddim.errors import DDIMError


def one_line_error(call, *needles: str) -> str:
    with pytest.raises(DDIMError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def write_pngs(folder: Path, images: torch.Tensor) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        arr = img.permute(1, 2, 0).numpy()
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(folder / f"{i:06d}.png")
