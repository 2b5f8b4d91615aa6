"""The models and device settings the performance benchmark compares (``bench.perf.run``).

- ``diffusers_twin(config)``: diffusers' ``UNet2DModel`` built to the same architecture as our
  ``UNet(config)`` (channels, levels, blocks, attention resolutions, groups, dropout, the DDPM
  timestep embedding and padding), so the two have the same parameters and compute the same function.
- ``RunSettings``: the GPU-path switches (bf16 autocast, channels_last, TF32, ``torch.compile``),
  applied the same way to both models; every one of them also runs on the CPU so tests exercise it.

diffusers is imported lazily (it is a test/benchmark dependency, not a library one).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ddim.errors import DDIMError
from ddim.unet import UNet, UNetConfig, preset


@dataclass(frozen=True)
class RunSettings:
    """How a model is run: the same for ours and diffusers' in one comparison."""

    device: str = "cpu"
    bf16: bool = False  # torch.autocast(bfloat16) around forward (and the loss)
    channels_last: bool = False  # model weights and inputs in NHWC memory format
    tf32: bool = True  # CUDA matmul/conv TF32 (no effect on the CPU)
    compile: bool = False  # torch.compile the model (needs a C++ compiler on the CPU)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def apply_backend_flags(settings: RunSettings) -> None:
    """Process-wide switches: TF32 on CUDA, cuDNN autotuning for fixed shapes."""
    if settings.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = settings.tf32
        torch.backends.cudnn.allow_tf32 = settings.tf32
        torch.backends.cudnn.benchmark = True


def autocast(settings: RunSettings) -> contextlib.AbstractContextManager:
    """bf16 autocast on the settings' device type (``cpu`` autocast exercises the same code path)."""
    if not settings.bf16:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(settings.device).type, dtype=torch.bfloat16)


def prepare(model: nn.Module, settings: RunSettings) -> nn.Module:
    """Move a model to the device and memory format; compile it when asked."""
    model = model.to(settings.device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if settings.compile:
        model = torch.compile(model)
    return model


def prepare_input(x: torch.Tensor, settings: RunSettings) -> torch.Tensor:
    x = x.to(settings.device)
    return x.contiguous(memory_format=torch.channels_last) if settings.channels_last else x


class Eps(nn.Module):
    """diffusers' model as an ε-model with our call signature: ``model(x, t) -> Tensor``."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, return_dict=False)[0]


def diffusers_twin(config: UNetConfig) -> nn.Module:
    """diffusers' ``UNet2DModel`` with the architecture of ``UNet(config)``, wrapped by ``Eps``."""
    try:
        from diffusers import UNet2DModel
    except ImportError as err:
        raise DDIMError("the benchmark compares against diffusers: pip install diffusers") from err
    if not config.resamp_with_conv:
        raise DDIMError("diffusers' UNet2DModel always resamples with a conv; use resamp_with_conv=True")
    levels = len(config.ch_mult)
    res = [config.resolution // 2**i for i in range(levels)]
    attn = [r in config.attn_resolutions for r in res]
    unet = UNet2DModel(
        sample_size=config.resolution,
        in_channels=config.in_channels,
        out_channels=config.out_ch,
        block_out_channels=tuple(config.ch * m for m in config.ch_mult),
        layers_per_block=config.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        dropout=config.dropout,
        norm_num_groups=config.num_groups,
        norm_eps=1e-6,
        downsample_padding=0,  # the DDPM asymmetric (0, 1, 0, 1) pad before the stride-2 conv
        flip_sin_to_cos=False,  # [sin, cos] as in DDPM
        freq_shift=1,  # frequencies 10000^(-i/(half-1))
        attention_head_dim=None,  # one head of all channels
    )
    return Eps(unet)


def build(name: str, config: UNetConfig | str) -> nn.Module:
    """``ours`` → ``UNet(config)``, ``diffusers`` → ``diffusers_twin(config)``; a str is a preset name."""
    config = preset(config) if isinstance(config, str) else config
    if name == "ours":
        return UNet(config)
    if name == "diffusers":
        return diffusers_twin(config)
    raise DDIMError(f"unknown model {name!r}; choose ours or diffusers")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
