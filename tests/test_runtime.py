"""ddim.runtime (device resolution, numerics settings) and ddim.files (atomic writes, their one-line errors)."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import torch

from ddim.errors import DDIMError
from ddim.files import atomic_write, atomic_write_json, sha256_file, write_error
from ddim.runtime import cpu_has_bf16, environ, numerics, resolve_device, slow_bf16


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_resolve_device_auto_and_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_resolve_device_cuda_without_gpu_is_one_line_error(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DDIMError, match="no CUDA GPU") as info:
        resolve_device(name)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["tpu", "gpu", "", "cuda0"])
def test_resolve_device_unknown(name):
    with pytest.raises(DDIMError, match="device"):
        resolve_device(name)


def test_atomic_write_creates_and_replaces(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write(path, lambda f: f.write(b"one"))
    atomic_write(path, lambda f: f.write(b"two"))
    assert path.read_bytes() == b"two"
    assert _leftovers(path.parent) == []
    # Same permissions as a plain open() would give (mkstemp alone makes 0600).
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize(
    "exc", [OSError(errno.ENOSPC, "No space left on device"), ValueError("bug"), KeyboardInterrupt()]
)
def test_atomic_write_failure_keeps_old_file_and_removes_temp(tmp_path, exc):
    path = tmp_path / "f.bin"
    atomic_write(path, lambda f: f.write(b"good"))

    def failing(f):
        f.write(b"half of the new cont")
        raise exc

    with pytest.raises(type(exc)):
        atomic_write(path, failing)
    assert path.read_bytes() == b"good"
    assert _leftovers(tmp_path) == []


def test_atomic_write_failed_rename_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    atomic_write_json(path, {"a": 1})

    def no_rename(src, dst):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError):
        atomic_write_json(path, {"a": 2})
    monkeypatch.undo()
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "code, fix",
    [(errno.ENOSPC, "free space"), (errno.EACCES, "permissions"), (errno.EIO, "check the disk")],
)
def test_write_error_is_one_line_with_reason_and_fix(code, fix):
    err = write_error("checkpoint", "/x/step-1.pt", OSError(code, os.strerror(code)))
    msg = str(err)
    assert msg.startswith("could not write checkpoint /x/step-1.pt: " + os.strerror(code))
    assert fix in msg and "--run-dir" in msg and "\n" not in msg


def test_sha256_file(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_numerics_restores_global_settings():
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cuda.matmul.allow_tf32)
    with numerics(torch.device("cpu"), deterministic=True):
        assert torch.are_deterministic_algorithms_enabled()
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cuda.matmul.allow_tf32) == before
    with pytest.raises(RuntimeError), numerics(torch.device("cpu"), deterministic=True):
        raise RuntimeError("boom")
    assert torch.are_deterministic_algorithms_enabled() == before[0]


def test_sampling_batch_fits_free_memory_as_a_power_of_two(monkeypatch):
    import ddim.memory
    from ddim.memory import SAMPLING_CPU_BATCH, fit_batch, sampling_batch
    from ddim.unet import UNet, UNetConfig

    gib, mib = 2**30, 2**20
    assert fit_batch(mib, 10 * gib, cap=100_000) == 4096  # half of 10 GiB in 1 MiB samples, a power of two
    assert fit_batch(mib, 10 * gib, cap=512) == 512
    assert fit_batch(3 * mib, 10 * gib, cap=100_000) == 1024  # 1706 fit: the power of two below
    assert fit_batch(2**40, gib, cap=512, floor=2) == 2
    model = UNet(UNetConfig(resolution=8, in_channels=1, ch=8, ch_mult=(1,), attn_resolutions=(), num_groups=4))
    cpu = torch.device("cpu")  # the CPU's batch is fixed: throughput is flat past small batches there
    assert sampling_batch(model, (1, 8, 8), cpu) == SAMPLING_CPU_BATCH
    assert sampling_batch(model, (1, 8, 8), cpu, cap=100) == 100
    # On CUDA (faked here): 1 MiB per sample measured, 10 GiB free; the fraction is each worker's share.
    monkeypatch.setattr(ddim.memory, "evaluation_bytes", lambda *a, **kw: mib)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * gib, 80 * gib))
    cuda = torch.device("cuda")
    assert sampling_batch(model, (1, 8, 8), cuda, cap=100_000) == 4096  # half of 10 GiB
    assert sampling_batch(model, (1, 8, 8), cuda, cap=100_000, fraction=0.25) == 2048  # two workers on the card
    assert sampling_batch(model, (1, 8, 8), cuda) == 1024  # the default cap


def test_bf16_network_autocasts_and_returns_float32(ckpt):
    from ddim.checkpoint import load_checkpoint
    from ddim.runtime import Bf16Network

    model = load_checkpoint(ckpt).build_model("cpu")  # a trained network: a random one amplifies any rounding
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(16, 1, 16, 16, generator=g), torch.randint(0, 1000, (16,), generator=g)
    with torch.no_grad():
        full, half = model(x, t), Bf16Network(model, torch.device("cpu"))(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            by_hand = model(x, t)
    assert half.dtype == torch.float32 and torch.equal(half, by_hand.float())
    assert not torch.equal(half, full)  # bf16 matmuls and convolutions ran: not float32 rounding order
    assert (half - full).norm() < 0.02 * full.norm()  # yet the same network's prediction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512bw\n", False),  # AVX-512 without BF16
        ("processor\t: 0\nflags\t\t: avx512f avx512_bf16\nprocessor\t: 1\n", True),  # Zen 4, Cooper Lake
        ("flags\t: amx_tile amx_bf16 amx_int8\n", True),  # Sapphire Rapids
        ("flags\t: avx512_bf16x amx_bf16_like\n", False),  # whole flags only
        ("Features\t: fp asimd sve bf16 i8mm\n", True),  # Arm
        ("Features\t: fp asimd\n", False),
        ("processor\t: 0\nmodel name\t: bf16 avx512_bf16\n", None),  # no flags line: unknown
    ],
)
def test_cpu_has_bf16_reads_the_flags_line(tmp_path, text, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(text)
    assert cpu_has_bf16(info) is expected


def test_slow_bf16_names_the_problem_and_the_fix_only_for_a_cpu_without_bf16(tmp_path):
    without, with_bf16 = tmp_path / "without", tmp_path / "with"
    without.write_text("flags\t: fpu avx2 fma\n")
    with_bf16.write_text("flags\t: avx2 avx512_bf16\n")
    why = slow_bf16(torch.device("cpu"), without)
    assert why is not None and "no bfloat16 instructions" in why and "leave bf16 off" in why
    assert len(why.splitlines()) == 1
    assert slow_bf16(torch.device("cpu"), with_bf16) is None
    assert slow_bf16(torch.device("cpu"), tmp_path / "missing") is None  # unknown: say nothing
    assert slow_bf16(torch.device("cuda"), without) is None  # a GPU's bf16 is its own matter


def test_environ_sets_inside_and_restores_the_value_or_its_absence(monkeypatch):
    monkeypatch.delenv("DDIM_TEST_VAR", raising=False)
    with environ("DDIM_TEST_VAR", "1"):
        assert os.environ["DDIM_TEST_VAR"] == "1"
    assert "DDIM_TEST_VAR" not in os.environ
    monkeypatch.setenv("DDIM_TEST_VAR", "before")
    with pytest.raises(RuntimeError), environ("DDIM_TEST_VAR", "2"):  # restored on an exception too
        assert os.environ["DDIM_TEST_VAR"] == "2"
        raise RuntimeError
    assert os.environ["DDIM_TEST_VAR"] == "before"
