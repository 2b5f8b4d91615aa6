"""Runtime helpers shared by the library and the harness: the device, numerics settings and whether the
network is compiled (atomic writes and file hashes are in ``ddim.files``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch

from ddim.errors import DDIMError

# ``torch.compile`` (inductor) by default, per device type, when ``--compile`` is not given. CPU: eager
# (reports/perf/: 1.14-1.15x per step on an Intel Xeon after 48-52 s of compiling from an empty cache, i.e. it pays
# off after ≈ 1,000-1,100 steps of one shape; no faster on an AMD EPYC; and it changes float summation order, hence the
# committed demo's numbers). CUDA: eager until a card's
# ``make bench-gpu`` measures the compiled path (bench.perf's compile job); flip the entry when it wins there.
COMPILE_DEFAULT: dict[str, bool] = {"cpu": False, "cuda": False}


# cuBLAS's workspace setting for deterministic kernels. cuBLAS reads it once per process, at its first call:
# ``numerics(deterministic=True)`` sets it when unset, which is in time only if no CUDA matmul ran before in that
# process (the CLI's `train --deterministic` is such a process; tests and `make bench-gpu` set it at start).
CUBLAS_WORKSPACE = ":4096:8"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda``/``cuda:N`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DDIMError(f"--device {name} was asked for but no CUDA GPU is available; use --device cpu or auto")
        try:
            device = torch.device(name)
        except RuntimeError:
            raise DDIMError(f"invalid device {name!r}; use auto, cpu, cuda or cuda:N") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DDIMError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return device
    raise DDIMError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def use_compile(choice: bool | None, device: torch.device) -> bool:
    """``--compile`` / ``--no-compile`` as given, else (None) the device type's ``COMPILE_DEFAULT``."""
    return COMPILE_DEFAULT.get(device.type, False) if choice is None else bool(choice)


def compiled(model: torch.nn.Module, device: torch.device, choice: bool | None,
             backend: str = "inductor") -> torch.nn.Module:  # fmt: skip
    """``model`` wrapped by ``torch.compile`` when ``use_compile(choice, device)``, else ``model`` itself.

    The wrapper shares the model's parameters (its state dict keys gain ``_orig_mod.``: save the model,
    not the wrapper). Compilation happens at the first call of each new input shape, so the first
    call is slow; a compiled model's outputs match eager's up to float summation order.
    """
    return torch.compile(model, backend=backend) if use_compile(choice, device) else model


class Bf16Network(torch.nn.Module):
    """``model`` evaluated under bfloat16 autocast on its device, its output returned as float32, so the sampler's
    own arithmetic (the ᾱ coefficients, eq. 12) stays float32. Faster where the hardware has bf16 matrix units
    (GPU tensor cores, Intel AMX); samples differ from float32 ones by more than rounding order, so callers
    record it (the paper's numbers are float32). Autocast's op lists differ per device: on CUDA GroupNorm stays
    float32, on the CPU it runs in bf16 too, so ``bf16`` means slightly different numerics on each."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        self.model, self.device_type = model, device.type

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.model(x, t)
        return out.float()


# CPU feature flags (Linux /proc/cpuinfo) of bfloat16 arithmetic: x86's AVX-512 BF16 and AMX, Arm's BF16.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether the CPU lists a bfloat16 instruction set (``BF16_CPU_FLAGS``) in Linux's ``cpuinfo``; None where
    that file cannot be read or lists no flags (other systems)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):  # x86, Arm
            return bool(BF16_CPU_FLAGS & set(value.split()))
    return None


def slow_bf16(device: torch.device, cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """Why bf16 autocast (``Bf16Network``) on ``device`` would be slower than float32, or None. Without bfloat16
    instructions oneDNN converts around float32 kernels: one digits evaluation was 33× slower than float32 on a
    Zen 3 AMD EPYC (reports/perf/profile.md section 13), 1.6× faster on an AMX Xeon."""
    if device.type != "cpu" or cpu_has_bf16(cpuinfo) is not False:
        return None
    return (
        "bf16 on this CPU, which has no bfloat16 instructions (avx512_bf16, amx_bf16, Arm bf16), runs the network many "
        "times slower than float32 (33x per evaluation on an AMD EPYC without them); leave bf16 off to run in float32"
    )


class ChannelsLastNetwork(torch.nn.Module):
    """``model`` with its weights moved to channels_last (NHWC) memory format and every input made channels_last; the
    output comes back in the default (NCHW) format. The same function up to float rounding: on the CPU its
    GroupNorm + SiLU then run as one pass per sample (``ddim.fused_norm``) and oneDNN's convolutions in NHWC, which
    evaluates the digits network 1.18–1.23× faster than NCHW on an AVX-512 Xeon and on an AVX2 AMD EPYC (reports/perf/
    profile.md sections 12, 13); elsewhere, measure (``make bench``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last), t).contiguous()


def sampling_network(model: torch.nn.Module, device: torch.device, *, compile: bool | None, channels_last: bool = False,
                     bf16: bool = False) -> tuple[torch.nn.Module, torch.nn.Module]:  # fmt: skip
    """The network a sampler calls, and its eager twin (for probes such as the batch sizer, which must not compile
    their own shapes): ``model`` in channels_last (``ChannelsLastNetwork``) if asked, compiled per ``use_compile``,
    then under bf16 autocast (``Bf16Network``, around the compiled call) if asked."""
    eager = ChannelsLastNetwork(model) if channels_last else model
    run = compiled(eager, device, compile)
    if bf16:
        run, eager = Bf16Network(run, device), Bf16Network(eager, device)
    return run, eager


@contextlib.contextmanager
def environ(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` inside the block, the previous value (or its absence) restored on exit."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def warm_up(model: torch.nn.Module, batch_sizes: Iterable[int], shape: Sequence[int], device: torch.device) -> None:
    """One untimed call per batch size: a compiled model compiles at the first call of each input shape, which
    would otherwise be counted as sampling time. The outputs are discarded."""
    with torch.no_grad():
        for b in batch_sizes:
            x = torch.zeros((b, *shape), device=device)
            model(x, torch.zeros((b,), dtype=torch.long, device=device))


@contextlib.contextmanager
def numerics(device: torch.device, *, tf32: bool = True, deterministic: bool = False) -> Iterator[None]:
    """Process-wide numerics for a run, restored on exit.

    ``tf32``: TF32 tensor cores for fp32 matmuls and convolutions on CUDA (about 8x the fp32 rate on
    Ampere and later, 10-bit mantissa in the products). ``deterministic``: deterministic kernels
    (``torch.use_deterministic_algorithms``), no cuDNN autotuning and no TF32, so two CUDA runs of the
    same config give the same bits. On the CPU, runs are already deterministic for a fixed thread count.
    """
    cuda, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    on_gpu = device.type == "cuda"  # CPU runs leave the CUDA backend flags alone (reading them is not free of
    # side effects: it mixes the legacy TF32 API with a caller's set_float32_matmul_precision)
    tf32_flags = None
    if on_gpu:
        try:
            tf32_flags = (cuda.allow_tf32, cudnn.allow_tf32)
        except RuntimeError:  # the caller set TF32 through the newer fp32_precision API: leave it as set
            tf32_flags = None
    saved = (
        *(tf32_flags or (None, None)),
        cudnn.benchmark,
        cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    try:
        if on_gpu:
            if tf32_flags is not None:
                cuda.allow_tf32 = cudnn.allow_tf32 = tf32 and not deterministic
            cudnn.benchmark = not deterministic  # fixed shapes: autotuning pays off after the first step
            cudnn.deterministic = deterministic
            if deterministic and saved[6] is None:
                os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE  # needed by deterministic cuBLAS
        if deterministic:
            torch.use_deterministic_algorithms(True)
        yield
    finally:
        if tf32_flags is not None:
            cuda.allow_tf32, cudnn.allow_tf32 = tf32_flags
        cudnn.benchmark, cudnn.deterministic = saved[2:4]
        torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])
        if saved[6] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
