"""Import pretrained DDPM weights into our UNet and write them as a ddimbench checkpoint.

Two sources, both read as tensors only (``safetensors`` or ``torch.load(weights_only=True)``, no pickled code):

- **diffusers** ``UNet2DModel`` directories: see ``ddim.diffusers_weights``.
- **official** DDIM / DDPM PyTorch state dicts (ermongroup/ddim ``models/diffusion.py``; the converted DDPM
  CIFAR10 / LSUN ``.ckpt`` files): our module names *are* the official ones, so keys map 1:1 (a
  ``module.`` prefix from DataParallel is dropped; a training ``ckpt.pth`` list gives its EMA weights).
  See ``from_official`` for which hyper-parameters are read from the weights and which need a config.

``import_weights`` writes ``<run_dir>/checkpoints/step-0000000.pt`` (model and EMA = the imported weights),
which ``ddim.checkpoint.load_checkpoint`` and every sampler / sweep then use like a trained run.
"""

from __future__ import annotations

import re
import reprlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ddim.checkpoint import checkpoint_path, list_checkpoints, save_checkpoint
from ddim.data import DATASETS, DatasetInfo, dataset_info
from ddim.diffusers_weights import from_diffusers
from ddim.errors import DDIMError
from ddim.files import atomic_write_json
from ddim.schedules import DiffusionConfig
from ddim.unet import PRESETS, UNetConfig
from ddim.unet import preset as unet_preset
from ddim.weights_io import StateDict, check_fit, expected_shapes, load_tensors, weights_problem

__all__ = ["from_official", "import_weights"]


def _official_state_dict(raw: Any, path: Path) -> StateDict:
    """The weights of an official checkpoint: a plain state dict, or a training ``ckpt.pth`` list
    ``[model, optimizer, epoch, step, ema]`` (its EMA weights when present); ``module.`` prefixes dropped."""
    if isinstance(raw, (list, tuple)) and raw and isinstance(raw[0], dict):
        raw = raw[4] if len(raw) >= 5 and isinstance(raw[4], dict) else raw[0]
    if (
        not isinstance(raw, dict)
        or not raw
        or not all(isinstance(k, str) for k in raw)
        or not all(isinstance(v, torch.Tensor) for v in raw.values())
    ):
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


def _section(yml: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    """The YAML's ``name`` section (absent: empty), refused in one line unless it is a mapping."""
    value = yml.get(name)
    if value is not None and not isinstance(value, dict):
        raise DDIMError(f"{where}: the {name} section is {reprlib.repr(value)}, not a mapping of settings; "
                        "fix the YAML (see the official configs/*.yml)")  # fmt: skip
    return value or {}


def _yaml_unet(yml: dict[str, Any], where: str) -> UNetConfig:
    """The UNetConfig an official YAML describes; a value of the wrong type is refused naming its YAML key."""
    m, d = _section(yml, "model", where), _section(yml, "data", where)
    keep = ("in_channels", "ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resamp_with_conv")
    values = {
        "resolution": ("data.image_size", d.get("image_size", 32)),
        "out_channels": ("model.out_ch", m.get("out_ch")),
    }
    values |= {k: (f"model.{k}", m[k]) for k in keep if k in m}
    for field, (key, value) in values.items():
        if problem := UNetConfig.type_problem(field, value):
            raise DDIMError(f"{where}: {key}={value!r} {problem}; fix the YAML")
    try:
        return UNetConfig(**{field: value for field, (_, value) in values.items()})
    except DDIMError as exc:
        raise DDIMError(f"{where}: {exc}; fix the YAML's model and data sections") from None


_YAML_DIFFUSION = {"T": "num_diffusion_timesteps"}  # our DiffusionConfig field -> the YAML key, where they differ


def _yaml_diffusion(yml: dict[str, Any], where: str) -> DiffusionConfig:
    """The forward process of an official YAML's ``diffusion`` section (DDPM's where a key is absent),
    refused in one line when ``train`` would refuse it."""
    dy = _section(yml, "diffusion", where)
    numbers = {}
    for key, default in (("beta_start", 1e-4), ("beta_end", 0.02)):
        numbers[key] = value = dy.get(key, default)
        if isinstance(value, str):  # PyYAML reads "1e-4" (no dot) as a string
            try:
                numbers[key] = float(value)
            except ValueError:
                raise DDIMError(f"{where}: diffusion.{key}={value!r} is not a number; fix the YAML") from None
    schedule = dy.get("beta_schedule", "linear")
    diffusion = DiffusionConfig(str(schedule), dy.get("num_diffusion_timesteps", 1000), **numbers)
    if problem := diffusion.problem(lambda k: f"diffusion.{_YAML_DIFFUSION.get(k, k)}"):
        raise DDIMError(f"{where}: {problem}; fix the YAML's diffusion section")
    return diffusion


def _conv_shape(sd: StateDict, key: str, path: Path) -> tuple[int, int]:
    """(out, in) channels of the convolution weight ``sd[key]``, refused unless it is one (4-D, no empty dim)."""
    w = sd[key]
    if w.ndim != 4 or min(w.shape) < 1:
        raise DDIMError(f"{path}: {key} has shape {tuple(w.shape)}, not a convolution's (out, in, k, k); "
                        "it is not an official DDPM UNet")  # fmt: skip
    return int(w.shape[0]), int(w.shape[1])


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
    sd = _official_state_dict(load_tensors(path), path)
    if problem := weights_problem(sd):  # what load_checkpoint would refuse: refused before anything is written
        raise DDIMError(f"weights in {path} cannot be imported: {problem}; use an intact copy of the file")
    if "conv_in.weight" not in sd or "conv_out.weight" not in sd or "down.0.block.0.conv1.weight" not in sd:
        raise DDIMError(f"{path} lacks conv_in / conv_out / down.0.block.0 weights; it is not an official DDPM UNet")
    ch, in_ch = _conv_shape(sd, "conv_in.weight", path)
    out_ch = _conv_shape(sd, "conv_out.weight", path)[0]
    found = {int(m.group(1)) for k in sd if (m := re.match(r"down\.(\d+)\.", k))}
    if found != set(range(len(found))):
        raise DDIMError(f"{path}: its down levels are numbered {sorted(found)[:6]}, not 0, 1, ...; "
                        "it is not an official DDPM UNet")  # fmt: skip
    levels = len(found)
    first = [f"down.{i}.block.0.conv1.weight" for i in range(levels)]
    widths = [_conv_shape(sd, key, path)[0] if key in sd else 0 for key in first]
    arch = {
        "in_channels": in_ch,
        "out_channels": None if out_ch == in_ch else out_ch,
        "ch": ch,
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
        where = "the official config" if isinstance(config, dict) else str(config)
        yml = _official_yaml(config)
        base, diffusion = _yaml_unet(yml, where), _yaml_diffusion(yml, where)
    if _arch_of(base) != (arch, attn_levels):
        raise DDIMError(f"{path}: the config ({_arch_of(base)}) does not match the weights ({(arch, attn_levels)})")
    unet = UNetConfig(**{**asdict(base), **arch, "num_groups": 32})  # 32: the official Normalize()
    check_fit(sd, expected_shapes(unet), path, {})
    return sd, unet, diffusion


def _arch_of(c: UNetConfig) -> tuple[dict[str, Any], list[int]]:
    """What the weights determine: the shape-giving fields and the indices of levels with attention."""
    out = None if c.out_ch == c.in_channels else c.out_ch
    arch = {"in_channels": c.in_channels, "out_channels": out, "ch": c.ch, "ch_mult": c.ch_mult}
    arch |= {"num_res_blocks": c.num_res_blocks, "resamp_with_conv": c.resamp_with_conv or len(c.ch_mult) == 1}
    return arch, [i for i in range(len(c.ch_mult)) if c.resolution // 2**i in c.attn_resolutions]


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
        sd, unet, diffusion = from_official(src, config=unet_preset(preset) if preset else config)
        if T is not None and T != diffusion.T:
            raise DDIMError(f"T={T} differs from the checkpoint's diffusion config (T={diffusion.T})")
    named = _section(yml, "data", str(config)).get("dataset") if yml is not None else None
    if named is not None and not isinstance(named, str):
        raise DDIMError(f"{config}: data.dataset={named!r} is not a dataset name; fix the YAML")
    if dataset is None and named is not None and named.lower() in DATASETS:
        dataset = named.lower()
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
