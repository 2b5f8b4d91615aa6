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
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ddim import data as ddata
from ddim.checkpoint import DiffusionConfig
from ddim.errors import DDIMError
from ddim.names import canonical_dataset
from ddim.runtime import resolve_device
from ddim.unet import PRESETS, UNetConfig, preset

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


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; written to ``<run_dir>/config.json``."""

    # --- data ---
    dataset: str = "digits"  # digits | mnist | cifar10 | celeba | folder (any case: MNIST, CelebA)
    channels: int | None = None  # image channels; only a check: must be the dataset's (1 for mnist)
    data_root: str = "data"  # where dataset files live (``folder``: the image folder itself)
    resolution: int | None = None  # image side in pixels; None: the dataset's default
    download: bool = False  # let torchvision fetch MNIST / CIFAR-10 into data_root
    num_workers: int = 2  # loader processes for file-backed datasets (celeba, folder); 0: in-process
    # --- model: a preset plus optional overrides of its fields ---
    preset: str | None = None  # UNet preset; None: the preset named like the dataset
    ch: int | None = None  # base channel count
    ch_mult: tuple[int, ...] | None = None  # channel multiplier per resolution level
    num_res_blocks: int | None = None  # residual blocks per level
    attn_resolutions: tuple[int, ...] | None = None  # resolutions with self-attention (() : none)
    dropout: float | None = None  # dropout in the residual blocks
    num_groups: int | None = None  # GroupNorm groups (must divide every channel count)
    # --- diffusion ---
    beta_schedule: str = "linear"  # linear | quad | const | jsd | sigmoid | cosine
    T: int = 1000  # diffusion steps
    beta_start: float = 1e-4  # β_1 (linear, quad, sigmoid)
    beta_end: float = 0.02  # β_T (linear, quad, const, sigmoid)
    # --- optimisation ---
    max_steps: int = 2000  # optimiser steps to train to (a resumed run continues up to it)
    epochs: int | None = None  # instead of max_steps: passes over the training split (see ``with_epochs``)
    batch_size: int = 128  # global batch: images per optimiser step over all ranks
    lr: float | None = None  # Adam learning rate after warm-up; None: the preset's (DEFAULT_LR)
    warmup: int = 100  # steps of linear lr warm-up (0: none)
    grad_clip: float = 1.0  # clip the global gradient norm to this (0: no clipping)
    ema_decay: float = 0.9999  # EMA decay, with the (1+n)/(10+n) ramp so short runs get a useful EMA
    seed: int = 0  # seed of the init and of every step's data, noise and dropout
    # --- run directory ---
    run_dir: str | None = None  # None: runs/<dataset>
    save_every: int = 500  # checkpoint every N steps (and at the end and on SIGINT/SIGTERM)
    keep: int = 2  # checkpoints kept on disk (the newest ones)
    log_every: int = 25  # log mean loss, lr, grad norm and images/s every N steps
    sample_every: int = 500  # an EMA sample grid every N steps (0: never)
    grid_size: int = 64  # images per grid
    grid_steps: int = 20  # DDIM steps (η = 0, uniform spacing) per grid
    # --- device and speed (none of these changes the experiment; all may change on resume) ---
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun each rank uses cuda:LOCAL_RANK)
    bf16: bool = True  # bf16 autocast of the forward pass on CUDA (ignored on the CPU)
    channels_last: bool = False  # NHWC weights and activations (helps big conv nets on GPUs; measure)
    tf32: bool = True  # TF32 tensor cores for fp32 matmuls/convs on CUDA
    compile: bool = False  # torch.compile the training forward/backward (first steps are slow: compiling)
    compile_backend: str = "inductor"  # torch.compile backend (``aot_eager`` compiles fast, for debugging)
    deterministic: bool = False  # deterministic kernels, no TF32 / cuDNN autotune: bit-exact CUDA resume

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
        return DiffusionConfig(self.beta_schedule, self.T, self.beta_start, self.beta_end)
