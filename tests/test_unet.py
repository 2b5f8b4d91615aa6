"""Tests for ddim.unet: shapes, presets, timestep handling, config round-trip, autocast, gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ddim import fused_norm
from ddim.diffusers_weights import diffusers_to_ours
from ddim.errors import DDIMError
from ddim.unet import PRESETS, UNet, UNetConfig, preset, timestep_embedding


def tiny(**overrides) -> UNetConfig:
    base = dict(resolution=16, in_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))
    base.update(dropout=0.0, num_groups=4)
    return UNetConfig(**{**base, **overrides})


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"ch_mult": (1,), "attn_resolutions": ()},
        {"ch_mult": (1, 2, 2), "attn_resolutions": (16, 4)},
        {"resamp_with_conv": False},
        {"num_res_blocks": 2, "num_groups": 2},
        {"num_groups": 1, "attn_resolutions": ()},
        {"in_channels": 1},
        {"in_channels": 2, "out_channels": 4},
        {"ch_mult": (1, 1, 2, 2), "resolution": 32, "dropout": 0.1},
    ],
)
def test_output_shape(overrides: dict) -> None:
    config = tiny(**overrides)
    model = UNet(config)
    x = torch.randn(2, config.in_channels, config.resolution, config.resolution)
    eps_pred = model(x, torch.tensor([0, 999]))
    assert eps_pred.shape == (2, config.out_ch, config.resolution, config.resolution)
    assert torch.isfinite(eps_pred).all()


def test_attention_only_where_asked() -> None:
    model = UNet(tiny(ch_mult=(1, 2, 2), attn_resolutions=(8,)))
    assert [len(level.attn) for level in model.down] == [0, 1, 0]
    assert [len(level.attn) for level in model.up] == [0, 2, 0]  # num_res_blocks + 1 on the way up


def test_official_module_names() -> None:
    names = set(dict(UNet(tiny(ch_mult=(1, 2), num_res_blocks=2)).named_parameters()))
    for expected in [
        "temb.dense.0.weight",
        "temb.dense.1.bias",
        "conv_in.weight",
        "down.0.block.1.conv2.weight",
        "down.1.block.0.nin_shortcut.weight",
        "down.1.attn.0.proj_out.weight",
        "down.0.downsample.conv.weight",
        "mid.block_1.temb_proj.weight",
        "mid.attn_1.q.weight",
        "mid.block_2.norm2.bias",
        "up.1.block.2.norm1.weight",
        "up.1.attn.2.k.weight",
        "up.1.upsample.conv.weight",
        "norm_out.weight",
        "conv_out.bias",
    ]:
        assert expected in names, expected


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name: str) -> None:
    config = preset(name)
    assert config is PRESETS[name]
    with torch.device("meta"):  # no memory for lsun's 114M parameters
        model = UNet(config)
    assert n_params(model) > 100_000
    if name == "cifar10":
        # DDPM's CIFAR10 model has 35.7M parameters (Ho et al. 2020, section 4).
        assert abs(n_params(model) - 35.7e6) / 35.7e6 < 0.02


def test_paper_presets_match_table() -> None:
    rows = {
        "cifar10": (32, (1, 2, 2, 2), 0.1),
        "celeba": (64, (1, 2, 2, 2, 4), 0.1),
        "lsun": (256, (1, 1, 2, 2, 4, 4), 0.0),
    }
    for name, (resolution, ch_mult, dropout) in rows.items():
        c = preset(name)
        assert (c.resolution, c.ch_mult, c.dropout) == (resolution, ch_mult, dropout)
        assert (c.in_channels, c.ch, c.num_res_blocks, c.attn_resolutions) == (3, 128, 2, (16,))
    assert (preset("digits").resolution, preset("digits").in_channels) == (16, 1)
    assert (preset("mnist").resolution, preset("mnist").in_channels) == (32, 1)


def test_digits_preset_runs() -> None:
    config = preset("digits")
    x = torch.randn(2, 1, 16, 16)
    assert UNet(config)(x, torch.tensor([1, 2])).shape == x.shape


def test_unknown_preset() -> None:
    with pytest.raises(DDIMError, match="unknown UNet preset 'nope'.*cifar10"):
        preset("nope")


def test_float_and_long_t_agree_and_t_matters() -> None:
    torch.manual_seed(0)
    model = UNet(tiny()).eval()
    x = torch.randn(3, 3, 16, 16)
    t = torch.tensor([0, 250, 999])
    out_long = model(x, t)
    torch.testing.assert_close(model(x, t.float()), out_long)
    assert not torch.allclose(model(x, t + 1), out_long)
    # A scalar t applies to every sample.
    torch.testing.assert_close(model(x, torch.tensor(7)), model(x, torch.full((3,), 7)))


def test_timestep_embedding() -> None:
    emb = timestep_embedding(torch.tensor([0, 5]), 9)
    assert emb.shape == (2, 9)
    torch.testing.assert_close(emb[0, :4], torch.zeros(4))  # sin(0)
    torch.testing.assert_close(emb[0, 4:8], torch.ones(4))  # cos(0)
    assert emb[:, 8].abs().max() == 0  # odd dim is zero-padded


def test_config_round_trip() -> None:
    for config in [*PRESETS.values(), tiny(out_channels=6, resamp_with_conv=False)]:
        d = config.to_dict()
        assert isinstance(d["ch_mult"], list)
        assert UNetConfig.from_dict(d) == config
    assert UNetConfig.from_dict({"ch_mult": [1, 2], "attn_resolutions": []}).ch_mult == (1, 2)


def test_config_errors() -> None:
    with pytest.raises(DDIMError, match="unknown UNetConfig keys \\['chh'\\]"):
        UNetConfig.from_dict({"chh": 3})
    with pytest.raises(DDIMError, match="invalid UNetConfig: ch='wide' must be an integer"):
        UNetConfig.from_dict({"ch": "wide"})
    for field, value in (("ch_mult", "12"), ("ch_mult", [1, 2.7]), ("num_groups", 2.5), ("resamp_with_conv", "no")):
        with pytest.raises(DDIMError, match=f"invalid UNetConfig: {field}="):  # never cast: "12" is not (1, 2)
            UNetConfig.from_dict({field: value})
    with pytest.raises(DDIMError, match="num_groups"):
        UNetConfig(ch=24, num_groups=32)
    with pytest.raises(DDIMError, match="divisible by 4"):
        UNetConfig(resolution=18, ch_mult=(1, 2, 2), num_groups=8, ch=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset("cifar10").ch = 64  # type: ignore[misc]


def test_input_size_must_fit_levels() -> None:
    with pytest.raises(DDIMError, match="divisible by 2"):
        UNet(tiny())(torch.randn(1, 3, 15, 15), torch.tensor([1]))


def test_bf16_autocast_and_channels_last() -> None:
    torch.manual_seed(0)
    model = UNet(tiny(ch_mult=(1, 2, 2), attn_resolutions=(8, 4))).eval()
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        reference = model(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf16 = model(x, t)
        assert torch.isfinite(out_bf16).all()
        assert (out_bf16.float() - reference).abs().max() < 0.1
        x_cl = x.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x_cl, t), reference, atol=1e-5, rtol=1e-4)
        model_cl = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model_cl(x_cl, t), reference, atol=1e-5, rtol=1e-4)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = UNet(tiny(ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(16, 8), dropout=0.1))
    x = torch.randn(2, 3, 16, 16)
    loss = model(x, torch.tensor([3, 600])).square().sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def _graph_nodes(out: torch.Tensor) -> set[str]:
    seen, todo, names = set(), [out.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(fn for fn, _ in node.next_functions)
    return names


@pytest.mark.parametrize(("channels_last", "fused"), [(False, False), (True, False), (True, True)])
def test_training_forward_copies_no_activation(
    channels_last: bool, fused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under autograd no in-place op clones an activation (SiLU's backward needs its input) or
    writes through a view (CopySlices), and the numbers equal the in-place sampling path bit for bit; with PyTorch's
    GroupNorm and, for channels_last, with the fused one (ddim.fused_norm, which runs no SiLU of PyTorch's)."""
    if not fused:
        monkeypatch.setenv(fused_norm.OFF_SWITCH, "0")
    elif fused_norm.kernels() is None:
        pytest.skip("the fused GroupNorm kernels cannot be built here (tests/test_fused_norm.py says why)")
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: Counter[str] = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            self.ops[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = UNet(tiny(ch_mult=(1, 2), attn_resolutions=(8,))).to(memory_format=fmt)
    x, t = torch.randn(2, 3, 16, 16).contiguous(memory_format=fmt), torch.tensor([3, 600])
    with Count() as grad_mode:
        out = model(x, t)
    with torch.no_grad(), Count() as no_grad:
        reference = model(x, t)
    assert grad_mode.ops["aten.silu_"] == 0 and (no_grad.ops["aten.silu_"] > 0) != fused
    assert (no_grad.ops["aten.native_group_norm"] == 0) == fused
    if channels_last:  # (NCHW attention transposes its input and output: copies with or without autograd)
        assert grad_mode.ops["aten.clone"] == 0
    assert not {"CopySlices", "AsStridedBackward0"} & _graph_nodes(out)
    assert torch.equal(out, reference)


def test_dropout_only_in_train_mode() -> None:
    torch.manual_seed(0)
    model = UNet(tiny(dropout=0.5))
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([5])
    model.eval()
    torch.testing.assert_close(model(x, t), model(x, t))
    model.train()
    assert not torch.allclose(model(x, t), model(x, t))


def test_matches_diffusers_ddpm_unet() -> None:
    """Independent reference: diffusers' UNet2DModel in the DDPM layout, its weights renamed onto ours."""
    import diffusers

    torch.manual_seed(0)
    config = tiny(ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8,))
    ref = diffusers.UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 16),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        norm_eps=1e-6,
        downsample_padding=0,  # the asymmetric (0, 1, 0, 1) pad
        flip_sin_to_cos=False,  # [sin, cos] as in DDPM
        freq_shift=1,  # frequencies divided by half - 1
        attention_head_dim=None,  # a single head
    ).eval()
    model = UNet(config).eval()
    model.load_state_dict(diffusers_to_ours(ref.state_dict(), config), strict=True)
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 37, 999])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), ref(x, t).sample, atol=1e-5, rtol=1e-4)
