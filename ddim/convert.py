"""Import pretrained DDPM weights into our UNet and write them as a ddimbench checkpoint.

Two sources, both read as tensors only (``safetensors`` or ``torch.load(weights_only=True)``, no pickled code):

- **diffusers** ``UNet2DModel`` directories (``config.json`` + ``diffusion_pytorch_model.safetensors`` or
  ``.bin``): the unet directory itself or a pipeline directory with ``unet/`` (and ``scheduler/``); a Hub
  name such as ``google/ddpm-cifar10-32`` when ``huggingface_hub`` can download it. The architecture comes
  from ``config.json``; settings our UNet cannot reproduce (multi-head attention, symmetric downsample
  padding, other time embeddings, ...) are refused in one line rather than converted wrongly. The β
  schedule comes from ``scheduler_config.json`` when there is one, else DDPM's (linear 1e-4..0.02, T = 1000).
- **official** DDIM / DDPM PyTorch state dicts (ermongroup/ddim ``models/diffusion.py``; the converted DDPM
  CIFAR10 / LSUN ``.ckpt`` files): our module names *are* the official ones, so keys map 1:1 (a
  ``module.`` prefix from DataParallel is dropped; a training ``ckpt.pth`` list gives its EMA weights).
  See ``from_official`` for which hyper-parameters are read from the weights and which need a config.

``import_weights`` writes ``<run_dir>/checkpoints/step-0000000.pt`` (model and EMA = the imported weights),
which ``ddim.checkpoint.load_checkpoint`` and every sampler / sweep then use like a trained run.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ddim.checkpoint import DiffusionConfig, checkpoint_path, list_checkpoints, save_checkpoint
from ddim.data import DATASETS, DatasetInfo, dataset_info
from ddim.errors import DDIMError
from ddim.runtime import atomic_write_json
from ddim.unet import PRESETS, UNet, UNetConfig
from ddim.unet import preset as unet_preset

__all__ = ["diffusers_name", "diffusers_to_ours", "from_diffusers", "from_official", "import_weights"]

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
StateDict = dict[str, torch.Tensor]

# diffusers scheduler beta_schedule -> ours (same formulas: "scaled_linear" is the official "quad").
_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "quad", "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid"}
_RESNET = {"temb_proj": "time_emb_proj", "nin_shortcut": "conv_shortcut"}  # others keep their names
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_MID = {"block_1": "mid_block.resnets.0", "attn_1": "mid_block.attentions.0", "block_2": "mid_block.resnets.1"}
_FIXED = {"temb.dense.0": "time_embedding.linear_1", "temb.dense.1": "time_embedding.linear_2"}
_FIXED |= {"conv_in": "conv_in", "norm_out": "conv_norm_out", "conv_out": "conv_out"}
# Names of diffusers' deprecated AttentionBlock, still found in older Hub checkpoints such as google/ddpm-*.
_ATTN_LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _listing(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _expected_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # names and shapes only, no memory
        return {k: tuple(v.shape) for k, v in UNet(config).state_dict().items()}


def _load_tensors(path: Path) -> Any:
    """Tensors (or containers of tensors) from a .safetensors or torch file, never executing pickled code."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise DDIMError(f"reading {path.name} needs the safetensors package; pip install safetensors") from None
    except Exception as exc:  # truncated / foreign / non-tensor pickles raise many types
        raise DDIMError(f"cannot read weights from {path} ({type(exc).__name__}); is it a tensor file?") from None


def _check_fit(sd: StateDict, expected: dict[str, tuple[int, ...]], src: Path, names: dict[str, str]) -> None:
    """One-line error for missing / unexpected / wrongly shaped weights (``names``: ours -> source key)."""
    missing = [names.get(k, k) for k in expected if k not in sd]
    wrong = [f"{names.get(k, k)} {tuple(sd[k].shape)}≠{s}" for k, s in expected.items() if k in sd and sd[k].shape != s]
    unexpected = [k for k in sd if k not in expected]
    problems = [
        f"{label} {_listing(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if keys
    ]
    if problems:
        raise DDIMError(f"weights in {src} do not fit the UNet described by its config: {'; '.join(problems)}")


# ---------------------------------------------------------------------------------------------- diffusers


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
    expected = _expected_shapes(config)
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
    _check_fit({**out, **theirs}, expected, Path(src), names)
    return out


def _unet_config_from_diffusers(cfg: dict[str, Any], src: Path) -> UNetConfig:
    """Our UNetConfig for a diffusers UNet2DModel config.json, refusing settings our UNet does not implement."""
    get = cfg.get  # missing keys take diffusers' own defaults, as diffusers would
    boc = [int(c) for c in get("block_out_channels", (224, 448, 672, 896))]
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
        raise DDIMError(f"{src}: this UNet2DModel differs from the DDPM UNet in {_listing(shown)}; cannot import it")
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
        return DiffusionConfig(T=T or 1000)
    problems = [
        f"{k}={cfg[k]!r}"
        for k, ok in (("prediction_type", "epsilon"), ("trained_betas", None), ("rescale_betas_zero_snr", False))
        if cfg.get(k, ok) != ok
    ]
    schedule = cfg.get("beta_schedule", "linear")
    if schedule not in _BETA_SCHEDULES:
        problems.append(f"beta_schedule={schedule!r}")
    n = int(cfg.get("num_train_timesteps", 1000))
    if T is not None and T != n:
        problems.append(f"num_train_timesteps={n} but T={T} was asked for")
    if problems:
        raise DDIMError(f"{src}: unsupported scheduler settings {_listing(problems)} (ε-prediction only)")
    return DiffusionConfig(
        _BETA_SCHEDULES[schedule], n, float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    )


def _read_json(path: Path) -> dict[str, Any]:
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
    config = _unet_config_from_diffusers(_read_json(unet_dir / "config.json"), unet_dir / "config.json")
    candidates = [root / "scheduler", unet_dir.parent / "scheduler", unet_dir, root]
    sched = next((d / "scheduler_config.json" for d in candidates if (d / "scheduler_config.json").is_file()), None)
    diffusion = _diffusion_from_scheduler(_read_json(sched) if sched else None, T, sched or unet_dir)
    raw = _load_tensors(weights)
    if not isinstance(raw, dict):
        raise DDIMError(f"{weights} does not hold a state dict")
    return diffusers_to_ours(raw, config, weights), config, diffusion


# ---------------------------------------------------------------------------------------------- official


def _official_state_dict(raw: Any, path: Path) -> StateDict:
    """The weights of an official checkpoint: a plain state dict, or a training ``ckpt.pth`` list
    ``[model, optimizer, epoch, step, ema]`` (its EMA weights when present); ``module.`` prefixes dropped."""
    if isinstance(raw, (list, tuple)) and raw and isinstance(raw[0], dict):
        raw = raw[4] if len(raw) >= 5 and isinstance(raw[4], dict) else raw[0]
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        hint = " (it is a ddimbench checkpoint already)" if isinstance(raw, dict) and "format" in raw else ""
        raise DDIMError(f"{path} is not an official DDIM/DDPM state dict{hint}")
    sd = {k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in raw.items()}
    sd.pop("logvar", None)  # the official "bayesian" model type's unused per-step log-variance
    return sd


def _official_yaml(config: str | Path | dict[str, Any]) -> dict[str, Any]:
    if isinstance(config, dict):
        return config
    import yaml

    try:
        data = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DDIMError(f"cannot read config {config} ({type(exc).__name__}); pass the official YAML file") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise DDIMError(f"{config} is not an official DDIM config (no 'model' section)")
    return data


def from_official(
    ckpt_path: str | Path, *, config: str | Path | dict[str, Any] | UNetConfig | None = None
) -> tuple[StateDict, UNetConfig, DiffusionConfig]:
    """(our state dict, UNetConfig, DiffusionConfig) from an official DDIM/DDPM PyTorch checkpoint.

    Read from the weights: ``in_channels``, ``ch`` (conv_in), ``out_channels`` (conv_out), ``ch_mult`` (each
    level's first block), ``num_res_blocks``, which levels have attention, ``resamp_with_conv``. Not in the
    weights: ``resolution`` (so the attention resolutions in pixels) and ``dropout``; they come from ``config``
    (the official YAML as a path or parsed dict, or a ``UNetConfig`` such as ``preset("cifar10")``), else from
    the one preset with the same architecture (cifar10, celeba, lsun). GroupNorm uses 32 groups, as the
    official ``Normalize`` does. The β schedule is the YAML's ``diffusion`` section, else DDPM's.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise DDIMError(f"checkpoint {path} does not exist; pass an official .ckpt / .pth file")
    sd = _official_state_dict(_load_tensors(path), path)
    if "conv_in.weight" not in sd or "conv_out.weight" not in sd or "down.0.block.0.conv1.weight" not in sd:
        raise DDIMError(f"{path} lacks conv_in / conv_out / down.0.block.0 weights; it is not an official DDPM UNet")
    ch, in_ch = sd["conv_in.weight"].shape[:2]
    levels = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"down\.(\d+)\.", k)))
    widths = [
        sd[f"down.{i}.block.0.conv1.weight"].shape[0] if f"down.{i}.block.0.conv1.weight" in sd else 0
        for i in range(levels)
    ]
    arch = {
        "in_channels": int(in_ch),
        "out_channels": None if sd["conv_out.weight"].shape[0] == in_ch else int(sd["conv_out.weight"].shape[0]),
        "ch": int(ch),
        "ch_mult": tuple(w // ch for w in widths),
        "num_res_blocks": len({k.split(".")[3] for k in sd if k.startswith("down.0.block.")}),
        "resamp_with_conv": levels == 1 or "down.0.downsample.conv.weight" in sd,
    }
    attn_levels = sorted({int(k.split(".")[1]) for k in sd if re.match(r"down\.\d+\.attn\.", k)})
    if any(w == 0 or w % ch for w in widths):
        raise DDIMError(f"{path}: level widths {widths} are not multiples of ch={ch}; not an official DDPM UNet")
    diffusion = DiffusionConfig()
    if config is None:
        same = [c for c in PRESETS.values() if _arch_of(c) == (arch, attn_levels)]
        if len(same) != 1:
            raise DDIMError(
                f"{path}: the resolution is not in the weights and no preset has this architecture "
                f"(ch_mult={arch['ch_mult']}); pass the official YAML config or a preset"
            )
        base = same[0]
    elif isinstance(config, UNetConfig):
        base = config
    else:
        yml = _official_yaml(config)
        m, d = yml["model"], yml.get("data", {})
        keep = ("in_channels", "ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resamp_with_conv")
        base = UNetConfig(
            resolution=d.get("image_size", 32), out_channels=m.get("out_ch"), **{k: m[k] for k in keep if k in m}
        )
        dy = yml.get("diffusion") or {}
        try:  # PyYAML reads "1e-4" (no dot) as a string: cast
            diffusion = DiffusionConfig(
                str(dy.get("beta_schedule", "linear")),
                int(dy.get("num_diffusion_timesteps", 1000)),
                float(dy.get("beta_start", 1e-4)),
                float(dy.get("beta_end", 0.02)),
            )
        except (TypeError, ValueError) as exc:
            raise DDIMError(f"{config}: bad diffusion section {dy} ({exc})") from None
    if _arch_of(base) != (arch, attn_levels):
        raise DDIMError(f"{path}: the config ({_arch_of(base)}) does not match the weights ({(arch, attn_levels)})")
    unet = UNetConfig(**{**asdict(base), **arch, "num_groups": 32})  # 32: the official Normalize()
    _check_fit(sd, _expected_shapes(unet), path, {})
    return sd, unet, diffusion


def _arch_of(c: UNetConfig) -> tuple[dict[str, Any], list[int]]:
    """What the weights determine: the shape-giving fields and the indices of levels with attention."""
    out = None if c.out_ch == c.in_channels else c.out_ch
    arch = {"in_channels": c.in_channels, "out_channels": out, "ch": c.ch, "ch_mult": c.ch_mult}
    arch |= {"num_res_blocks": c.num_res_blocks, "resamp_with_conv": c.resamp_with_conv or len(c.ch_mult) == 1}
    return arch, [i for i in range(len(c.ch_mult)) if c.resolution // 2**i in c.attn_resolutions]


# ---------------------------------------------------------------------------------------------- import


def import_weights(
    src: str | Path,
    out_run_dir: str | Path,
    *,
    fmt: str = "auto",
    preset: str | None = None,
    config: str | Path | dict[str, Any] | None = None,
    dataset: str | None = None,
    T: int | None = None,
) -> Path:
    """Convert ``src`` and write it as our checkpoint in ``out_run_dir``; returns the checkpoint path.

    ``fmt``: ``"diffusers"`` (directory or Hub name), ``"official"`` (a .ckpt / .pth file) or ``"auto"``
    (a file is official, anything else diffusers). ``preset`` / ``config`` (official only): the UNet preset
    or official YAML that supplies resolution and dropout. ``dataset``: what the model generates, so sweeps
    can score it (e.g. ``"cifar10"``); default the YAML's dataset when it is one of ours, else ``"imported"``.
    ``T``: see ``from_diffusers``. The run directory must not hold checkpoints yet.
    """
    if fmt == "auto":
        fmt = "official" if Path(src).is_file() else "diffusers"
    if fmt not in ("diffusers", "official"):
        raise DDIMError(f"unknown weights format {fmt!r}; choose auto, diffusers or official")
    run_dir = Path(out_run_dir)
    if list_checkpoints(run_dir):
        raise DDIMError(f"{run_dir} already holds checkpoints; choose an empty --out")
    yml = None
    if fmt == "diffusers":
        if preset is not None or config is not None:
            raise DDIMError("a diffusers model's config.json defines its architecture; drop --preset / --config")
        sd, unet, diffusion = from_diffusers(src, T=T)
    else:
        if preset is not None and config is not None:
            raise DDIMError("pass either a preset or an official config, not both")
        yml = _official_yaml(config) if config is not None else None
        sd, unet, diffusion = from_official(src, config=unet_preset(preset) if preset else yml)
        if T is not None and T != diffusion.T:
            raise DDIMError(f"T={T} differs from the checkpoint's diffusion config (T={diffusion.T})")
    if dataset is None and yml is not None and str(yml.get("data", {}).get("dataset", "")).lower() in DATASETS:
        dataset = str(yml["data"]["dataset"]).lower()
    if dataset in DATASETS:
        info = dataset_info(dataset, unet.resolution)
        if info.channels != unet.in_channels:
            raise DDIMError(f"dataset {dataset!r} has {info.channels} channels but the model {unet.in_channels}")
    else:
        info = DatasetInfo(dataset or "imported", unet.in_channels, unet.resolution, hflip=False)
    meta = {"imported": {"format": fmt, "source": str(src)}, "unet": unet.to_dict()}
    meta |= {"diffusion": asdict(diffusion), "dataset": asdict(info)}
    # model and EMA are the same tensors: stored once, loaded by every sampler as the EMA weights.
    payload = {"step": 0, "model": sd, "ema": sd, "optimizer": None, "rng": None, "train": {}, **meta}
    path = save_checkpoint(checkpoint_path(run_dir, 0), payload)
    atomic_write_json(run_dir / "config.json", meta)  # the resolved config, as training runs write theirs
    return path
