"""How much memory a training run will need at its peak, and how much memory and disk the machine has (checked
before a run; ``check_memory`` / ``check_disk`` refuse sizes that cannot fit); a sampling batch sized to the
card (``sampling_batch``).

A configuration that cannot fit is otherwise found out late: the kernel kills the process (after the
data has loaded and nothing was saved) or CUDA runs out at the first step. The estimate is
``fixed + per_image · batch`` bytes:

- ``per_image``: the activations autograd keeps for the backward pass of one image, counted exactly
  with ``saved_tensors_hooks`` on the ``meta`` device (where nothing is allocated);
- ``fixed``: the weights, their EMA, gradients and Adam's two moments (5 copies of the parameters)
  plus ``RUNTIME_BYTES`` for the libraries themselves.

Against the peak RSS of float32 CPU training steps (digits, cifar10 and celeba presets, batches 4-128)
the estimate was within 20 % (low by up to 0.2 GB): a warning, and a refusal only past ``HOPELESS`` times what is
available, which no misestimate explains (the kernel would kill the run at its first step).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ddim.errors import DDIMError
from ddim.unet import UNet, UNetConfig

if TYPE_CHECKING:
    from ddim.train_config import TrainConfig

RUNTIME_BYTES = 1 << 29  # torch, numpy and the data pipeline (CPU); the CUDA context is comparable
PARAM_COPIES = 5  # weights, EMA, gradients, Adam's m and v
HOPELESS = 2.0  # a training peak estimated above this many times the available memory is refused, not warned of


@dataclass(frozen=True)
class MemoryEstimate:
    fixed: int  # bytes that do not depend on the batch
    per_image: int  # bytes per image of the batch (this process's share of it)

    def peak(self, batch: int) -> int:
        return self.fixed + self.per_image * batch

    def largest_batch(self, available: int) -> int:
        """The largest batch whose estimate fits in ``available`` bytes (0: none does)."""
        return max(0, (available - self.fixed) // max(self.per_image, 1))


def estimate_training(config: UNetConfig) -> MemoryEstimate:
    """The estimate for training a UNet of ``config`` in float32 (see the module doc)."""
    with torch.device("meta"):
        model = UNet(config)
        x = torch.zeros(1, config.in_channels, config.resolution, config.resolution)
        t = torch.zeros(1, dtype=torch.long)
    params = {id(p) for p in model.parameters()}
    saved: dict[int, torch.Tensor] = {}  # by identity: a tensor two operations keep is counted once

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in params:
            saved[id(tensor)] = tensor
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x, t)
    activations = sum(v.numel() * v.element_size() for v in saved.values())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return MemoryEstimate(RUNTIME_BYTES + PARAM_COPIES * weights, activations)


def available_bytes(device: torch.device) -> int | None:
    """Memory this process can still take: free CUDA memory, or on the CPU the smaller of the kernel's
    MemAvailable and the cgroup's (container's) limit minus its usage; None where unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit.isdigit():
            found.append(int(limit) - int((cgroup / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


SAMPLING_CPU_BATCH = 256  # a sampling batch on the CPU, where throughput is flat past small batches


def fit_batch(per_sample_bytes: int, free_bytes: int, *, cap: int, floor: int = 1, fraction: float = 0.5) -> int:
    """The largest power of two of samples (``per_sample_bytes`` each) that fits in ``fraction`` of
    ``free_bytes``, clamped to [``floor``, ``cap``]."""
    fit = max(1, int(free_bytes * fraction) // max(1, per_sample_bytes))
    return max(floor, min(cap, 1 << (fit.bit_length() - 1)))


def sampling_batch(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device, *, cap: int = 1024,
                   fraction: float = 0.5, cpu_default: int = SAMPLING_CPU_BATCH) -> int:  # fmt: skip
    """A sampling batch sized to the card: on CUDA, ``fit_batch`` of the free memory with the per-sample peak
    of one no-grad evaluation of 8 images of ``shape`` (C, H, W), measured under the caller's autocast; on
    any other device ``cpu_default``; at most ``cap``. The batch changes speed, not samples (per-sample noise)."""
    if device.type != "cuda":
        return max(1, min(cap, cpu_default))
    per_sample = evaluation_bytes(model, shape, device)
    return fit_batch(per_sample, int(torch.cuda.mem_get_info(device)[0]), cap=cap, fraction=fraction)


def evaluation_bytes(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device, probe: int = 8) -> int:
    """CUDA memory one sample of a no-grad evaluation takes at its peak, measured on a batch of ``probe``.

    cuDNN autotuning is off for the probe: its trial workspaces do not grow with the batch, and counting them
    would make a sample look many times larger than it is (the half of free memory left covers the workspace
    of whichever algorithm autotuning picks later)."""
    x = torch.zeros((probe, *shape), device=device)
    t = torch.full((probe,), 500, dtype=torch.long, device=device)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    autotune, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, False
    try:
        with torch.no_grad():
            model(x, t)
        torch.cuda.synchronize(device)
    finally:
        torch.backends.cudnn.benchmark = autotune
    return max(1, (torch.cuda.max_memory_allocated(device) - before) // probe)


def gigabytes(n: float) -> str:
    """A size for a message: GB, or MB below 0.1 GB (a small need never reads "0.0 GB")."""
    return f"{n / 2**30:.1f} GB" if n >= 0.1 * 2**30 else f"{n / 2**20:.1f} MB"


def training_warning(cfg: TrainConfig) -> str | None:
    """One line when the estimated peak of training ``cfg`` exceeds what its device has (else None):
    the estimate, what is available, and the batch that would fit. Past ``HOPELESS`` times what is available it is
    a DDIMError instead."""
    from ddim.runtime import resolve_device

    device = resolve_device(cfg.device)
    have = available_bytes(device)
    if have is None:
        return None
    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))  # under torchrun: this rank's share of the batch
    estimate = estimate_training(cfg.unet_config())
    need = estimate.peak(-(-cfg.batch_size // world))
    if need <= have:
        return None
    fits = estimate.largest_batch(have) * world
    lower = f"lower --batch-size (about {fits} fits)" if fits else "use a smaller model (--preset, --ch)"
    gpu = " or train on a GPU" if device.type == "cpu" else ""
    hopeless = need > HOPELESS * have
    text = (
        f"this run needs about {gigabytes(need)} of memory at its peak (batch {cfg.batch_size}, "
        f"{cfg.unet_config().resolution} px), more than {'twice ' if hopeless else ''}the {gigabytes(have)} "
        f"available on {device}; {lower}{gpu}"
    )
    if hopeless:
        raise DDIMError(text)
    return text


def free_disk(path: str | Path) -> tuple[int | None, int, int | None]:
    """(free bytes, block size, free inodes) where ``path`` is or would be created (its nearest existing
    ancestor); free bytes None where the filesystem reports no size (``/proc``, some FUSE mounts: writing
    there fails on its own, with its own reason), free inodes None where it has no inode limit."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize if st.f_blocks else None
    return free, max(st.f_frsize, 1), st.f_favail if st.f_files else None


def check_memory(what: str, need: float, fix: str) -> None:
    """Refuse, in one line, work whose estimated host memory ``need`` exceeds what this process can take."""
    have = available_bytes(torch.device("cpu"))
    if have is not None and need > have:
        raise DDIMError(f"{what} needs about {gigabytes(need)} of memory, more than the {gigabytes(have)} "
                        f"available; {fix}")  # fmt: skip


def check_disk(what: str, path: str | Path, files: int, bytes_per_file: int, fix: str) -> None:
    """Refuse, in one line, writing ``files`` files of up to ``bytes_per_file`` each under ``path`` when the
    disk cannot hold them (each file takes whole blocks, and one inode where the filesystem counts them)."""
    if files <= 0:
        return
    free, block, inodes = free_disk(path)
    need = files * (-(-bytes_per_file // block) * block)
    if free is not None and need > free:
        raise DDIMError(f"{what} needs about {gigabytes(need)} of disk under {path}, more than the "
                        f"{gigabytes(free)} free; {fix}")  # fmt: skip
    if inodes is not None and files > inodes:
        raise DDIMError(f"{what} needs {files} files under {path}, more than the filesystem's {inodes} free "
                        f"inodes; {fix}")  # fmt: skip
