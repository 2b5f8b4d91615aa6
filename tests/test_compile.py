"""``torch.compile`` (inductor) of the network: the per-device default, and compiled outputs equal to eager's
up to float summation order, for the sampler's network call and for a training step (CPU, tiny UNet)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.sweep import spec_of

from ddim import runtime
from ddim.unet import UNet, UNetConfig

TINY = UNetConfig(resolution=8, in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                  dropout=0.0, num_groups=4)  # fmt: skip


def test_compile_default_is_the_device_table(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 1)
    assert runtime.COMPILE_DEFAULT["cpu"] is False  # eager on the CPU: the measured choice (reports/perf)
    monkeypatch.setattr(runtime, "COMPILE_DEFAULT", {"cpu": False, "cuda": True})
    assert runtime.use_compile(None, cpu) is False and runtime.use_compile(None, cuda) is True
    assert runtime.use_compile(True, cpu) is True and runtime.use_compile(False, cuda) is False  # the flag wins
    assert runtime.use_compile(None, torch.device("meta")) is False  # a device type not in the table: eager
    model = UNet(TINY)
    assert runtime.compiled(model, cpu, None) is model
    wrapped = runtime.compiled(model, cpu, True)
    assert isinstance(wrapped, torch._dynamo.eval_frame.OptimizedModule) and wrapped._orig_mod is model


def test_compile_is_a_sample_option_and_a_sweep_key() -> None:
    from bench.sample_config import SampleConfig
    from bench.sweep.overrides import parse_overrides
    from bench.sweep.spec import SweepSpec

    assert SampleConfig(checkpoint="x").compile is None and SweepSpec.compile is None
    assert parse_overrides(["compile=true"]) == {"compile": True}
    assert parse_overrides(["compile=off"]) == {"compile": False}


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 1, 8, 8, generator=g), torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 1000, (6,))


@pytest.mark.slow  # inductor compiles a forward (and a backward) with the C++ compiler: tens of seconds
def test_compiled_network_matches_eager_for_sampling_and_a_train_step() -> None:
    torch.manual_seed(0)
    eager = UNet(TINY)
    twin = UNet(TINY)
    twin.load_state_dict(eager.state_dict())
    fast = runtime.compiled(twin, torch.device("cpu"), True)
    x, eps, t = _batch()

    with torch.no_grad():  # the sampler's call
        a, b = eager.eval()(x, t), fast.eval()(x, t)
    assert a.abs().max() > 0.1 and torch.allclose(a, b, rtol=1e-4, atol=1e-5), float((a - b).abs().max())

    eager.train(), fast.train()
    for model in (eager, fast):  # one step of L_simple; compare the gradients every parameter receives
        ((model(x, t) - eps) ** 2).mean().backward()
    for (name, p), q in zip(eager.named_parameters(), twin.parameters()):
        assert q.grad is not None and torch.allclose(p.grad, q.grad, rtol=1e-3, atol=1e-6), name
    for p in twin.parameters():  # a negative control: a changed weight is seen
        p.grad = None
    with torch.no_grad():
        twin.conv_out.bias.add_(0.01)
        assert not torch.allclose(eager.eval()(x, t), fast.eval()(x, t), rtol=1e-4, atol=1e-5)


def test_sample_and_sweep_compile_their_network_only_when_asked(monkeypatch, ckpt, cache, tmp_path) -> None:
    from bench.generate import generate
    from bench.sample_config import SampleConfig
    from bench.sweep.evaluate import Evaluator

    seen: list[str] = []
    monkeypatch.setattr(torch, "compile", lambda model, backend="inductor": seen.append(type(model).__name__) or model)
    manifests = {}
    for choice, out in ((None, "eager"), (True, "compiled")):
        generate(SampleConfig(checkpoint=str(ckpt), out=str(tmp_path / out), n=2, steps=2, device="cpu",
                              compile=choice))  # fmt: skip
        manifests[out] = json.loads((tmp_path / out / "samples.json").read_text())
    assert seen == ["UNet"]  # the CPU default (None) stayed eager
    assert manifests["eager"]["compiled"] is False and manifests["compiled"]["compiled"] is True
    assert manifests["eager"]["settings"] == manifests["compiled"]["settings"]  # a rerun may switch it
    Evaluator(spec_of(ckpt, cache, "device=cpu"), "0" * 64)
    Evaluator(spec_of(ckpt, cache, "device=cpu", "compile=true"), "0" * 64)
    assert seen == ["UNet", "UNet"]


def test_a_compiled_sweep_compiles_every_batch_shape_before_a_cell_is_timed(monkeypatch, ckpt, cache) -> None:
    """The first call of each input shape compiles: the evaluator makes those calls when it loads the model, so a
    cell's wall time (and its FID-vs-time point) holds sampling only."""
    from bench.sweep.evaluate import Evaluator

    shapes: list[int] = []

    def fake_compile(model, backend="inductor"):
        def call(x, t):
            shapes.append(x.shape[0])
            return model(x, t)

        return call

    monkeypatch.setattr(torch, "compile", fake_compile)
    Evaluator(spec_of(ckpt, cache, "device=cpu", "compile=true", "n=10", "batch=4"), "0" * 64)
    assert sorted(shapes) == [2, 4]  # the full batch and the remainder, once each
    shapes.clear()
    Evaluator(spec_of(ckpt, cache, "device=cpu", "n=10", "batch=4"), "0" * 64)
    assert shapes == []  # eager: nothing to warm
