"""Tests for the benchmark's floors (``bench.perf.floor``): the convolutions of one forward replayed in both
memory formats, the GroupNorm memory passes, the attention's products, the Adam update, and the bound they
give together; nothing here is timed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.perf import floor as perf_floor
from bench.perf import workload as perf_workload
from bench.perf.models import RunSettings
from ddim.unet import AttnBlock, UNet


@pytest.mark.parametrize("backward", [True, False], ids=["train step", "evaluation"])
def test_conv_floor_replays_the_networks_convolutions_in_both_formats(backward: bool) -> None:
    settings = RunSettings()
    torch.manual_seed(0)
    model = UNet(perf_workload.TINY).train(backward)
    data = perf_workload.batch_data(perf_workload.TINY, 4, settings)
    seen: list[torch.nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(m)) for m in model.modules()
             if isinstance(m, torch.nn.Conv2d)]  # fmt: skip
    replays = perf_floor.floors(model, settings, data, backward=backward)  # records with the hooks on: not copied
    with torch.no_grad():
        model(data[0], data[2])
    for h in hooks:
        h.remove()
    seen = seen[-replays["convs_nchw"].calls :]  # the last forward's calls
    besides = {perf_floor.NORM_KEY, perf_floor.ATTN_KEY} | ({perf_floor.ADAM_KEY} if backward else set())
    assert set(replays) == {"convs_nchw", "convs_nhwc"} | besides
    for name, replay in replays.items():
        if name in besides:
            continue
        fmt = perf_floor.FORMATS[name.removeprefix("convs_")]
        ran: list[tuple[torch.nn.Module, torch.Tensor]] = []

        def note(m: torch.nn.Module, i: tuple, o: torch.Tensor, ran: list = ran) -> None:
            ran.append((m, i[0]))

        layer_hooks = [m.register_forward_hook(note) for m in replay.layers]
        replay()
        for h in layer_hooks:
            h.remove()
        assert len(seen) == len(ran) == replay.calls > 0  # every conv call of one forward, each once
        for orig, (twin, x) in zip(seen, ran):  # same layers (copies), same order, in the replay's format
            assert twin is not orig and torch.equal(twin.weight, orig.weight) and x.shape[1] == orig.in_channels
            assert twin.weight.is_contiguous(memory_format=fmt) and x.is_contiguous(memory_format=fmt)
        assert all(p.grad is None for m in replay.layers for p in m.parameters())
    assert all(p.grad is None for p in model.parameters())  # the model is left untouched


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16 autocast"])
@pytest.mark.parametrize("backward", [True, False], ids=["train step", "evaluation"])
def test_norm_passes_move_each_groupnorm_tensor_once_each_way(backward: bool, bf16: bool, monkeypatch) -> None:
    settings = RunSettings(bf16=bf16)
    torch.manual_seed(0)
    model = UNet(perf_workload.TINY).train(backward)
    data = perf_workload.batch_data(perf_workload.TINY, 4, settings)
    seen: list[tuple[int, torch.dtype]] = []  # each GroupNorm input of one forward: size and dtype
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((i[0].numel(), i[0].dtype))) for m in model.modules()
             if isinstance(m, torch.nn.GroupNorm)]  # fmt: skip
    before = {k: v.clone() for k, v in model.state_dict().items()}
    replay = perf_floor.norm_passes(model, settings, data, backward=backward)
    for h in hooks:
        h.remove()
    sizes = [n for n, _ in seen]
    assert replay.calls == len(seen) > 0 and replay.elements == sum(sizes)  # every GroupNorm call of one forward
    passes: list[tuple[str, int, torch.dtype, int]] = []  # (kernel, elements, dtype, tensors read) of each pass

    def spy(kind: str, fn, reads: int):
        def run(*args, **kwargs):
            passes.append((kind, args[0].numel(), args[0].dtype, reads))
            return fn(*args, **kwargs)

        return run

    for name, reads in (("sum", 1), ("mul_", 1), ("add_", 2)):
        monkeypatch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name), reads))
    for name, reads in (("mul", 1), ("dot", 2), ("add", 2)):
        monkeypatch.setattr(torch, name, spy(name, getattr(torch, name), reads))
    replay()
    monkeypatch.undo()
    if backward:  # forwards in the network's order into new tensors, then backwards in reverse, dx in dy's place
        want = [("mul", n, d, 1) for n, d in seen] + [("add_", n, d, 2) for n, d in reversed(seen)]
    else:  # sampling normalises in place
        want = [("mul_", n, d, 1) for n, d in seen]
    assert passes == want  # one read (and write) of x forward, of x and dy backward: nothing more
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is left untouched


@pytest.mark.parametrize("backward", [True, False], ids=["train step", "evaluation"])
def test_attention_products_replay_each_attention_calls_products(backward: bool, monkeypatch) -> None:
    settings = RunSettings()
    torch.manual_seed(0)
    model = UNet(perf_workload.TINY).train(backward)
    data = perf_workload.batch_data(perf_workload.TINY, 4, settings)
    blocks: list[tuple[AttnBlock, tuple]] = []  # each attention call of one forward, with its input's shape
    hooks = [m.register_forward_hook(lambda m, i, o: blocks.append((m, i[0].shape))) for m in model.modules()
             if isinstance(m, AttnBlock)]  # fmt: skip
    replay = perf_floor.attention_products(model, settings, data, backward=backward)
    for h in hooks:
        h.remove()
    assert replay.calls == len(blocks) > 0
    made: list[tuple[str, tuple, torch.Tensor | None]] = []
    linear, sdpa = F.linear, F.scaled_dot_product_attention

    def spy_linear(h, w, b=None):
        made.append(("linear", tuple(h.shape), w))
        return linear(h, w, b)

    def spy_sdpa(q, k, v, **kw):
        made.append(("attention", tuple(q.shape), None))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(F, "linear", spy_linear)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy_sdpa)
    backwards: list[torch.Size] = []  # gradients reaching each call's input (training only)
    hooks = [h.register_hook(lambda g: backwards.append(g.shape)) for h in replay.inputs if h.requires_grad]
    replay()
    for h in hooks:
        h.remove()
    monkeypatch.undo()
    assert len(backwards) == (len(blocks) if backward else 0)  # backward into the input of every call
    assert [kind for kind, _, _ in made] == ["linear", "attention", "linear"] * len(blocks)
    for (block, (B, C, H, W)), start in zip(blocks, range(0, len(made), 3)):
        (_, qkv_in, w_qkv), (_, q, _), (_, o_in, w_o) = made[start : start + 3]
        assert qkv_in == o_in == (B, H * W, C) and q == (B, 1, H * W, C)  # the block's own sizes
        assert torch.equal(w_qkv, torch.cat([block.q.weight, block.k.weight, block.v.weight]).flatten(1))
        assert torch.equal(w_o, block.proj_out.weight.flatten(1))
        assert w_qkv.grad is None and w_o.grad is None  # backward ran (if any) and left no gradient behind
    assert all(p.grad is None for p in model.parameters())


def test_adam_step_updates_copies_by_the_fused_kernel() -> None:
    torch.manual_seed(0)
    model = UNet(perf_workload.TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    replay = perf_floor.adam_step(model)
    copies = [p.detach().clone() for p in replay.params]
    assert [c.shape for c in copies] == [p.shape for p in model.parameters()]
    replay()
    replay()
    assert all(not torch.equal(p, c) for p, c in zip(replay.params, copies))  # the copies move
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()) and replay.fused  # torch >= 2.4


def test_floor_summary_bound_adds_what_no_implementation_avoids_to_the_faster_floor() -> None:
    def timed(s: float) -> dict[str, float]:
        return {"cpu_s": s, "wall_s": 9.0}

    def replay() -> None: ...

    replay.calls, replay.fused = 3, True  # type: ignore[attr-defined]
    replays = {name: replay for name in ("convs_nchw", "convs_nhwc", perf_floor.NORM_KEY, perf_floor.ATTN_KEY)}
    times = {"ours": timed(2.0), "convs_nchw": timed(1.0), "convs_nhwc": timed(0.8), perf_floor.NORM_KEY: timed(0.1),
             perf_floor.ATTN_KEY: timed(0.05), perf_floor.ADAM_KEY: timed(0.02)}  # fmt: skip
    out = perf_floor.summary(times, "cpu_s", replays, RunSettings())  # an evaluation: no optimizer
    assert out["floor_s"] == {"nchw": 1.0, "nhwc": 0.8} and out["floor_format"] == "nhwc"
    assert out["bound_ratio"] == pytest.approx(0.95 / 0.8) and out["norm_passes_s"] == 0.1
    assert out["floor_ratio"] == pytest.approx(2.0 / 0.8) and out["norm_calls"] == 3 and out["attention_s"] == 0.05
    replays[perf_floor.ADAM_KEY] = replay  # a training step
    out = perf_floor.summary(times, "cpu_s", replays, RunSettings())
    assert out["bound_ratio"] == pytest.approx(0.97 / 0.8) and out["adam_s"] == 0.02 and out["adam_fused"] is True
