"""The fused channels_last GroupNorm (+ SiLU) kernels: against float64 references, across thread counts, where they
apply (never on the NCHW default path), and the fallback when they cannot be built."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ddim import fused_norm
from ddim.unet import UNet, UNetConfig

CL = torch.channels_last


@pytest.fixture(scope="module")
def kernels() -> object:
    """The built kernels; in CI (``CI`` set, where make test installs a compiler and ninja) their absence fails."""
    ext = fused_norm.kernels()
    if ext is None:
        if os.environ.get("CI"):
            pytest.fail("the fused GroupNorm kernels could not be built (make test installs g++ and ninja)")
        pytest.skip("no C++ compiler or ninja: the fused GroupNorm kernels cannot be built here")
    return ext


def _norm(channels: int, groups: int, seed: int, scale: float = 1.0) -> nn.GroupNorm:
    g = torch.Generator().manual_seed(seed)
    norm = nn.GroupNorm(groups, channels, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(channels, generator=g) * scale)
        norm.bias.copy_(torch.randn(channels, generator=g))
    return norm


def _run(norm: nn.GroupNorm, x: torch.Tensor, dy: torch.Tensor, silu: bool, fused: bool) -> list[torch.Tensor]:
    """y and the gradients of <y, dy> in x, weight and bias (float64 when x is)."""
    x = x.clone().requires_grad_()
    if fused:
        y = fused_norm.group_norm(norm, x, silu)
        assert y is not None
    else:
        y = F.group_norm(x, norm.num_groups, norm.weight.to(x.dtype), norm.bias.to(x.dtype), norm.eps)
        y = F.silu(y) if silu else y
    params = [norm.weight, norm.bias]
    grads = torch.autograd.grad(y, [x, *params], dy.to(x.dtype))
    return [y.detach(), *grads]


SHAPES = [  # (N, C, H, W), groups: the digits and cifar10 shapes, channels no vector width divides, H*W = 3, G = 1
    ((16, 32, 16, 16), 32),
    ((2, 128, 32, 32), 32),
    ((3, 24, 5, 7), 4),
    ((2, 8, 1, 3), 2),
    ((4, 40, 9, 9), 1),
]


@pytest.mark.parametrize("silu", [True, False])
@pytest.mark.parametrize(("shape", "groups"), SHAPES)
def test_as_accurate_as_pytorch(kernels: object, shape: tuple[int, ...], groups: int, silu: bool) -> None:
    """Output and all three gradients as close to a float64 GroupNorm (+ SiLU) as PyTorch's float32 kernels are
    (within 4×, or 1e-6 of the largest value), on input far from zero mean (where E[x²] − E[x]² would cancel) and
    with weights that take SiLU's exp to its clamps."""
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=g) * 3 + 40).contiguous(memory_format=CL)
    dy = torch.randn(shape, generator=g).contiguous(memory_format=CL)
    norm = _norm(shape[1], groups, seed=2, scale=30.0)
    got = _run(norm, x, dy, silu, fused=True)
    pytorch = _run(norm, x.contiguous(), dy.contiguous(), silu, fused=False)
    want = _run(norm.double(), x.double(), dy, silu, fused=False)
    norm.float()
    assert got[0].is_contiguous(memory_format=CL) and got[1].is_contiguous(memory_format=CL)
    for name, a, p, b in zip(("y", "dx", "dweight", "dbias"), got, pytorch, want):
        err, err_pytorch = ((v.double() - b).abs().max() / b.abs().max() for v in (a, p))
        assert err <= max(4 * err_pytorch, 1e-6), (name, err.item(), err_pytorch.item())


def test_silu_within_ulps_of_pytorch(kernels: object) -> None:
    """SiLU's exp is a polynomial: on the fused output with and without SiLU (the same z), every element within a few
    float32 ulp of PyTorch's SiLU of z, for z from −100 to 100 (between −88.7 and −88 PyTorch's values are below
    1e-36, ours −0)."""
    z = torch.linspace(-100, 100, 64 * 1001)
    x = z.reshape(1, 64, 1001, 1).contiguous(memory_format=CL)
    norm = nn.GroupNorm(1, 64, eps=0.0)
    with torch.no_grad():
        norm.weight.fill_(float(z.std(unbiased=False)))
        norm.bias.fill_(0.0)
        plain = fused_norm.group_norm(norm, x, silu=False)
        fused = fused_norm.group_norm(norm, x, silu=True)
    want = F.silu(plain)
    assert plain.abs().max() > 99
    assert ((fused - want).abs() <= 4 * torch.finfo(torch.float32).eps * want.abs() + 1e-36).all()


def test_silu_far_out_is_minus_zero_and_z(kernels: object) -> None:
    """z = ±1e4 … ±1e30 (x̂ = ±1 exactly, huge weights): SiLU gives −0 below and z itself above, as PyTorch does."""
    x = torch.tensor([1.0, -1.0] * 8).reshape(1, 1, 4, 4).expand(1, 4, 4, 4).contiguous(memory_format=CL)
    norm = nn.GroupNorm(4, 4, eps=0.0)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1e4, 1e10, 1e20, 1e30]))
        norm.bias.fill_(0.0)
        y = fused_norm.group_norm(norm, x, silu=True)
    z = norm.weight[:, None, None] * x[0]
    assert torch.equal(y[0][z > 0], z[z > 0])
    assert (y[0][z < 0] == 0).all() and torch.signbit(y[0][z < 0]).all()


def test_kernels_use_every_thread(kernels: object) -> None:
    """Built with OpenMP: ATen's parallel_for spreads the samples over torch's threads (without -fopenmp it compiles
    to a serial loop, and the kernels would run on one core whatever torch.set_num_threads says)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert kernels.parallel_width(64) == 2
        torch.set_num_threads(1)
        assert kernels.parallel_width(64) == 1
    finally:
        torch.set_num_threads(threads)


def test_same_bits_for_any_thread_count(kernels: object) -> None:
    shape = (6, 64, 8, 8)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g).contiguous(memory_format=CL)
    dy = torch.randn(shape, generator=g).contiguous(memory_format=CL)
    norm = _norm(64, 32, seed=4)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(_run(norm, x, dy, silu=True, fused=True))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_nan_stays_in_its_group(kernels: object) -> None:
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=CL)
    x[1, 5, 2, 3] = float("nan")
    norm = _norm(8, 4, seed=5)
    y = fused_norm.group_norm(norm, x, silu=True)
    want = F.silu(norm(x.contiguous()))
    assert torch.equal(y.isnan(), want.isnan()) and y.isnan().any()
    torch.testing.assert_close(y[0], want[0])


def _tiny() -> UNetConfig:
    return UNetConfig(resolution=16, in_channels=3, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                      dropout=0.0, num_groups=4)  # fmt: skip


def test_unet_channels_last_matches_eager(kernels: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """A channels_last network takes the fused path (PyTorch's GroupNorm never runs) and agrees with PyTorch's kernels
    in output and every parameter's gradient."""
    torch.manual_seed(0)
    model = UNet(_tiny()).to(memory_format=CL)
    x, t = torch.randn(3, 3, 16, 16).contiguous(memory_format=CL), torch.tensor([3, 300, 900])

    def run() -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        out = model(x, t)
        out.square().sum().backward()
        return [out.detach()] + [p.grad for p in model.parameters()]

    calls: list[int] = []
    original = F.group_norm
    monkeypatch.setattr(F, "group_norm", lambda *a, **k: calls.append(1) or original(*a, **k))
    fused = run()
    assert not calls
    monkeypatch.setenv(fused_norm.OFF_SWITCH, "0")
    eager = run()
    assert calls
    # relative to each tensor, and to the largest gradient for those that are rounding noise around 0 (the attention's
    # key biases: a constant added to every key leaves the softmax unchanged)
    floor = 1e-6 * max(b.norm().item() for b in eager)
    names = ["output"] + [name for name, _ in model.named_parameters()]
    for name, a, b in zip(names, fused, eager):
        assert (a - b).norm() <= 1e-4 * b.norm() + floor, (name, (a - b).norm().item(), b.norm().item())


def test_nchw_path_is_pytorch_bit_for_bit(kernels: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default NCHW network never takes the fused path: the same bits with the switch on and off (the committed
    demo's numbers depend on it)."""
    torch.manual_seed(0)
    model = UNet(_tiny())
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 600])
    with torch.no_grad():
        on = model(x, t)
        monkeypatch.setenv(fused_norm.OFF_SWITCH, "0")
        off = model(x, t)
    assert torch.equal(on, off)


def test_applies_only_to_channels_last_float32_cpu(kernels: object, monkeypatch: pytest.MonkeyPatch) -> None:
    norm = _norm(8, 4, seed=6)
    x = torch.randn(2, 8, 4, 4)
    assert fused_norm.applies(norm, x.contiguous(memory_format=CL))
    assert not fused_norm.applies(norm, x)  # NCHW
    assert not fused_norm.applies(norm, x.double().contiguous(memory_format=CL))
    assert not fused_norm.applies(norm, x[:, :, :1, :1].contiguous(memory_format=CL))  # NCHW-contiguous as well
    assert not fused_norm.applies(nn.GroupNorm(4, 8, affine=False), x.contiguous(memory_format=CL))
    monkeypatch.setenv(fused_norm.OFF_SWITCH, "0")
    assert not fused_norm.applies(norm, x.contiguous(memory_format=CL))


def test_without_a_compiler_pytorch_runs_after_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compiler() -> None:
        raise RuntimeError("Ninja is required to load C++ extensions\nmore detail")

    monkeypatch.setattr(fused_norm, "_build", no_compiler)
    monkeypatch.setattr(fused_norm, "_loaded", {})
    torch.manual_seed(0)
    model = UNet(_tiny()).to(memory_format=CL)
    x, t = torch.randn(2, 3, 16, 16).contiguous(memory_format=CL), torch.tensor([3, 600])
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        out = model(x, t)
        model(x, t)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "Ninja is required" in messages[0] and "more detail" not in messages[0]
    monkeypatch.setenv(fused_norm.OFF_SWITCH, "0")
    with torch.no_grad():
        assert torch.equal(out, model(x, t))


def test_build_is_per_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build cache shared between machines (a cluster's home) never hands one CPU's -march=native build to
    another."""
    monkeypatch.setattr(fused_norm, "_cpu_identity", lambda: "model name: A\nflags: avx2")
    first = fused_norm.build_name()
    monkeypatch.setattr(fused_norm, "_cpu_identity", lambda: "model name: B\nflags: avx2 avx512f")
    assert fused_norm.build_name() != first


def test_needs_build_until_this_cpus_build_exists(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(fused_norm, "_loaded", {})
    cpu = torch.device("cpu")
    assert fused_norm.build_dir() == tmp_path / "ddimbench" / fused_norm.build_name()
    assert fused_norm.needs_build(cpu)
    assert not fused_norm.needs_build(torch.device("meta"))  # another device: PyTorch's kernels, nothing to build
    assert not fused_norm.needs_build(cpu, compiled=True)  # inductor fuses GroupNorm itself
    assert not fused_norm.needs_build(cpu, bf16=True)  # bf16 autocast: the kernels take float32 only
    with fused_norm.disabled():
        assert not fused_norm.needs_build(cpu)
    fused_norm.build_dir().mkdir(parents=True)
    (fused_norm.build_dir() / f"{fused_norm.build_name()}.so").write_bytes(b"")  # built by an earlier process
    assert not fused_norm.needs_build(cpu)
    (fused_norm.build_dir() / f"{fused_norm.build_name()}.so").unlink()
    monkeypatch.setattr(fused_norm, "_loaded", {"ext": None})  # tried in this process (built or failed)
    assert not fused_norm.needs_build(cpu)
