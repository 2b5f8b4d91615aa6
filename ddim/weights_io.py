"""Reading pretrained weights as tensors only, and checking that they fit a UNet config."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from ddim.errors import DDIMError
from ddim.unet import UNet, UNetConfig

StateDict = dict[str, torch.Tensor]


def listing(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def tensor_problem(v: Any) -> str | None:
    """Why ``v`` cannot be a weight of our UNet (None when it can): a dense real floating tensor with data,
    every value finite. A sparse or ``meta`` tensor fails deep inside loading or sampling, an integer, bool
    or complex one would be cast (or its NaN scan skipped) without a word, and a NaN or inf gives black images."""
    if not isinstance(v, torch.Tensor):
        return f"is a {type(v).__name__}, not a tensor"
    if v.layout != torch.strided or v.is_nested:
        return f"is a {'nested' if v.is_nested else v.layout} tensor, not a dense one"
    if v.device.type == "meta":
        return "holds no values (a meta tensor)"
    if not v.is_floating_point():  # complex is not floating point here
        return f"has dtype {v.dtype}, not a real floating-point one"
    if not torch.isfinite(v).all():
        return "holds NaN or infinite values"
    return None


def weights_problem(sd: dict[str, Any]) -> str | None:
    """The first weight of ``sd`` that ``tensor_problem`` refuses, as "NAME is ..." (None when all pass):
    what an imported or loaded checkpoint must satisfy before it is written or used."""
    return next((f"{k} {p}" for k, v in sd.items() if (p := tensor_problem(v))), None)


def expected_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # names and shapes only, no memory
        return {k: tuple(v.shape) for k, v in UNet(config).state_dict().items()}


def load_tensors(path: Path) -> Any:
    """Tensors (or containers of tensors) from a .safetensors or torch file, never executing pickled code."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        with warnings.catch_warnings():  # torch's notes on foreign or sparse tensors: what matters is refused below
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise DDIMError(f"reading {path.name} needs the safetensors package; pip install safetensors") from None
    except Exception as exc:  # truncated / foreign / non-tensor pickles raise many types
        raise DDIMError(f"cannot read weights from {path} ({type(exc).__name__}); is it a tensor file?") from None


def check_fit(sd: StateDict, expected: dict[str, tuple[int, ...]], src: Path, names: dict[str, str]) -> None:
    """One-line error for missing / unexpected / wrongly shaped weights (``names``: ours -> source key)."""
    missing = [names.get(k, k) for k in expected if k not in sd]
    wrong = [f"{names.get(k, k)} {tuple(sd[k].shape)}≠{s}" for k, s in expected.items() if k in sd and sd[k].shape != s]
    unexpected = [k for k in sd if k not in expected]
    problems = [
        f"{label} {listing(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if keys
    ]
    if problems:
        raise DDIMError(f"weights in {src} do not fit the UNet described by its config: {'; '.join(problems)}")
