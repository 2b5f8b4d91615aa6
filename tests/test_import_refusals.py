"""`import-weights` refuses a bad source in one line, exit 2, and writes nothing (no --out folder at all).

Each case spoils one thing of a valid source: an official YAML value or section of the wrong type, a weight
that cannot give the channel counts, a diffusers config.json or scheduler_config.json value, a forward process
`train` would refuse, or weights `load_checkpoint` would refuse. These were tracebacks, or a checkpoint that
was written and then refused (or sampled silently) by every later command.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers.cli import run_err

from ddim.unet import UNet, UNetConfig

# The official Model's layout at its smallest: GroupNorm has 32 groups there, so ch = 32.
OFFICIAL = UNetConfig(resolution=16, in_channels=1, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                      dropout=0.0)  # fmt: skip
MODEL = {"in_channels": 1, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
YAML = {
    "data": {"dataset": "digits", "image_size": 16},
    "model": {**MODEL, "resamp_with_conv": True},
    "diffusion": {"beta_schedule": "linear", "num_diffusion_timesteps": 100, "beta_start": 0.0001, "beta_end": 0.02},
}
# A diffusers UNet2DModel config.json of the DDPM layout (what google/ddpm-* hold), as small.
DIFFUSERS = {"block_out_channels": [32, 64], "down_block_types": ["DownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "UpBlock2D"], "sample_size": 16, "in_channels": 1, "out_channels": 1,
             "layers_per_block": 1, "norm_eps": 1e-6, "flip_sin_to_cos": False, "freq_shift": 1,
             "downsample_padding": 0, "attention_head_dim": None}  # fmt: skip


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return UNet(OFFICIAL).state_dict()  # our names are the official ones


def refused(argv: list, out: Path, capsys: pytest.CaptureFixture) -> str:
    code, err = run_err(["import-weights", *argv, "--out", out], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert not out.exists(), "nothing may be written for a bad source"
    return err


def official(tmp_path: Path, sd: dict, yml: dict) -> list:
    torch.save(sd, tmp_path / "model.ckpt")
    (tmp_path / "config.yml").write_text(yaml.safe_dump(yml))
    return [tmp_path / "model.ckpt", "--config", tmp_path / "config.yml"]


def test_the_valid_sources_import(weights, tmp_path, capsys):
    """The control: the unspoilt official source imports, so each refusal below is its one change's."""
    code, err = run_err(["import-weights", *official(tmp_path, weights, YAML), "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    assert (tmp_path / "run" / "checkpoints" / "step-0000000.pt").is_file()


YAML_CASES = {
    "ch a string": (lambda y: y["model"].update(ch="x"), "model.ch='x' must be an integer"),
    "ch_mult a number": (lambda y: y["model"].update(ch_mult=5), "model.ch_mult=5 must be a list of integers"),
    "dropout a string": (lambda y: y["model"].update(dropout="x"), "model.dropout='x' must be a number"),
    "image_size a string": (lambda y: y["data"].update(image_size="x"), "data.image_size='x' must be an integer"),
    "dataset a list": (lambda y: y["data"].update(dataset=[1]), "data.dataset=[1] is not a dataset name"),
    "data a number": (lambda y: y.update(data=5), "the data section is 5, not a mapping"),
    "diffusion a list": (lambda y: y.update(diffusion=[1]), "the diffusion section is [1], not a mapping"),
    "T = 0": (
        lambda y: y["diffusion"].update(num_diffusion_timesteps=0),
        "diffusion.num_diffusion_timesteps must be an integer in 1..100000, got 0",
    ),
    "beta_start NaN": (lambda y: y["diffusion"].update(beta_start=float("nan")), "need 0 < diffusion.beta_start"),
    "beta_start a word": (lambda y: y["diffusion"].update(beta_start="x"), "diffusion.beta_start='x' is not a number"),
}


@pytest.mark.parametrize("case", YAML_CASES)
def test_bad_official_yaml(weights, tmp_path, capsys, case):
    spoil, needle = YAML_CASES[case]
    yml = copy.deepcopy(YAML)
    spoil(yml)
    err = refused(official(tmp_path, weights, yml), tmp_path / "run", capsys)
    assert "config.yml" in err and needle in err and "fix the YAML" in err, err


def _set(key: str, value):
    return lambda sd: sd.update({key: value})


WEIGHT_CASES = {
    "conv_in of 0 channels": (_set("conv_in.weight", torch.zeros(0, 1, 3, 3)), "conv_in.weight has shape (0, 1, 3, 3)"),
    "conv_in 1-D": (_set("conv_in.weight", torch.zeros(5)), "conv_in.weight has shape (5,), not a convolution's"),
    "a level numbered past the rest": (_set("down.999999999999.x", torch.zeros(1)), "down levels are numbered [0, 1, "),
    "NaN": (lambda sd: sd["temb.dense.0.weight"].fill_(float("nan")), "temb.dense.0.weight holds NaN"),
    "sparse": (lambda sd: sd.update({k: v.to_sparse() for k, v in sd.items()}), "sparse_coo tensor, not a dense one"),
    "complex": (lambda sd: sd.update({k: v.to(torch.complex64) for k, v in sd.items()}), "dtype torch.complex64"),
    "integer": (lambda sd: sd.update({k: v.long() for k, v in sd.items()}), "dtype torch.int64, not a real floating"),
}


@pytest.mark.parametrize("case", WEIGHT_CASES)
def test_bad_official_weights(weights, tmp_path, capsys, case):
    spoil, needle = WEIGHT_CASES[case]
    sd = {k: v.clone() for k, v in weights.items()}
    spoil(sd)
    err = refused(official(tmp_path, sd, YAML), tmp_path / "run", capsys)
    assert "model.ckpt" in err and needle in err, err


def diffusers_dir(path: Path, config: dict, scheduler: dict | None = None, sd: dict | None = None) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    torch.save(sd or {"conv_in.weight": torch.zeros(32, 1, 3, 3)}, path / "diffusion_pytorch_model.bin")
    if scheduler is not None:
        (path / "scheduler_config.json").write_text(json.dumps(scheduler))
    return path


DIFFUSERS_CASES = {  # (config.json changes, scheduler_config.json, weights, --T): what is refused
    "block_out_channels empty": ({"block_out_channels": []}, None, None, None, "block_out_channels=[] must hold"),
    "block_out_channels a number": ({"block_out_channels": 5}, None, None, None, "block_out_channels=5 must be a"),
    "block_out_channels words": ({"block_out_channels": ["abc"]}, None, None, None, "=['abc'] must be a list of int"),
    "block_out_channels of 0": ({"block_out_channels": [0, 64]}, None, None, None, "=[0, 64] must hold positive"),
    "down_block_types a number": ({"down_block_types": 5}, None, None, None, "down_block_types=5 must be a list of"),
    "norm_eps a word": ({"norm_eps": "x"}, None, None, None, "norm_eps='x' must be a number"),
    "timesteps a word": ({}, {"num_train_timesteps": "x"}, None, None, "num_train_timesteps must be an integer"),
    "timesteps 0": ({}, {"num_train_timesteps": 0}, None, None, "num_train_timesteps must be an integer in 1..100000"),
    "beta_start NaN": ({}, {"beta_start": float("nan")}, None, None, "need 0 < beta_start ≤ beta_end < 1, got nan"),
    "--T 0 without a scheduler": ({}, None, None, 0, "--T must be an integer in 1..100000, got 0"),
    "NaN weights": ({}, None, {"conv_in.weight": torch.full((1,), float("nan"))}, None, "conv_in.weight holds NaN"),
}


@pytest.mark.parametrize("case", DIFFUSERS_CASES)
def test_bad_diffusers_source(tmp_path, capsys, case):
    changes, scheduler, sd, T, needle = DIFFUSERS_CASES[case]
    src = diffusers_dir(tmp_path / "unet", {**DIFFUSERS, **changes}, scheduler, sd)
    err = refused([src, *(["--T", T] if T is not None else [])], tmp_path / "run", capsys)
    assert needle in err, err
