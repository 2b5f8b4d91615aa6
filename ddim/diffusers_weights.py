"""Import of diffusers ``UNet2DModel`` weights (a unet folder, or a pipeline folder with ``unet/``).

The architecture comes from ``config.json``; settings our UNet cannot reproduce (multi-head attention,
symmetric downsample padding, other time embeddings, ...) are refused in one line rather than converted
wrongly. The β schedule comes from ``scheduler_config.json`` when there is one, else DDPM's (linear
1e-4..0.02, T = 1000). Names map onto ours (which are the official DDIM/DDPM ones) by ``diffusers_name``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ddim.errors import DDIMError
from ddim.schedules import DiffusionConfig
from ddim.unet import UNetConfig
from ddim.weights_io import StateDict, check_fit, expected_shapes, listing, load_tensors, weights_problem

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# diffusers scheduler beta_schedule -> ours (same formulas: "scaled_linear" is the official "quad").
_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "quad", "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid"}
_SCHEDULER_KEYS = {"T": "num_train_timesteps"}  # our DiffusionConfig field -> the scheduler's key, where they differ
_RESNET = {"temb_proj": "time_emb_proj", "nin_shortcut": "conv_shortcut"}  # others keep their names
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_MID = {"block_1": "mid_block.resnets.0", "attn_1": "mid_block.attentions.0", "block_2": "mid_block.resnets.1"}
_FIXED = {"temb.dense.0": "time_embedding.linear_1", "temb.dense.1": "time_embedding.linear_2"}
_FIXED |= {"conv_in": "conv_in", "norm_out": "conv_norm_out", "conv_out": "conv_out"}
# Names of diffusers' deprecated AttentionBlock, still found in older Hub checkpoints such as google/ddpm-*.
_ATTN_LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def diffusers_name(name: str, levels: int) -> str:
    """The diffusers ``UNet2DModel`` key of one of our parameter names (DDPM layout; up blocks run bottom-up)."""
    head, _, kind = name.rpartition(".")
    if head in _FIXED:
        return f"{_FIXED[head]}.{kind}"
    parts = head.split(".")
    if parts[0] == "mid":  # mid.block_1.<leaf>, mid.attn_1.<leaf>
        part, leaf = parts[1], ".".join(parts[2:])
        prefix = _MID[part]
    else:  # down.<i>.block.<j>.<leaf>, up.<i>.attn.<j>.<leaf>, down.<i>.downsample.conv
        path, level = parts[0], int(parts[1]) if parts[0] == "down" else levels - 1 - int(parts[1])
        if parts[2] in ("downsample", "upsample"):
            return f"{path}_blocks.{level}.{path}samplers.0.conv.{kind}"
        part, leaf = parts[2], ".".join(parts[4:])
        prefix = f"{path}_blocks.{level}.{'resnets' if part == 'block' else 'attentions'}.{parts[3]}"
    table = _RESNET if part.startswith("block") else _ATTN
    return f"{prefix}.{table.get(leaf, leaf)}.{kind}"


def diffusers_to_ours(sd: StateDict, config: UNetConfig, src: str | Path = "the state dict") -> StateDict:
    """Rename a diffusers ``UNet2DModel`` state dict onto our UNet for ``config``; strict about every key.

    Attention projections are ``Linear`` (C, C) in diffusers and 1×1 convs (C, C, 1, 1) here (as in the
    official code): they are reshaped. Older checkpoints' ``query``/``key``/``value``/``proj_attn`` are accepted.
    """
    expected = expected_shapes(config)
    theirs = dict(sd)
    out: StateDict = {}
    names: dict[str, str] = {}
    for ours, shape in expected.items():
        key = names[ours] = diffusers_name(ours, len(config.ch_mult))
        leaf = next((n for n in _ATTN_LEGACY if f".{n}." in key), None)
        legacy = key.replace(f".{leaf}.", f".{_ATTN_LEGACY[leaf]}.") if leaf else None
        found = key if key in theirs else legacy if legacy in theirs else None
        if found is None:
            continue
        tensor = theirs.pop(found)
        if tensor.ndim == 2 and len(shape) == 4:
            tensor = tensor.reshape(*tensor.shape, 1, 1)  # Linear (C, C) -> 1x1 conv (C, C, 1, 1)
        out[ours] = tensor.float() if tensor.is_floating_point() else tensor
    check_fit({**out, **theirs}, expected, Path(src), names)
    return out


# config.json keys whose type is our UNetConfig field's (the one rule: UNetConfig.type_problem)
_AS_OURS = {"in_channels": "in_channels", "layers_per_block": "num_res_blocks", "norm_num_groups": "num_groups",
            "dropout": "dropout", "block_out_channels": "ch_mult"}  # fmt: skip


def _wrong_types(cfg: dict[str, Any]) -> list[str]:
    """``key=value must be ...`` for each config.json value of a type diffusers itself would not accept."""
    wrong = [
        f"{k}={cfg[k]!r} {p}" for k, f in _AS_OURS.items() if k in cfg and (p := UNetConfig.type_problem(f, cfg[k]))
    ]
    boc = cfg.get("block_out_channels")
    if boc is not None and UNetConfig.type_problem("ch_mult", boc) is None and (not boc or min(boc) < 1):
        wrong.append(f"block_out_channels={boc!r} must hold positive channel counts")
    for key in ("down_block_types", "up_block_types"):
        if key in cfg and not (isinstance(cfg[key], list) and all(isinstance(b, str) for b in cfg[key])):
            wrong.append(f"{key}={cfg[key]!r} must be a list of block names")
    eps = cfg.get("norm_eps", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        wrong.append(f"norm_eps={eps!r} must be a number")
    return wrong


def _unet_config_from_diffusers(cfg: dict[str, Any], src: Path) -> UNetConfig:
    """Our UNetConfig for a diffusers UNet2DModel config.json, refusing settings our UNet does not implement."""
    if wrong := _wrong_types(cfg):
        raise DDIMError(f"{src}: {listing(wrong)}; fix config.json or download the model again")
    get = cfg.get  # missing keys take diffusers' own defaults, as diffusers would
    boc = list(get("block_out_channels", (224, 448, 672, 896)))
    down = list(get("down_block_types", ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")))
    up = list(get("up_block_types", ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")))
    size = get("sample_size")
    size = size[0] if isinstance(size, (list, tuple)) and len(set(size)) == 1 else size
    groups, head_dim = get("norm_num_groups", 32), get("attention_head_dim", 8)
    attn_levels = [i for i, b in enumerate(down) if b == "AttnDownBlock2D"]
    # Settings the DDPM UNet fixes: {key: (diffusers' default when absent, the value it needs)}.
    fixed = {
        "_class_name": ("UNet2DModel", "UNet2DModel"),
        "time_embedding_type": ("positional", "positional"),
        "flip_sin_to_cos": (True, False),  # DDPM: [sin, cos]
        "freq_shift": (0, 1),  # DDPM: frequencies 10000^(-i/(half-1))
        "center_input_sample": (False, False),
        "act_fn": ("silu", "silu"),
        "downsample_padding": (1, 0),  # DDPM: asymmetric (0, 1, 0, 1) padding
        "downsample_type": ("conv", "conv"),
        "upsample_type": ("conv", "conv"),
        "resnet_time_scale_shift": ("default", "default"),
        "mid_block_type": ("UNetMidBlock2D", "UNetMidBlock2D"),
        "mid_block_scale_factor": (1, 1),
        "add_attention": (True, True),
        "class_embed_type": (None, None),
        "num_class_embeds": (None, None),
        "out_channels": (3, get("in_channels", 3)),  # ε has the input's shape (no learned variance)
    }
    bad = [k for k, (default, need) in fixed.items() if get(k, default) != need]
    checks = {
        "time_embedding_dim": get("time_embedding_dim") in (None, 4 * boc[0]),
        "norm_eps": abs(float(get("norm_eps", 1e-5)) - 1e-6) < 1e-12,  # our GroupNorm eps is 1e-6
        "attn_norm_num_groups": get("attn_norm_num_groups") in (None, groups),
        # single-head attention: head dim None (= channels) or the channels at every attention layer
        "attention_head_dim": head_dim is None or all(head_dim == boc[i] for i in [*attn_levels, -1]),
        "down_block_types": set(down) <= {"DownBlock2D", "AttnDownBlock2D"} and len(down) == len(boc),
        "up_block_types": [b == "AttnUpBlock2D" for b in reversed(up)] == [b == "AttnDownBlock2D" for b in down],
        "block_out_channels": all(c % boc[0] == 0 for c in boc),
        "sample_size": isinstance(size, int),
    }
    bad += [k for k, ok in checks.items() if not ok]
    if bad:
        shown = [f"{k}={cfg[k]!r}" if k in cfg else f"{k} (absent)" for k in bad]
        raise DDIMError(f"{src}: this UNet2DModel differs from the DDPM UNet in {listing(shown)}; cannot import it")
    return UNetConfig(
        resolution=size,
        in_channels=int(get("in_channels", 3)),
        ch=boc[0],
        ch_mult=tuple(c // boc[0] for c in boc),
        num_res_blocks=int(get("layers_per_block", 2)),
        attn_resolutions=tuple(size // 2**i for i in attn_levels),
        dropout=float(get("dropout", 0.0)),
        resamp_with_conv=True,
        num_groups=int(groups),
    )


def _diffusion_from_scheduler(cfg: dict[str, Any] | None, T: int | None, src: Path) -> DiffusionConfig:
    """The forward process from a diffusers scheduler config; DDPM's when there is none."""
    if cfg is None:
        diffusion = DiffusionConfig(T=1000 if T is None else T)
        if problem := diffusion.problem(lambda k: "--T" if k == "T" else k):
            raise DDIMError(f"{problem}; there is no scheduler_config.json to take T from")
        return diffusion
    problems = [
        f"{k}={cfg[k]!r}"
        for k, ok in (("prediction_type", "epsilon"), ("trained_betas", None), ("rescale_betas_zero_snr", False))
        if cfg.get(k, ok) != ok
    ]
    schedule = cfg.get("beta_schedule", "linear")
    if not isinstance(schedule, str) or schedule not in _BETA_SCHEDULES:
        problems.append(f"beta_schedule={schedule!r}")
    n = cfg.get("num_train_timesteps", 1000)
    if T is not None and T != n:
        problems.append(f"num_train_timesteps={n!r} but T={T} was asked for")
    if problems:
        raise DDIMError(f"{src}: unsupported scheduler settings {listing(problems)} (ε-prediction only)")
    diffusion = DiffusionConfig(_BETA_SCHEDULES[schedule], n, cfg.get("beta_start", 1e-4), cfg.get("beta_end", 0.02))
    if problem := diffusion.problem(lambda k: _SCHEDULER_KEYS.get(k, k)):
        raise DDIMError(f"{src}: {problem}; fix scheduler_config.json or download it again")
    return diffusion


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DDIMError(f"cannot read {path} ({type(exc).__name__}); the download may be incomplete") from None
    if not isinstance(data, dict):
        raise DDIMError(f"{path} is not a JSON object; is this a diffusers model directory?")
    return data


def _local_diffusers_dir(src: str | Path) -> Path:
    """A local directory for ``src``: the path itself, or a Hub snapshot when ``src`` is ``owner/name``."""
    path = Path(src)
    if path.exists():
        return path
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", str(src)):
        raise DDIMError(f"{src} does not exist; pass a diffusers model directory, a Hub name or an official .ckpt")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(src), allow_patterns=["*.json", *(f"*{f}" for f in WEIGHT_FILES)]))
    except Exception as exc:  # offline, unknown repo, missing package: all one answer
        raise DDIMError(
            f"{src} is not a local path and cannot be fetched from the Hugging Face Hub ({type(exc).__name__}); "
            f"download it where there "
            f"is network (`huggingface-cli download {src} --local-dir DIR`) and pass the local directory"
        ) from None


def from_diffusers(src: str | Path, *, T: int | None = None) -> tuple[StateDict, UNetConfig, DiffusionConfig]:
    """(our state dict, UNetConfig, DiffusionConfig) from a diffusers UNet2DModel directory or Hub name.

    ``src`` may be the unet directory or a pipeline directory holding ``unet/``; the scheduler config is
    looked for in ``scheduler/``, beside the unet, or in the unet directory. ``T``: the number of training
    steps when no scheduler config is found (default 1000); it must agree with one that is.
    """
    root = _local_diffusers_dir(src)
    unet_dir = root / "unet" if (root / "unet" / "config.json").is_file() else root
    if not (unet_dir / "config.json").is_file():
        raise DDIMError(f"{root} has no config.json or unet/config.json; is it a diffusers UNet2DModel directory?")
    weights = next((unet_dir / f for f in WEIGHT_FILES if (unet_dir / f).is_file()), None)
    if weights is None:
        raise DDIMError(f"{unet_dir} has no {' or '.join(WEIGHT_FILES)}; download the weights too")
    config = _unet_config_from_diffusers(read_json(unet_dir / "config.json"), unet_dir / "config.json")
    candidates = [root / "scheduler", unet_dir.parent / "scheduler", unet_dir, root]
    sched = next((d / "scheduler_config.json" for d in candidates if (d / "scheduler_config.json").is_file()), None)
    diffusion = _diffusion_from_scheduler(read_json(sched) if sched else None, T, sched or unet_dir)
    raw = load_tensors(weights)
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise DDIMError(f"{weights} does not hold a state dict")
    if problem := weights_problem(raw):  # what load_checkpoint would refuse: refused before anything is written
        raise DDIMError(f"weights in {weights} cannot be imported: {problem}; use an intact copy of the file")
    return diffusers_to_ours(raw, config, weights), config, diffusion
