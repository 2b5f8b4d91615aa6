"""GroupNorm (+ SiLU) for channels_last float32 tensors on the CPU, as one pass per sample.

The network's every normalisation is a GroupNorm, most followed by SiLU (the ResnetBlocks and the output of the DDPM
UNet the DDIM paper's experiments use, Appendix D.1). On channels_last (NHWC) input PyTorch's CPU GroupNorm is
several times slower than on NCHW input, which cancels the faster channels_last convolutions, and the SiLU after it is
one more pass over memory. ``csrc/group_norm_nhwc.cpp`` computes both, forward and backward, per sample while its
(H·W, C) slab sits in cache. It is compiled for the running CPU on first use (``torch.utils.cpp_extension``: a C++
compiler and ninja; 20-40 s, cached under ``TORCH_EXTENSIONS_DIR``: ``build_dir``); without them PyTorch's kernels
run, after one warning.

Results agree with PyTorch's kernels up to float rounding (statistics summed in another order, SiLU's exp by a
polynomial within a few ulp), and are bit-identical across thread counts. NCHW networks, other dtypes and devices, and
code being traced by ``torch.compile`` (inductor fuses these itself) use PyTorch's kernels; so does everything when
``DDIM_FUSED_GROUPNORM=0`` is set.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ddim.runtime import environ

SOURCE = Path(__file__).with_name("csrc") / "group_norm_nhwc.cpp"
# -march=native: the build is for this CPU (its name carries the CPU's identity, so a shared cache never hands one
# CPU's build to another); 512-bit vectors where the CPU has them (10-20 % faster here); -fno-trapping-math lets the
# compiler vectorise the exp's clamps; -fopenmp: without it ATen's parallel_for compiles to its serial fallback (the
# OpenMP runtime is the one PyTorch loaded, same soname, so torch.set_num_threads governs it).
CFLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fno-trapping-math", "-fopenmp")
LDFLAGS = ("-fopenmp",)
OFF_SWITCH = "DDIM_FUSED_GROUPNORM"

_loaded: dict[str, ModuleType | None] = {}


def _cpu_identity() -> str:
    """The CPU's model and instruction-set flags (Linux), else what ``platform`` knows."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    first = text.split("\n\n", 1)[0]
    keep = [line for line in first.splitlines() if line.split(":", 1)[0].strip() in ("model name", "flags")]
    return "\n".join(keep) or f"{platform.machine()} {platform.processor()}"


def build_name() -> str:
    """The extension's name: changes with the source, the flags, the CPU, the PyTorch version and the Python (its
    ABI: two interpreters sharing one cache folder never load or rebuild each other's build)."""
    digest = hashlib.sha256()
    flags = " ".join(CFLAGS + LDFLAGS).encode()
    python = f"{sys.implementation.cache_tag}{getattr(sys, 'abiflags', '')}".encode()
    for part in (SOURCE.read_bytes(), flags, _cpu_identity().encode(), torch.__version__.encode(), python):
        digest.update(part)
        digest.update(b"\0")
    return f"ddim_group_norm_nhwc_{digest.hexdigest()[:16]}"


def _cpp_extension() -> ModuleType:
    log = logging.getLogger("torch.utils.cpp_extension")  # warns at import about CUDA_HOME on CPU-only machines
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)
    return cpp_extension


def build_dir() -> Path:
    """Where this CPU's build is made and cached: ``ddimbench/<build_name()>`` under ``TORCH_EXTENSIONS_DIR``
    (default: PyTorch's extension cache, ``~/.cache/torch_extensions``)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or _cpp_extension().get_default_build_root()
    return Path(root) / "ddimbench" / build_name()


def _build() -> ModuleType:
    folder = build_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return _cpp_extension().load(
        build_name(), [str(SOURCE)], extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS),
        build_directory=str(folder), verbose=False,
    )  # fmt: skip


# What a command says before a first use compiles the kernels (``needs_build``), so the wait is not a silent one.
BUILD_NOTE = "compiling the fused channels_last GroupNorm kernels for this CPU (once per CPU, about half a minute)"


def needs_build(device: torch.device, *, compiled: bool = False, bf16: bool = False) -> bool:
    """Whether a channels_last network on ``device`` compiles the kernels at its first call: on the CPU, neither
    under ``torch.compile`` (``compiled``) nor bf16 autocast (``bf16``: its GroupNorm input is not float32), both of
    which run PyTorch's kernels; not switched off (``DDIM_FUSED_GROUPNORM=0``), neither loaded in this process nor
    built before for this CPU and Python."""
    if device.type != "cpu" or compiled or bf16 or os.environ.get(OFF_SWITCH, "1") == "0" or "ext" in _loaded:
        return False
    try:
        return not (build_dir() / f"{build_name()}.so").is_file()
    except Exception:  # noqa: BLE001 - an unreadable cache or a broken cpp_extension: the build will say what is wrong
        return True


def kernels() -> ModuleType | None:
    """The compiled kernels, built on first call; None (after one warning) where they cannot be built."""
    if "ext" not in _loaded:
        try:
            _loaded["ext"] = _build()
        except Exception as err:  # noqa: BLE001 - any failure to compile or load means PyTorch's kernels
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            warnings.warn(
                f"the fused channels_last GroupNorm kernel could not be built ({reason}); PyTorch's GroupNorm runs "
                "instead (slower on channels_last input; install a C++ compiler and ninja to build it)",
                RuntimeWarning,
                stacklevel=3,
            )
            _loaded["ext"] = None
    return _loaded["ext"]


def disabled() -> contextlib.AbstractContextManager[None]:
    """PyTorch's kernels inside the block (``DDIM_FUSED_GROUPNORM=0`` for its duration): to compare the two."""
    return environ(OFF_SWITCH, "0")


def _compiling() -> bool:
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False


def applies(norm: nn.GroupNorm, x: Tensor) -> bool:
    """Whether ``group_norm`` takes the fused path for this input (the kernels aside)."""
    nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return (
        nhwc
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and norm.affine
        and norm.weight.dtype == torch.float32
        and os.environ.get(OFF_SWITCH, "1") != "0"
        and not _compiling()
    )


class _GroupNormNHWC(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float, silu: bool) -> Tensor:
        ext = _loaded["ext"]
        y, mean, rstd = ext.forward(x, weight.detach(), bias.detach(), groups, eps, silu)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.groups, ctx.silu = groups, silu
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias, mean, rstd = ctx.saved_tensors
        dx, dweight, dbias = _loaded["ext"].backward(dy, x, weight, bias, mean, rstd, ctx.groups, ctx.silu)
        return dx, dweight, dbias, None, None, None


def group_norm(norm: nn.GroupNorm, x: Tensor, silu: bool) -> Tensor | None:
    """``silu(norm(x))`` (or ``norm(x)``) by the fused kernels, channels_last; None where they do not apply."""
    if not applies(norm, x) or kernels() is None:
        return None
    return _GroupNormNHWC.apply(x, norm.weight, norm.bias, norm.num_groups, norm.eps, silu)
