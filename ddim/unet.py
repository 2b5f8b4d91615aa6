"""The DDPM UNet (Ho et al. 2020) as used by the official DDIM code, with its configs.

Module attribute names mirror the official DDIM ``Model`` (``temb.dense``, ``down[i].block[j]``,
``mid.attn_1``, ``up[i].upsample.conv``, ...) so pretrained official / diffusers weights map onto it.
The network predicts ε: ``UNet(config)(x_t, t) -> eps_pred`` with the shape of ``x_t``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddim import fused_norm
from ddim.errors import DDIMError

__all__ = ["PRESETS", "UNet", "UNetConfig", "preset", "timestep_embedding"]


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of the DDPM UNet (field names follow the official DDIM YAML configs)."""

    resolution: int = 32
    in_channels: int = 3
    out_channels: int | None = None  # None -> in_channels
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    num_groups: int = 32  # GroupNorm groups; tiny models need fewer

    def __post_init__(self) -> None:
        values = ((f.name, getattr(self, f.name)) for f in fields(self))
        wrong = next((f"{k}={v!r} {p}" for k, v in values if (p := self.type_problem(k, v))), None)
        if wrong:  # checked before any arithmetic, so a hand-edited "ch": "x" is this line, not a TypeError
            raise DDIMError(f"invalid UNetConfig: {wrong}")
        # YAML / JSON give lists; keep the dataclass hashable and comparable.
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        problem = self._problem()
        if problem:
            raise DDIMError(f"invalid UNetConfig: {problem}")

    @staticmethod
    def type_problem(name: str, value: object) -> str | None:
        """What is wrong with the type of field ``name``'s ``value`` ("must be ..."; None when it is fine).
        Nothing is cast: a float channel count or a string ``ch_mult`` would be rounded or split silently."""
        if name in ("ch_mult", "attn_resolutions"):
            ok = isinstance(value, (list, tuple)) and all(_is_int(v) for v in value)
            return None if ok else "must be a list of integers"
        if name == "dropout":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            return None if ok else "must be a number"
        if name == "resamp_with_conv":
            return None if isinstance(value, bool) else "must be true or false"
        if name == "out_channels" and value is None:
            return None
        return None if _is_int(value) else "must be an integer"

    def _problem(self) -> str | None:
        if min(self.resolution, self.in_channels, self.ch, self.num_groups) < 1 or self.num_res_blocks < 1:
            return "resolution, in_channels, ch, num_res_blocks and num_groups must be positive"
        if self.out_channels is not None and self.out_channels < 1:
            return f"out_channels={self.out_channels} must be positive or None"
        if not self.ch_mult or min(self.ch_mult) < 1:
            return f"ch_mult={self.ch_mult} must be a non-empty tuple of positive ints"
        if not 0.0 <= self.dropout < 1.0:
            return f"dropout={self.dropout} must be in [0, 1)"
        bad = [self.ch * m for m in (1, *self.ch_mult) if (self.ch * m) % self.num_groups]
        if bad:
            return f"channel count {bad[0]} is not divisible by num_groups={self.num_groups}; change ch or num_groups"
        factor = 2 ** (len(self.ch_mult) - 1)
        if self.resolution % factor:
            return f"resolution={self.resolution} must be divisible by {factor} for {len(self.ch_mult)} levels"
        return None

    @property
    def out_ch(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    def to_dict(self) -> dict:
        """A JSON/YAML-friendly dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        """Inverse of ``to_dict``; unknown keys are an error rather than silently ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DDIMError(f"unknown UNetConfig keys {unknown}; valid keys are {sorted(known)}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as err:  # e.g. "ch": "wide" from a hand-edited config file
            raise DDIMError(f"invalid UNetConfig values {d}: {err}; fix the config file") from err


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


PRESETS: dict[str, UNetConfig] = {
    # Small and fast: 0.77M params, ~135 ms per train step (fwd+bwd+Adam, batch 128, 16x16x1,
    # torch.set_num_threads(2), idle 2-core CPU), so 2000 steps take ~4.5 min and give recognisable digits.
    "digits": UNetConfig(
        resolution=16,
        in_channels=1,
        ch=32,
        ch_mult=(1, 1, 2),  # 16x16x32, 8x8x32, 4x4x64: a 2nd 64-wide level cost +50% time
        num_res_blocks=1,
        attn_resolutions=(8,),
        dropout=0.0,
        num_groups=8,
    ),
    "mnist": UNetConfig(resolution=32, in_channels=1, ch=64, ch_mult=(1, 2, 2), attn_resolutions=(16,)),
    # The official DDIM configs (paper Appendix D.1, after DDPM); cifar10 is DDPM's 35.7M-parameter model.
    "cifar10": UNetConfig(resolution=32, ch_mult=(1, 2, 2, 2)),
    "celeba": UNetConfig(resolution=64, ch_mult=(1, 2, 2, 2, 4)),
    "lsun": UNetConfig(resolution=256, ch_mult=(1, 1, 2, 2, 4, 4), dropout=0.0),
}


def preset(name: str) -> UNetConfig:
    """The named preset config (``digits``, ``mnist``, ``cifar10``, ``celeba``, ``lsun``)."""
    if name not in PRESETS:
        raise DDIMError(f"unknown UNet preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim), as in DDPM / the official DDIM code."""
    return _embed(t, _frequencies(dim, t.device), dim)


def _frequencies(dim: int, device: torch.device | None = None) -> Tensor:
    # 10000^(-i/(half-1)), i = 0..half-1 (the official code divides by half-1, not half).
    half = dim // 2
    return torch.exp(torch.arange(half, device=device, dtype=torch.float32) * -(math.log(10000) / (half - 1)))


def _embed(t: Tensor, freqs: Tensor, dim: int) -> Tensor:
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, 2*half)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _norm(channels: int, num_groups: int) -> nn.GroupNorm:
    # eps 1e-6 as in the official code (PyTorch's default is 1e-5).
    return nn.GroupNorm(num_groups, channels, eps=1e-6)


def _recorded(h: Tensor) -> bool:
    """Whether autograd records ops on ``h`` (training): then an in-place op costs a copy instead of saving one."""
    return h.requires_grad and torch.is_grad_enabled()


def _norm_silu(norm: nn.GroupNorm, x: Tensor) -> Tensor:
    fused = fused_norm.group_norm(norm, x, silu=True)  # channels_last on the CPU: one pass, see ddim.fused_norm
    if fused is not None:
        return fused
    # SiLU in place on GroupNorm's fresh output when no backward will run (sampling): one buffer less.
    # Under autograd in place costs a copy: SiLU's backward needs its input, so autograd would clone it.
    h = norm(x)
    return F.silu(h, inplace=not _recorded(h))


def _norm_only(norm: nn.GroupNorm, x: Tensor) -> Tensor:
    fused = fused_norm.group_norm(norm, x, silu=False)
    return norm(x) if fused is None else fused


def _memory_format(x: Tensor) -> torch.memory_format:
    """channels_last for an NHWC-strided tensor, else the default (NCHW) format."""
    nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if nhwc else torch.contiguous_format


def _add_(h: Tensor, other: Tensor) -> Tensor:
    """``h + other``, in place when that gives the same dtype (``h`` must be a fresh result no backward needs)."""
    return h.add_(other) if torch.promote_types(h.dtype, other.dtype) == h.dtype else h + other


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float, num_groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch, num_groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = _norm(out_ch, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor, temb_act: Tensor) -> Tensor:
        """``x`` (B, C_in, H, W); ``temb_act`` = SiLU(temb) (B, temb_ch), computed once per network call."""
        h = self.conv1(_norm_silu(self.norm1, x))
        h = _add_(h, self.temb_proj(temb_act)[:, :, None, None])  # broadcast over (H, W)
        h = _norm_silu(self.norm2, h)
        if self.dropout.p > 0:
            h = self.dropout(h)
        h = self.conv2(h)
        return _add_(h, x if self.nin_shortcut is None else self.nin_shortcut(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual connection.

    The q/k/v/proj_out weights are 1x1 convolutions (the official layout); they are applied as
    one (B, H*W, C) x (C, 3C) product for q, k, v and one for proj_out.
    """

    def __init__(self, channels: int, num_groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, num_groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = _norm_only(self.norm, x).flatten(2).transpose(1, 2)  # (B, H*W, C); a view (on CUDA GroupNorm returns NCHW)
        w_qkv = torch.cat([self.q.weight, self.k.weight, self.v.weight]).flatten(1)  # (3C, C)
        b_qkv = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        q, k, v = F.linear(h, w_qkv, b_qkv).unflatten(-1, (3, 1, C)).permute(2, 0, 3, 1, 4)  # 3 x (B, 1, H*W, C)
        h = F.scaled_dot_product_attention(q, k, v)[:, 0]  # (B, H*W, C), scale 1/sqrt(C) as in the official code
        h = F.linear(h, self.proj_out.weight.flatten(1), self.proj_out.bias)  # (B, H*W, C)
        # (B, C, H, W) in x's memory format: a free view for channels_last, one copy for NCHW (a mixed-layout
        # residual would hand channels_last strides to the NCHW layers downstream: slower kernels, more copies).
        h = h.transpose(1, 2).unflatten(2, (H, W)).contiguous(memory_format=_memory_format(x))
        # Under autograd out of place: for channels_last ``h`` is a view of proj_out's result, and an in-place add
        # on a view makes autograd copy the whole base in backward (CopySlices) and again for the view (AsStrided).
        return h + x if _recorded(h) else _add_(h, x)


class Downsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, 2)
        # Asymmetric (right, bottom) padding: the official code's port of TF's "SAME" stride-2 conv.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class UNet(nn.Module):
    """ε_θ(x_t, t): the DDPM UNet. ``forward(x (B,C,H,W), t (B,)) -> eps_pred (B,C_out,H,W)``."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = c = config
        temb_ch = 4 * c.ch
        groups, levels = c.num_groups, len(c.ch_mult)

        def res_block(i: int, o: int) -> ResnetBlock:
            return ResnetBlock(i, o, temb_ch, c.dropout, groups)

        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(c.ch, temb_ch), nn.Linear(temb_ch, temb_ch)])
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        # The embedding's frequencies, made once; not in the state dict (a pure function of ch).
        self.register_buffer("temb_freqs", _frequencies(c.ch), persistent=False)

        # Down path: remember each stored activation's width; the up path concatenates them in reverse.
        skip_chs, block_in, res = [c.ch], c.ch, c.resolution
        self.down = nn.ModuleList()
        for i_level, mult in enumerate(c.ch_mult):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(c.num_res_blocks):
                level.block.append(res_block(block_in, c.ch * mult))
                block_in = c.ch * mult
                if res in c.attn_resolutions:
                    level.attn.append(AttnBlock(block_in, groups))
                skip_chs.append(block_in)
            if i_level != levels - 1:
                level.downsample = Downsample(block_in, c.resamp_with_conv)
                res //= 2
                skip_chs.append(block_in)
            self.down.append(level)

        self.mid = nn.Module()
        self.mid.block_1 = res_block(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in, groups)
        self.mid.block_2 = res_block(block_in, block_in)

        # Up path is built from the lowest resolution upward but stored so up[i] matches down[i].
        up_levels: list[nn.Module] = []
        for i_level in reversed(range(levels)):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(c.num_res_blocks + 1):
                level.block.append(res_block(block_in + skip_chs.pop(), c.ch * c.ch_mult[i_level]))
                block_in = c.ch * c.ch_mult[i_level]
                if res in c.attn_resolutions:
                    level.attn.append(AttnBlock(block_in, groups))
            if i_level != 0:
                level.upsample = Upsample(block_in, c.resamp_with_conv)
                res *= 2
            up_levels.insert(0, level)
        self.up = nn.ModuleList(up_levels)

        self.norm_out = _norm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, c.out_ch, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Predict ε for noisy images ``x`` (B, C, H, W) at timesteps ``t`` (B,) (or a scalar), long or float."""
        c, levels = self.config, len(self.config.ch_mult)
        factor = 2 ** (levels - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise DDIMError(f"input size {tuple(x.shape[-2:])} must be divisible by {factor} for this UNet")
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t  # a scalar t applies to the whole batch

        freqs = self.temb_freqs
        if freqs.dtype != torch.float32:  # the model was cast (e.g. .half()): recompute, never round them
            freqs = _frequencies(c.ch, x.device)
        temb = _embed(t, freqs, c.ch)  # (B, ch)
        temb = self.temb.dense[1](F.silu(self.temb.dense[0](temb)))  # (B, 4ch)
        temb_act = F.silu(temb)  # every ResnetBlock projects SiLU(temb): computed once here

        hs = [self.conv_in(x)]
        for i_level, level in enumerate(self.down):
            for i_block, block in enumerate(level.block):
                h = block(hs[-1], temb_act)
                if len(level.attn):
                    h = level.attn[i_block](h)
                hs.append(h)
            if i_level != levels - 1:
                hs.append(level.downsample(hs[-1]))

        h = hs[-1]
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, temb_act)), temb_act)

        for i_level in reversed(range(levels)):
            level = self.up[i_level]
            for i_block, block in enumerate(level.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb_act)  # (B, C_h + C_skip, H, W)
                if len(level.attn):
                    h = level.attn[i_block](h)
            if i_level != 0:
                h = level.upsample(h)

        return self.conv_out(_norm_silu(self.norm_out, h))
