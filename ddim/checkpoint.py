"""Checkpoints: one self-describing file per save, written atomically, refused in one line when bad.

A checkpoint holds the model and EMA weights, the optimiser, the step, RNG states and every config
needed to rebuild the run (UNet, diffusion schedule, training). A run directory keeps them under
``<run_dir>/checkpoints/step-0002000.pt``; "the run's checkpoint" means the newest valid one.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddim import schedules
from ddim.errors import DDIMError
from ddim.runtime import atomic_write, sha256_file
from ddim.unet import UNet, UNetConfig

FORMAT = "ddimbench-checkpoint-v1"
_NAME = re.compile(r"^step-(\d+)\.pt$")


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process a model was trained with; sampling must use the same ᾱ table."""

    beta_schedule: str = "linear"
    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def alpha_bar(self) -> torch.Tensor:
        return schedules.alpha_bar(self.beta_schedule, self.T, self.beta_start, self.beta_end)


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``model`` carries the EMA weights when present (what sampling wants)."""

    path: Path
    step: int
    unet: UNetConfig
    diffusion: DiffusionConfig
    dataset: dict[str, Any]
    train: dict[str, Any]
    state: dict[str, Any] = field(repr=False)

    def build_model(self, device: str | torch.device = "cpu", ema: bool = True) -> UNet:
        model = UNet(self.unet)
        weights = self.state["ema"] if ema and self.state.get("ema") is not None else self.state["model"]
        model.load_state_dict(weights)
        return model.to(device).eval()

    def alpha_bar(self) -> torch.Tensor:
        return self.diffusion.alpha_bar()

    def sha256(self) -> str:
        return sha256_file(self.path)


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:07d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file in a run directory, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    found = []
    if folder.is_dir():
        for p in folder.iterdir():
            m = _NAME.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Serialise in memory first, then write atomically: a failed write never damages an old file."""
    payload = {"format": FORMAT, **payload}
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write(path, lambda f: f.write(buf.getbuffer()))


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for truncated / non-zip / garbage files
        raise DDIMError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}); use another checkpoint "
            "of the run or retrain"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DDIMError(f"{path} is not a ddimbench checkpoint; import foreign weights first")
    return state


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory → its newest checkpoint file."""
    p = Path(path)
    if p.is_dir():
        found = list_checkpoints(p)
        if not found:
            raise DDIMError(f"no checkpoint in run directory {p} (expected {p}/checkpoints/step-*.pt); train first")
        return found[-1][1]
    if not p.exists():
        raise DDIMError(f"checkpoint {p} does not exist; pass a run directory or a .pt checkpoint file")
    return p


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint file or a run directory's newest one; bad files raise a one-line DDIMError."""
    p = resolve_checkpoint(path)
    state = _read(p, map_location)
    try:
        unet = UNetConfig.from_dict(state["unet"])
        diffusion = DiffusionConfig(**state["diffusion"])
        step = int(state["step"])
        model_sd = state["model"]
    except (KeyError, TypeError) as exc:
        raise DDIMError(f"checkpoint {p} is missing or has a malformed field ({exc}); it is damaged") from None
    # Check weights against the architecture now, so a mismatch is one line, not a state_dict dump.
    expected = UNet(unet).state_dict()
    for name in ("model", "ema"):
        sd = model_sd if name == "model" else state.get("ema")
        if sd is None:
            continue
        if set(sd) != set(expected) or any(sd[k].shape != expected[k].shape for k in expected):
            raise DDIMError(f"checkpoint {p}: {name} weights do not match its UNet config; the file is damaged")
    return Checkpoint(
        path=p,
        step=step,
        unet=unet,
        diffusion=diffusion,
        dataset=dict(state.get("dataset", {})),
        train=dict(state.get("train", {})),
        state=state,
    )
