"""``ddim.allocator.keep_freed_memory``: glibc's malloc keeps the network's large blocks, so an evaluation stops
paying the kernel for fresh pages at every call; the numbers do not change; the CLI applies it, a user can opt out."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
from helpers.cli import run

from ddim import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# One NCHW digits evaluation at batch 128 (the sweep's CPU batch), as `sample` and `sweep` run it: page faults per
# call after warm-up, and a digest of the output.
PROBE = """
import hashlib, json, resource, sys, torch
from ddim.allocator import keep_freed_memory
from ddim.unet import UNet, preset
tuned = keep_freed_memory()
torch.set_num_threads(1)
torch.manual_seed(0)
model = UNet(preset("digits")).eval()
x, t = torch.randn(128, 1, 16, 16, generator=torch.Generator().manual_seed(1)), torch.arange(128) * 7
with torch.no_grad():
    for _ in range(3):
        model(x, t)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        out = model(x, t)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
print(json.dumps({"tuned": tuned, "faults": faults, "digest": hashlib.sha256(out.numpy().tobytes()).hexdigest()}))
"""


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "DDIM_MALLOC"))}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                          timeout=300, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_an_evaluation_stops_faulting_pages_and_gives_the_same_numbers() -> None:
    tuned, untuned = _probe(), _probe(DDIM_MALLOC_TUNING="0")
    assert tuned["tuned"] is True and untuned["tuned"] is False
    assert tuned["faults"] < 1000, tuned  # 11,000-14,000 per call untuned on the EPYC that found it
    assert tuned["faults"] <= untuned["faults"], (tuned, untuned)
    assert tuned["digest"] == untuned["digest"]  # the allocator moves memory, never a number


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DDIM_MALLOC_TUNING", "0"),
        ("MALLOC_TRIM_THRESHOLD_", "131072"),  # glibc read it at start: theirs stands
        ("MALLOC_ARENA_MAX", "2"),  # any knob of glibc's malloc
        ("GLIBC_TUNABLES", "glibc.pthread.rseq=0:glibc.malloc.tcache_count=0"),
        ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),  # another allocator in glibc's place
    ],
)
def test_the_user_can_opt_out_or_tune_malloc_themselves(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    for other in [k for k in os.environ if k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD")]:
        monkeypatch.delenv(other)
    monkeypatch.setenv(name, value)
    assert allocator.keep_freed_memory() is False


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_other_settings_leave_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    for other in [k for k in os.environ if k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD")]:
        monkeypatch.delenv(other)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=0")  # not malloc's
    monkeypatch.setenv("DDIM_MALLOC_TUNING", "1")
    assert allocator.keep_freed_memory() is True and allocator.tuned() is True


def test_every_cli_command_tunes_it_first(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import bench.cli

    calls: list[int] = []
    monkeypatch.setattr(bench.cli, "keep_freed_memory", lambda: calls.append(1) or True)
    assert run(["--version"], capsys)[0] == 0 and calls == [1]
