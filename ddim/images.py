"""The image format that samples, reference sets and grids share: [-1, 1] floats <-> uint8 pixels.

Models see images in [-1, 1] (DDPM/DDIM convention, Appendix D.1 of the paper); anything stored or
measured is uint8 0..255 under one rule, so a sample and a reference image of the same pixels are
byte-identical. ``from_uint8(to_uint8(x))`` is exact for every x already on the uint8 lattice.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ddim.files import atomic_write


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 0..255: ``round((x.clamp(-1, 1) + 1) · 127.5)``, the ONE rule."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (or integer-valued) pixels 0..255 -> float32 in [-1, 1], the inverse of ``to_uint8``."""
    return pixels.float() / 127.5 - 1.0


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save (N, C, H, W) images (uint8, or floats in [-1, 1]) as one PNG grid; atomic, an ``OSError``
    propagates."""
    from PIL import Image

    n, c, h, w = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / nrow))
    u8 = images.detach().cpu() if images.dtype == torch.uint8 else to_uint8(images.detach().float().cpu())
    pad = 1
    canvas = torch.zeros(c, rows * (h + pad) + pad, nrow * (w + pad) + pad, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[:, y : y + h, x : x + w] = u8[i]
    arr = canvas.permute(1, 2, 0).numpy()  # (H, W, C)
    img = Image.fromarray(arr[..., 0] if c == 1 else arr)
    return atomic_write(path, lambda f: img.save(f, format="PNG"))
