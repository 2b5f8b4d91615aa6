"""``SampleConfig``: one ``ddimbench sample`` job, written to ``<out>/samples.json``.

Each field is one option of ``ddimbench sample`` with its help in the field's metadata; the module
imports nothing heavy, so ``--help`` and shell completion stay quick.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.console import DEVICE_HELP
from ddim.errors import DDIMError


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class SampleConfig:
    """One sampling job; written to ``<out>/samples.json``."""

    checkpoint: str = field(metadata={"help": "A run directory (its newest checkpoint) or a checkpoint .pt file."})
    out: str = _opt("samples", "Folder for the n PNGs, grid.png and samples.json.")
    n: int = _opt(64, "Number of samples (exactly this many PNG files).")
    steps: int = _opt(50, "S: timesteps in the sub-sequence (1 ≤ S ≤ T; ignored by ddpm).")
    eta: float = _opt(0.0, "η ≥ 0 (0: DDIM, 1: DDPM posterior σ; above 1 only where eq. 12 holds).")
    spacing: str = _opt("uniform", "Timestep spacing τ (section 4.2; default uniform).")
    sampler: str = _opt("ddim", "ddim (eq. 12/16), sigma_hat (σ̂), ddpm (all T steps), or a baseline.")
    seed: int = _opt(0, "Sample i uses seed + i (its pixels depend only on that seed).")
    batch_size: int | str = _opt(
        64, "Samples per network call, or auto: sized to the device's free memory (does not change any sample)."
    )
    device: str = _opt("auto", DEVICE_HELP)
    compile: bool | None = _opt(None, "torch.compile the network (default: per device, eager on the CPU).")
    channels_last: bool = _opt(
        False, "NHWC network: ≈ 1.2× faster on an AVX-512 Xeon (fused GroupNorm); pixels equal up to float rounding."
    )
    clip_x0: bool | None = _opt(None, "Clamp x̂₀ to [-1, 1] (default: as the official code).")
    bf16: bool = _opt(
        False, "Run the network under bfloat16 autocast: faster on bf16 hardware, far slower without; pixels differ."
    )

    @classmethod
    def from_options(cls, options: dict[str, Any], schedule: str | None = None) -> SampleConfig:
        """The config of ``ddimbench sample``'s options (``spacing`` None: not given); ``schedule``: the earlier
        releases' name of ``--spacing``, still accepted with one warning line."""
        spacing = options.get("spacing")
        if schedule is not None:
            if spacing is not None and spacing != schedule:
                raise DDIMError(f"--schedule {schedule} and --spacing {spacing} disagree; pass --spacing only")
            from bench.console import warn

            warn("--schedule is deprecated; write --spacing instead")
        batch = options.get("batch_size", cls.batch_size)
        return cls(**{**options, "spacing": spacing or schedule or cls.spacing, "batch_size": _batch(batch)})

    def validate(self, T: int) -> None:
        from ddim import schedules
        from ddim.sampling import MAX_SEED, check_args

        if self.n < 1:
            raise DDIMError(f"-n must be ≥ 1, got {self.n}")
        if self.batch_size != "auto" and not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise DDIMError(f"--batch-size must be ≥ 1 or auto, got {self.batch_size}")
        if self.seed < 0:
            raise DDIMError(f"--seed must be ≥ 0, got {self.seed}")
        if self.seed + self.n - 1 > MAX_SEED:  # sample i uses seed + i
            raise DDIMError(
                f"--seed {self.seed} with -n {self.n} exceeds the largest seed {MAX_SEED}; use a smaller seed"
            )
        check_args(self.sampler, self.eta, self.clip_x0)  # an unknown sampler is named first
        if self.sampler != "ddim" and self.eta != 0:
            raise DDIMError(f"--eta applies to the ddim sampler only; drop it for --sampler {self.sampler}")
        if self.sampler != "ddpm":
            schedules.timesteps(self.steps, T, self.spacing)  # raises on steps ≤ 0, > T or unknown spacing


def _batch(value: Any) -> int | str:
    """``--batch-size`` as given on the command line: a whole number or the word ``auto``."""
    if isinstance(value, int) or value == "auto":
        return value
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise DDIMError(f"--batch-size must be a whole number or auto, got {value!r}") from None
