"""Checkpoints: one self-describing file per save, written atomically, refused in one line when bad.

A checkpoint holds the model and EMA weights, the optimiser, the step, RNG states and every config
needed to rebuild the run (UNet, diffusion schedule, dataset, training). A run directory keeps them
under ``<run_dir>/checkpoints/step-0002000.pt``; "the run's checkpoint" means the newest one.

Files are read with ``torch.load(weights_only=True)``: a checkpoint is plain tensors, numbers, strings
and containers, so loading a file from elsewhere cannot run code.
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddim.data import DatasetInfo, dataset_info
from ddim.errors import DDIMError
from ddim.files import atomic_write, sha256_file, write_error
from ddim.schedules import DiffusionConfig
from ddim.unet import UNet, UNetConfig
from ddim.weights_io import tensor_problem, weights_problem

__all__ = [
    "Checkpoint",
    "check_compatible",
    "checkpoint_path",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_checkpoint",
    "restore_optimizer",
    "save_checkpoint",
]

FORMAT = "ddimbench-checkpoint-v1"
_NAME = re.compile(r"^step-(\d+)\.pt$")
_TEMP = re.compile(r"^\.step-\d+\.pt\..*\.tmp$")  # what atomic_write leaves if killed mid-write


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``build_model`` gives the EMA weights by default (what sampling wants)."""

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


def _folder(run_dir: str | Path) -> Path:
    p = Path(run_dir)
    return p if p.name == "checkpoints" and not (p / "checkpoints").is_dir() else p / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file in a run directory, oldest first."""
    folder = _folder(run_dir)
    found = []
    if folder.is_dir():
        for p in folder.iterdir():
            m = _NAME.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
    return sorted(found)


def remove_stale_temps(run_dir: str | Path) -> list[Path]:
    """Delete half-written checkpoint temp files that a killed process left behind."""
    folder = _folder(run_dir)
    removed = [p for p in folder.iterdir() if _TEMP.match(p.name)] if folder.is_dir() else []
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def _on_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it on the CPU, so a checkpoint written on a GPU loads anywhere, also with a
    plain ``torch.load``; resuming moves the state back (``load_state_dict``). What holds no GPU tensor is
    returned as it is (a CPU run's file stays byte for byte the same); a copied mapping keeps its type and
    attributes (a ``state_dict``'s ``_metadata``)."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.device.type == "cpu" else obj.detach().cpu()
    if isinstance(obj, dict):
        moved = {k: _on_cpu(v) for k, v in obj.items()}
        if all(moved[k] is v for k, v in obj.items()):
            return obj
        out = copy.copy(obj)
        out.update(moved)
        return out
    if type(obj) in (list, tuple):
        moved = [_on_cpu(v) for v in obj]
        return obj if all(a is b for a, b in zip(moved, obj)) else type(obj)(moved)
    return obj


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` atomically (temp file, fsync, rename): a failed write never damages an old file.

    An ``OSError`` (disk full, permissions) becomes a one-line ``DDIMError``.
    """
    payload = {"format": FORMAT, **_on_cpu(payload)}
    try:
        return atomic_write(path, lambda f: torch.save(payload, f))
    except OSError as exc:
        raise write_error("checkpoint", path, exc) from None
    except RuntimeError as exc:  # torch's zip writer wraps the OS error: "... file write failed"
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, OSError):
            raise write_error("checkpoint", path, cause) from None
        raise


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol warning is noise: we refuse it below
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / non-zip / garbage / foreign files
        raise DDIMError(
            f"checkpoint {path} is corrupt, truncated or not a ddimbench checkpoint ({type(exc).__name__}); "
            "use another checkpoint of the run or retrain"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DDIMError(f"{path} is not a ddimbench checkpoint; import foreign weights first")
    return state


def _check_settings(path: Path, unet: UNetConfig, diffusion: DiffusionConfig, state: dict[str, Any]) -> None:
    """A checkpoint's stored settings pass the rules ``train`` applies (a doctored file would otherwise
    divide by zero, allocate without bound or fail deep inside sampling), and its UNet makes its dataset's
    images (``sample`` would write them at another size). Imported weights (``ddim.convert``) may name a
    dataset of their own: only a trained checkpoint's must be one of ours."""
    problem, dataset = diffusion.problem(), state.get("dataset")
    if problem is None and dataset is not None:
        if not isinstance(dataset, dict) or not isinstance(dataset.get("name", ""), str):
            problem = f"dataset {dataset!r} is not a mapping with a name"
        elif dataset.get("name") is not None:
            shape = {"channels": dataset.get("channels", unet.in_channels), "resolution": dataset.get("resolution")}
            try:
                info = (
                    DatasetInfo(dataset["name"], **shape, hflip=False)  # what import_weights recorded
                    if "imported" in state
                    else dataset_info(dataset["name"], dataset.get("resolution"))
                )
                problem = info.mismatch(unet.in_channels, unet.resolution)
            except DDIMError as exc:
                problem = str(exc)
    if problem is None and not isinstance(state.get("train") or {}, dict):
        problem = f"its train settings are a {type(state['train']).__name__}, not a mapping"
    if problem is not None:
        raise DDIMError(f"checkpoint {path} holds settings train refuses ({problem}); the file is damaged or edited")


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


def _weights_match(sd: Any, expected: dict[str, torch.Tensor]) -> bool:
    if not isinstance(sd, dict) or set(sd) != set(expected):
        return False
    return all(isinstance(sd[k], torch.Tensor) and sd[k].shape == expected[k].shape for k in expected)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint file or a run directory's newest one; bad files raise a one-line DDIMError."""
    p = resolve_checkpoint(path)
    state = _read(p, map_location)
    try:
        unet = UNetConfig.from_dict(state["unet"])
        diffusion = DiffusionConfig(**state["diffusion"])
        step = state["step"]
        model_sd = state["model"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step {step!r} is not a count of training steps")
    except (KeyError, TypeError, ValueError, DDIMError) as exc:
        raise DDIMError(f"checkpoint {p} is missing or has a malformed field ({exc}); it is damaged") from None
    _check_settings(p, unet, diffusion, state)
    named = _NAME.match(p.name)
    if named and int(named.group(1)) != step:  # the run's newest file and pruning go by the name
        raise DDIMError(f"checkpoint {p} holds step {step} but its name says step {int(named.group(1))}; "
                        f"rename it to {p.with_name(f'step-{step:07d}.pt').name}")  # fmt: skip
    # Check weights against the architecture now, so a mismatch is one line, not a state_dict dump.
    with torch.device("meta"):  # shapes only: no memory, no init cost
        expected = UNet(unet).state_dict()
    for name, sd in (("model", model_sd), ("ema", state.get("ema"))):
        if sd is None and name == "ema":
            continue
        if not _weights_match(sd, expected):
            raise DDIMError(f"checkpoint {p}: {name} weights do not match its UNet config; the file is damaged")
        if problem := weights_problem(sd):
            raise DDIMError(f"checkpoint {p}: {name} weight {problem}; the file is damaged, "
                            "use an earlier checkpoint of the run")  # fmt: skip
    return Checkpoint(
        path=p,
        step=step,
        unet=unet,
        diffusion=diffusion,
        dataset=dict(state.get("dataset") or {}),
        train=dict(state.get("train") or {}),
        state=state,
    )


# Adam's settings that change the update; the learning rate is not among them (every step sets it).
_OPTIMIZER_SETTINGS = ("betas", "eps", "weight_decay", "amsgrad", "maximize", "decoupled_weight_decay")


def restore_optimizer(opt: torch.optim.Optimizer, saved: Any, path: Path) -> None:
    """Load a checkpoint's optimiser state into ``opt`` (built for the run's parameters and settings), or refuse
    the file in one line before training: a damaged state would otherwise fail inside ``load_state_dict`` or at
    the first step. Its structure, each state tensor (``tensor_problem``; moments of its parameter's shape) and
    the settings in ``_OPTIMIZER_SETTINGS`` must be what ``opt`` holds."""
    fresh = [{k: g[k] for k in _OPTIMIZER_SETTINGS if k in g} for g in opt.param_groups]
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if (
        not isinstance(groups, list)
        or not all(isinstance(g, dict) for g in groups)
        or not isinstance(saved.get("state"), dict)
    ):
        problem = "is not a mapping of state and param_groups"
    else:
        try:
            opt.load_state_dict(saved)
            problem = _optimizer_problem(opt, fresh)
        except (KeyError, ValueError, TypeError, AttributeError, IndexError, RuntimeError) as exc:
            problem = f"does not fit the model ({type(exc).__name__})"
    if problem is not None:
        raise DDIMError(f"checkpoint {path} cannot be resumed: its optimizer state {problem}; the file is damaged, "
                        "use an earlier checkpoint of the run")  # fmt: skip


def _optimizer_problem(opt: torch.optim.Optimizer, fresh: list[dict[str, Any]]) -> str | None:
    for group, want in zip(opt.param_groups, fresh):
        changed = [f"{k}={group.get(k)!r} (want {v!r})" for k, v in want.items() if group.get(k) != v]
        if changed:
            return f"has other settings: {', '.join(changed)}"
        for p in group["params"]:
            for name, v in opt.state.get(p, {}).items():
                if not isinstance(v, torch.Tensor):
                    continue
                if problem := tensor_problem(v):
                    return f"{name} {problem}"
                if name != "step" and v.shape != p.shape:
                    return f"{name} has shape {tuple(v.shape)}, not its parameter's {tuple(p.shape)}"
    return None


def check_compatible(
    ck: Checkpoint,
    *,
    unet: UNetConfig | None = None,
    dataset: str | None = None,
    resolution: int | None = None,
    diffusion: DiffusionConfig | None = None,
    hint: str = "use a checkpoint trained with these settings",
) -> None:
    """Refuse, in one line, a checkpoint whose architecture, dataset or forward process differs from
    what the caller asks for (``None`` = don't care)."""
    got_res = ck.dataset.get("resolution", ck.unet.resolution)
    checks = (
        ("dataset", dataset, ck.dataset.get("name")),
        ("resolution", resolution, got_res),
        ("diffusion", diffusion, ck.diffusion),
    )
    for what, want, got in checks:
        if want is not None and want != got:
            raise DDIMError(f"checkpoint {ck.path} was trained with {what} {got!r}, not {want!r}; {hint}")
    if unet is not None and unet != ck.unet:
        mine, theirs = unet.to_dict(), ck.unet.to_dict()
        diffs = ", ".join(f"{k}={theirs[k]!r} (want {mine[k]!r})" for k in mine if mine[k] != theirs[k])
        raise DDIMError(f"checkpoint {ck.path} has another UNet architecture: {diffs}; {hint}")
