"""``TrainConfig``: every setting a training run depends on, written to ``<run_dir>/config.json``.

Each field is one CLI option of ``ddimbench train`` (``--max-steps`` for ``max_steps``). The UNet is
a preset (named after the dataset unless ``preset`` is given) with optional per-field overrides
(``ch``, ``ch_mult``, ...), so a test or a quick experiment can shrink the model without a new preset.

The run length is ``max_steps`` optimiser steps, or ``epochs`` passes over the training split (the
unit of the trainer this project grew from): batches are drawn per step (``ddim.batches``), so epoch
k ends at step ceil(k · n_train / batch_size) and ``max_steps`` becomes the end of the last epoch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from ddim.errors import DDIMError
from ddim.names import canonical_dataset

if TYPE_CHECKING:
    from ddim.schedules import DiffusionConfig
    from ddim.unet import UNetConfig

# The fields and their help import nothing heavy (``ddimbench train --help`` builds its options from
# them without torch); the methods that need the data, the UNet or the device import them when called.

# Learning rate when none is given: the paper's 2e-4 (DDPM/DDIM configs), except the small digits UNet,
# which learns clean digits in 2000 steps at 1e-3 and only blurry ones at 2e-4 (README, the demo).
DEFAULT_LR = {"digits": 1e-3}
PAPER_LR = 2e-4

# TrainConfig fields that override the preset's UNetConfig field of the same name (None: keep it).
UNET_OVERRIDES = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "num_groups")


def _int_tuple(name: str, value: Any) -> tuple[int, ...] | None:
    """``(1, 2, 2)``, ``[1, 2, 2]`` or ``"1,2,2"`` → ``(1, 2, 2)``; ``""`` / ``"none"`` → ``()``."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        value = [] if text in ("", "none") else text.split(",")
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise DDIMError(f"--{name.replace('_', '-')} must be comma-separated integers, got {value!r}") from None


def _opt(default: Any, help: str) -> Any:
    """A config field with its one-line help (``ddimbench train`` shows it for the option of that name)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; written to ``<run_dir>/config.json``."""

    # --- data ---
    dataset: str = _opt("digits", "Dataset (digits is embedded); any case: MNIST, CelebA.")
    channels: int | None = _opt(None, "Image channels: only checked against the dataset's.")
    data_root: str = _opt("data", "Where dataset files live (folder: the image folder itself).")
    resolution: int | None = _opt(None, "Image side in pixels (default: the dataset's).")
    download: bool = _opt(False, "Let torchvision download MNIST/CIFAR-10 into --data-root.")
    num_workers: int = _opt(2, "Data loader processes for file-backed datasets.")
    # --- model: a preset plus optional overrides of its fields ---
    preset: str | None = _opt(None, "UNet preset: digits, mnist, cifar10, celeba, lsun (default: dataset's).")
    ch: int | None = _opt(None, "Override the preset: base channels.")
    ch_mult: tuple[int, ...] | None = _opt(None, 'Override the preset: channel multipliers per level, e.g. "1,2,2".')
    num_res_blocks: int | None = _opt(None, "Override the preset: residual blocks per level.")
    attn_resolutions: tuple[int, ...] | None = _opt(None, 'Override the preset: attention resolutions, "" = none.')
    dropout: float | None = _opt(None, "Override the preset: dropout in residual blocks, in [0, 1).")
    num_groups: int | None = _opt(None, "Override the preset: GroupNorm groups.")
    # --- diffusion ---
    beta_schedule: str = _opt("linear", "β schedule.")
    T: int = _opt(1000, "Diffusion steps T.")
    beta_start: float = _opt(1e-4, "β_1.")
    beta_end: float = _opt(0.02, "β_T.")
    # --- optimisation ---
    max_steps: int = _opt(2000, "Optimiser steps to train to (default 2000; a resumed run continues up to it).")
    epochs: int | None = _opt(
        None, "Instead of --max-steps: passes over the training split, a sample grid at each end."
    )
    batch_size: int = _opt(128, "Global batch size (images per step).")
    lr: float | None = _opt(None, "Adam lr after warm-up, > 0 (default: 1e-3 for digits, else 2e-4).")
    warmup: int = _opt(100, "Steps of linear learning-rate warm-up.")
    grad_clip: float = _opt(1.0, "Clip the gradient's global norm to this (0: no clipping).")
    ema_decay: float = _opt(0.9999, "EMA decay in [0, 1) (with the (1+n)/(10+n) ramp).")
    seed: int = _opt(0, "Seed of the init and of every step's data/noise draw.")
    # --- run directory ---
    run_dir: str | None = _opt(None, "Run folder (default runs/<dataset>): config, log, checkpoints.")
    save_every: int = _opt(500, "Checkpoint every N steps (and at the end / on SIGINT/SIGTERM).")
    keep: int = _opt(2, "Checkpoints kept on disk (the newest).")
    log_every: int = _opt(25, "Log loss, lr, grad norm and throughput every N steps.")
    sample_every: int = _opt(
        500, "A fixed-seed EMA sample grid every N steps (0: never; default 500, with --epochs 0)."
    )
    grid_size: int = _opt(64, "Images per grid.")
    grid_steps: int = _opt(20, "DDIM steps (η = 0) for the grids.")
    # --- device and speed (none of these changes the experiment; all may change on resume) ---
    device: str = _opt("auto", "Auto | cpu | cuda | cuda:N (under torchrun each rank uses cuda:LOCAL_RANK).")
    bf16: bool = _opt(True, "bf16 autocast on CUDA (ignored on CPU).")
    channels_last: bool = _opt(
        False, "NHWC weights and activations: ≈ 1.2× faster on an AVX-512 Xeon (fused GroupNorm); measure yours."
    )
    tf32: bool = _opt(True, "TF32 matmuls and convolutions on CUDA.")
    compile: bool | None = _opt(None, "torch.compile the training step (default: per device, eager on the CPU).")
    compile_backend: str = _opt("inductor", "torch.compile backend (aot_eager compiles fast).")
    deterministic: bool = _opt(False, "Deterministic kernels (no TF32, no cuDNN autotune).")

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", canonical_dataset(self.dataset))
        if self.run_dir is None:
            object.__setattr__(self, "run_dir", f"runs/{self.dataset}")
        # JSON and the CLI give lists or "1,2,2"; keep tuples so configs compare and hash.
        for name in ("ch_mult", "attn_resolutions"):
            object.__setattr__(self, name, _int_tuple(name, getattr(self, name)))
        if self.lr is None:  # resolved here, so config.json records the value actually used
            object.__setattr__(self, "lr", DEFAULT_LR.get(self.preset or self.dataset, PAPER_LR))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict (e.g. a run's config.json); keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """Raise a one-line ``DDIMError`` for any setting out of bounds (cheap: loads no data)."""
        from ddim import data as ddata
        from ddim.runtime import resolve_device

        ddata.dataset_info(self.dataset)  # raises on an unknown dataset
        at_least = {
            "max_steps": 1,
            "batch_size": 1,
            "save_every": 1,
            "keep": 1,
            "grid_size": 1,
            "grid_steps": 1,
            "log_every": 1,
            "warmup": 0,
            "sample_every": 0,
            "num_workers": 0,
            "seed": 0,
        }
        for name, low in at_least.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise DDIMError(f"--{name.replace('_', '-')} must be an integer ≥ {low}, got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise DDIMError(f"--lr must be a finite number > 0, got {self.lr!r}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise DDIMError(f"--grad-clip must be a finite number ≥ 0 (0: no clipping), got {self.grad_clip!r}")
        if not 0 <= self.ema_decay < 1:
            raise DDIMError(f"--ema-decay must be in [0, 1), got {self.ema_decay!r}")
        if problem := self.diffusion().problem(lambda field: f"--{field.replace('_', '-')}"):
            raise DDIMError(problem)
        if self.grid_steps > self.T:
            raise DDIMError(f"--grid-steps {self.grid_steps} exceeds T = {self.T}")
        if self.compile and not self.compile_backend:
            raise DDIMError("--compile-backend must name a torch.compile backend (e.g. inductor)")
        if self.epochs is not None and (isinstance(self.epochs, bool) or not isinstance(self.epochs, int)
                                        or self.epochs < 1):  # fmt: skip
            raise DDIMError(f"--epochs must be an integer ≥ 1, got {self.epochs!r}")
        info = ddata.dataset_info(self.dataset, self.resolution)
        if self.channels is not None and self.channels != info.channels:
            raise DDIMError(
                f"--channels {self.channels} does not match {self.dataset}, which has {info.channels} channel"
                f"{'s' if info.channels > 1 else ''}; drop --channels or pass --channels {info.channels}"
            )
        resolve_device(self.device)
        self.unet_config()  # raises on an unknown preset or a bad override

    def unet_config(self, channels: int | None = None, resolution: int | None = None) -> UNetConfig:
        """The preset's UNetConfig with this config's overrides; channels and resolution from the data."""
        from ddim import data as ddata
        from ddim.unet import PRESETS, UNetConfig, preset

        name = self.preset or (self.dataset if self.dataset in PRESETS else None)
        if name is None:
            raise DDIMError(f"dataset {self.dataset!r} has no preset of its own; pass --preset ({', '.join(PRESETS)})")
        info = ddata.dataset_info(self.dataset, self.resolution)
        overrides = {k: getattr(self, k) for k in UNET_OVERRIDES if getattr(self, k) is not None}
        d = {
            **preset(name).to_dict(),
            **overrides,
            "in_channels": channels or info.channels,
            "resolution": resolution or info.resolution,
        }
        return UNetConfig.from_dict(d)

    def with_epochs(self, n_train: int) -> TrainConfig:
        """With ``epochs`` set: the config with ``max_steps = ceil(epochs · n_train / batch_size)``."""
        if self.epochs is None:
            return self
        return replace(self, max_steps=math.ceil(self.epochs * n_train / self.batch_size))

    def resolved(self) -> TrainConfig:
        """``with_epochs`` for the training split on disk (loads it: a missing dataset is a one-line error)."""
        from ddim import data as ddata

        if self.epochs is None:
            return self
        train_set = ddata.load_dataset(self.dataset, self.data_root, "train", self.resolution, self.download)
        return self.with_epochs(len(train_set))

    def epoch_ends(self, n_train: int) -> set[int]:
        """The steps that end epoch 1, 2, …, ``epochs`` (``ceil(k · n_train / batch_size)``); empty without epochs."""
        if self.epochs is None:
            return set()
        return {math.ceil(k * n_train / self.batch_size) for k in range(1, self.epochs + 1)}

    def diffusion(self) -> DiffusionConfig:
        from ddim.schedules import DiffusionConfig

        return DiffusionConfig(self.beta_schedule, self.T, self.beta_start, self.beta_end)
