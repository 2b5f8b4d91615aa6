"""``sample --channels-last`` and the sweep's ``channels_last=true``: the network in NHWC memory format (on the CPU its
GroupNorm + SiLU fused, ``ddim.fused_norm``), the same samples up to float rounding, a runtime choice like
``--compile`` (not part of a folder's settings or a sweep's protocol)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.cli import run
from helpers.sweep import spec_of
from PIL import Image

from bench.sweep.overrides import parse_overrides
from ddim import fused_norm
from ddim.checkpoint import load_checkpoint
from ddim.runtime import ChannelsLastNetwork

COMMON = ["--steps", "3", "--eta", "0.5", "--seed", "7", "--device", "cpu", "-n", "6"]


@pytest.fixture
def group_norm_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts PyTorch's GroupNorm calls (none where the fused kernels run)."""
    calls: list[int] = []
    original = F.group_norm
    monkeypatch.setattr(F, "group_norm", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def _pixels(folder: Path) -> np.ndarray:
    names = sorted(p for p in folder.glob("0*.png"))
    return np.stack([np.asarray(Image.open(io.BytesIO(p.read_bytes()))) for p in names]).astype(int)


def test_channels_last_network_is_the_same_function(ckpt: Path, group_norm_calls: list[int]) -> None:
    nchw = load_checkpoint(ckpt).build_model("cpu")
    nhwc = ChannelsLastNetwork(load_checkpoint(ckpt).build_model("cpu"))
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 1000, (8,), generator=g)
    with torch.no_grad():
        want = nchw(x, t)
        group_norm_calls.clear()
        got = nhwc(x, t)
    assert got.is_contiguous() and got.shape == want.shape
    assert (got - want).norm() <= 1e-5 * want.norm()
    assert nhwc.model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    if fused_norm.kernels() is not None:
        assert not group_norm_calls  # every GroupNorm ran fused


def test_sample_channels_last_same_samples_up_to_rounding(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture, group_norm_calls: list[int]
) -> None:
    nchw, nhwc = tmp_path / "nchw", tmp_path / "nhwc"
    assert run(["sample", "--checkpoint", ckpt, "--out", nchw, *COMMON], capsys)[0] == 0
    group_norm_calls.clear()
    assert run(["sample", "--checkpoint", ckpt, "--out", nhwc, *COMMON, "--channels-last"], capsys)[0] == 0
    if fused_norm.kernels() is not None:
        assert not group_norm_calls  # the option reached the network
    a, b = _pixels(nchw), _pixels(nhwc)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1 and (a == b).mean() > 0.99
    manifests = [json.loads((d / "samples.json").read_text()) for d in (nchw, nhwc)]
    assert [m["channels_last"] for m in manifests] == [False, True]
    assert manifests[0]["settings"] == manifests[1]["settings"]  # a rerun may switch it, as --compile
    # A rerun with nothing left to sample records nothing of its own: the manifest keeps the run that sampled.
    for folder, flag in ((nchw, ["--channels-last"]), (nhwc, [])):
        before = json.loads((folder / "samples.json").read_text())
        assert run(["sample", "--checkpoint", ckpt, "--out", folder, *COMMON, *flag], capsys)[0] == 0
        assert json.loads((folder / "samples.json").read_text()) == before


def test_sweep_channels_last_reaches_the_evaluator(ckpt: Path, cache: Path, group_norm_calls: list[int]) -> None:
    from bench.sweep.evaluate import Evaluator

    assert parse_overrides(["channels_last=true"]) == {"channels_last": True}
    plain = Evaluator(spec_of(ckpt, cache, "device=cpu"), "0" * 64)
    fast = Evaluator(spec_of(ckpt, cache, "device=cpu", "channels_last=true"), "0" * 64)
    assert not isinstance(plain.model, ChannelsLastNetwork) and isinstance(fast.model, ChannelsLastNetwork)
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([1, 10, 100, 999])
    with torch.no_grad():
        want = plain.model(x, t)
        group_norm_calls.clear()
        got = fast.model(x, t)
    assert (got - want).norm() <= 1e-5 * want.norm()
    if fused_norm.kernels() is not None:
        assert not group_norm_calls


def test_a_first_use_that_compiles_the_kernels_says_so_once(
    ckpt: Path, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first channels_last run on a CPU compiles the fused kernels (20-40 s): sample, sweep and train each print
    one note first, and nothing when they are built or the run is NCHW."""
    from bench.sweep.runner import run_sweep

    built = {"now": False}

    def needs_build(device: torch.device, compiled: bool = False, bf16: bool = False) -> bool:
        return device.type == "cpu" and not (compiled or bf16 or built["now"])

    monkeypatch.setattr(fused_norm, "needs_build", needs_build)
    monkeypatch.chdir(tmp_path)  # the sweeps' artifacts (ddimbench-sweeps/) land here, not in the repository
    say = fused_norm.BUILD_NOTE
    train = ["train", "--dataset", "digits", "--max-steps", "1", "--batch-size", "4", "--ch", "8", "--ch-mult", "1",
             "--num-res-blocks", "1", "--attn-resolutions=", "--num-groups", "4", "--sample-every", "0", "--T", "20",
             "--device", "cpu", "--wandb", "disabled"]  # fmt: skip
    sweep = ("device=cpu", "steps=2", "eta=0", "n=10", "interpolation=false", "metrics=fid")
    for fresh in (True, False):
        built["now"] = not fresh
        sample = ["sample", "--checkpoint", ckpt, *COMMON, "-n", "1", "--out", tmp_path / f"s{fresh}"]
        code, _, err = run([*sample, "--channels-last"], capsys)
        assert code == 0 and err.count(say) == int(fresh), err
        code, _, err = run([*sample, "--channels-last"], capsys)  # nothing left to sample: nothing to build
        assert code == 0 and say not in err, err
        code, _, err = run([*train, "--run-dir", tmp_path / f"t{fresh}", "--channels-last"], capsys)
        assert code == 0 and err.count(say) == int(fresh), err
        run_sweep(spec_of(ckpt, cache, *sweep, "channels_last=true", name=f"w{fresh}"), progress=False,
                  storage=f"sqlite:///{tmp_path / 'sweeps.db'}", wandb="disabled", heartbeat=1)  # fmt: skip
        assert capsys.readouterr().err.count(say) == int(fresh)
    built["now"] = False  # bf16 autocast runs PyTorch's GroupNorm: nothing to compile, nothing said
    code, _, err = run([*sample[:-1], tmp_path / "bf16", "--channels-last", "--bf16"], capsys)
    assert code == 0 and say not in err, err
    # NCHW: nothing to compile, nothing said
    code, _, err = run([*sample[:-1], tmp_path / "nchw"], capsys)
    assert code == 0 and say not in err, err
    code, _, err = run([*train, "--run-dir", tmp_path / "tnchw"], capsys)
    assert code == 0 and say not in err, err
    run_sweep(spec_of(ckpt, cache, *sweep, name="nchw"), progress=False, storage=f"sqlite:///{tmp_path / 'sweeps.db'}",
              wandb="disabled", heartbeat=1)  # fmt: skip
    assert say not in capsys.readouterr().err
