"""The convolution floor: the convolutions of a training step (or of one evaluation) replayed alone.

Every ``nn.Conv2d`` call of one forward is recorded and replayed on its own copy of the layer, in
either memory format (NCHW or channels_last): forward, and for a training step backward into the
weight, the bias and the input wherever the real step needs it. Its time is what the network would
cost if everything but the convolutions were free. Diffusers' twin runs the same convolutions
(equal architecture), so a network's time over the faster format's floor says how far its
non-convolution work is from free: no rewrite that keeps these convolutions can go below 1×.

Nor can it reach 1×: every GroupNorm of the network (the paper's Appendix D.1 uses DDPM's UNet, normalised by
GroupNorm) reads its input from memory and writes its output at least once (the SiLU after it can ride
along), and its backward reads x and the upstream gradient and writes dx at least once.
``norm_passes`` replays exactly that traffic over buffers of the recorded sizes, and
``attention_products`` the attention's matrix products (work the same architecture always does), and
``adam_step`` a training step's optimizer update by PyTorch's fused kernel, so their sum over the floor
is the lowest ratio any implementation can reach on this machine that keeps GroupNorm out of the convolution
kernels; residual adds, up-sampling, concatenations, the loss and the time embedding only add to it. On a
GPU each replay also pays its own kernel launches, which CUDA graphs or a compiler could hide: there the bound
is an estimate, not a bound.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from bench.perf.models import RunSettings, autocast
from ddim import fused_norm

FORMATS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}
TARGET = 1.15  # the target for a network's time over its convolution floor
NORM_KEY = "norm_passes"  # the interleave key of the GroupNorm memory passes (``norm_passes``)
ATTN_KEY = "attention_products"  # the interleave key of the attention's products (``attention_products``)
ADAM_KEY = "adam_step"  # the interleave key of a training step's optimizer update alone (``adam_step``)


def _twin(conv: torch.nn.Conv2d) -> torch.nn.Conv2d:
    """A copy of the layer's configuration and weights, without its hooks."""
    w = conv.weight
    twin = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
                           conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device=w.device,
                           dtype=w.dtype)  # fmt: skip
    twin.load_state_dict(conv.state_dict())
    return twin.train(conv.training)


def _each_call(model: torch.nn.Module, kind: type, settings: RunSettings, data: tuple,
               record: Callable[[Any, tuple, Any], None]) -> None:  # fmt: skip
    """Run one forward of ``model`` on ``data`` = (x_t, ε, t) (no autograd, the run's autocast) with ``record``
    hooked on every module of type ``kind``: called as ``record(module, inputs, output)`` once per call."""
    x_t, _, t = data
    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, kind)]
    try:
        with torch.no_grad(), autocast(settings):
            model(x_t, t)
    finally:
        for h in hooks:
            h.remove()


def conv_floor(model: torch.nn.Module, settings: RunSettings, data: tuple, *, fmt: str = "nchw",
               backward: bool = True) -> Callable[[], None]:  # fmt: skip
    """A function that replays the convolutions of one forward of ``model`` on ``data`` = (x_t, ε, t).

    ``fmt``: the replay's memory format (``nchw`` / ``nhwc``) for its copies of the layers and for the
    recorded inputs, whatever the model's own format. ``backward``: a training step (forward +
    backward against a fixed upstream gradient; the network input gets no gradient, as in the real
    step), else the forward alone under ``torch.no_grad`` (a sampling evaluation). The model is
    left untouched: the replay has its own layers and gradients.
    """
    x_t = data[0]  # the network input: it gets no gradient
    memory_format = FORMATS[fmt]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    twins = {id(m): _twin(m).to(memory_format=memory_format) for m in convs}
    calls: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]] = []

    def record(mod: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        x = inputs[0].detach().clone(memory_format=memory_format)
        x.requires_grad_(backward and inputs[0] is not x_t)
        grad = torch.randn_like(out).contiguous(memory_format=memory_format) if backward else None
        calls.append((twins[id(mod)], x, grad))

    _each_call(model, torch.nn.Conv2d, settings, data, record)
    params = [p for m in twins.values() for p in m.parameters()]

    def replay() -> None:
        with contextlib.nullcontext() if backward else torch.no_grad():
            for mod, x, grad in calls:
                with autocast(settings):
                    y = mod(x)
                if grad is not None:
                    y.backward(grad)
                    x.grad = None
        for p in params:
            p.grad = None

    replay.calls = len(calls)  # type: ignore[attr-defined]
    replay.layers = [twins[id(m)] for m in convs]  # type: ignore[attr-defined]
    return replay


def norm_passes(model: torch.nn.Module, settings: RunSettings, data: tuple, *,
                backward: bool = True) -> Callable[[], None]:  # fmt: skip
    """A function that makes, for every ``nn.GroupNorm`` call of one forward of ``model`` on ``data``, the
    memory traffic any GroupNorm (with the SiLU after it) makes outside the convolutions.

    A kernel that works one (sample, group) slice at a time keeps the slice in cache from its statistics to its
    normalisation, so from memory it reads x once and writes y once (the SiLU folded in; in x's place when
    sampling), and its backward reads x and dy once and writes dx (in dy's place). Each such pass is one plain
    ATen kernel here (``mul``, ``add_``) over a contiguous buffer of the recorded size and dtype: every forward
    in the network's order, then for a training step every backward in reverse, as the step runs them (x has
    left the cache by then). The statistics' arithmetic is not counted.
    """
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def record(mod: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        x = inputs[0].detach().clone(memory_format=torch.contiguous_format).flatten()
        calls.append((x, torch.randn_like(x), torch.empty_like(x)) if backward else (x, x, x))

    _each_call(model, torch.nn.GroupNorm, settings, data, record)

    @torch.no_grad()
    def replay() -> None:
        for x, _, y in calls:
            if backward:
                torch.mul(x, 1.0, out=y)  # normalise (+ SiLU) into a new tensor: backward needs x
            else:
                x.mul_(1.0)  # normalise (+ SiLU) in place: sampling keeps no x
        if backward:
            for x, dy, _ in reversed(calls):
                dy.add_(x)  # dx, in dy's place

    replay.calls = len(calls)  # type: ignore[attr-defined]
    replay.elements = sum(x.numel() for x, _, _ in calls)  # type: ignore[attr-defined]
    return replay


def attention_products(model: torch.nn.Module, settings: RunSettings, data: tuple, *,
                       backward: bool = True) -> Callable[[], None]:  # fmt: skip
    """A function that makes, for every ``AttnBlock`` call of one forward of ``model`` on ``data``, the attention's
    own products alone: q, k, v from one (B·HW, C) × (C, 3C) product, the attention itself (one
    ``scaled_dot_product_attention``) and the output projection, as ours runs them (forward, and backward into
    the input and the weights for a training step). Equal architectures run the same products, so like the
    convolutions they are work no rewrite removes; layout changes, the norm and the residual add are left out.
    """
    from ddim.unet import AttnBlock

    x_t = data[0]
    g = torch.Generator(device=x_t.device).manual_seed(0)
    calls: list[tuple[torch.Tensor, ...]] = []

    def leaf(w: torch.Tensor) -> torch.Tensor:
        return w.detach().clone().requires_grad_(backward)

    def record(mod: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        B, C, H, W = inputs[0].shape
        h = torch.randn(B, H * W, C, generator=g, device=x_t.device, dtype=inputs[0].dtype).requires_grad_(backward)
        w_qkv = leaf(torch.cat([mod.q.weight, mod.k.weight, mod.v.weight]).flatten(1))
        b_qkv = leaf(torch.cat([mod.q.bias, mod.k.bias, mod.v.bias]))
        w_o, b_o = leaf(mod.proj_out.weight.flatten(1)), leaf(mod.proj_out.bias)
        grad = torch.randn(B, H * W, C, generator=g, device=x_t.device, dtype=inputs[0].dtype) if backward else None
        calls.append((h, w_qkv, b_qkv, w_o, b_o, grad))

    _each_call(model, AttnBlock, settings, data, record)

    def replay() -> None:
        with contextlib.nullcontext() if backward else torch.no_grad():
            for h, w_qkv, b_qkv, w_o, b_o, grad in calls:
                with autocast(settings):
                    qkv = F.linear(h, w_qkv, b_qkv).unflatten(-1, (3, 1, h.shape[-1])).permute(2, 0, 3, 1, 4)
                    y = F.linear(F.scaled_dot_product_attention(*qkv)[:, 0], w_o, b_o)
                if grad is not None:
                    y.backward(grad)
                    for tensor in (h, w_qkv, b_qkv, w_o, b_o):
                        tensor.grad = None

    replay.calls = len(calls)  # type: ignore[attr-defined]
    replay.inputs = [call[0] for call in calls]  # type: ignore[attr-defined]
    return replay


def adam_step(model: torch.nn.Module) -> Callable[[], None]:
    """A function that makes one Adam update (the training step's optimizer, lr 2e-4) of copies of ``model``'s
    parameters with fixed gradients, by PyTorch's fused kernel where this PyTorch has one for the device (one
    pass over parameters, gradients and both moments: the least memory traffic an Adam update can make), else
    by its default implementation."""
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    try:
        opt = torch.optim.Adam(params, lr=2e-4, fused=True)
        opt.step()
    except (RuntimeError, TypeError):  # no fused kernel for this device or PyTorch
        opt = torch.optim.Adam(params, lr=2e-4)

    def replay() -> None:
        opt.step()

    replay.params = params  # type: ignore[attr-defined]
    replay.fused = opt.defaults.get("fused") is True  # type: ignore[attr-defined]
    return replay


def floors(model: torch.nn.Module, settings: RunSettings, data: tuple, backward: bool) -> dict[str, Callable]:
    """``conv_floor`` in both memory formats, keyed ``convs_nchw`` / ``convs_nhwc``, and what no implementation
    avoids besides: ``norm_passes`` (``NORM_KEY``), ``attention_products`` (``ATTN_KEY``) and for a training
    step ``adam_step`` (``ADAM_KEY``); interleave candidates."""
    eager = getattr(model, "_orig_mod", model)  # record through a compiled wrapper too
    out = {f"convs_{f}": conv_floor(eager, settings, data, fmt=f, backward=backward) for f in FORMATS}
    out[NORM_KEY] = norm_passes(eager, settings, data, backward=backward)
    out[ATTN_KEY] = attention_products(eager, settings, data, backward=backward)
    if backward:
        out[ADAM_KEY] = adam_step(eager)
    return out


def other_format(settings: RunSettings) -> tuple[str, RunSettings]:
    """The interleave key and settings of ours in the memory format the run does not use (channels_last
    for an NCHW run, and back): the benchmark measures ours in both, so the faster can become the default."""
    fmt = "nchw" if settings.channels_last else "nhwc"
    return f"ours_{fmt}", replace(settings, channels_last=not settings.channels_last)


UNFUSED_KEY = "ours_nhwc_pytorch_norm"


def unfused_candidate(fns: dict[str, Callable], settings: RunSettings) -> None:
    """Add ours in channels_last with PyTorch's GroupNorm and SiLU instead of ``ddim.fused_norm``'s kernels (the CPU
    only, where those apply; the same model and data as ours' channels_last candidate): what the kernels gain."""
    if settings.device != "cpu" or fused_norm.kernels() is None:
        return
    nhwc = fns["ours" if settings.channels_last else "ours_nhwc"]

    def call() -> None:
        with fused_norm.disabled():
            nhwc()

    fns[UNFUSED_KEY] = call


def summary(times: dict[str, Any], basis: str, replays: dict[str, Callable], settings: RunSettings) -> dict[str, Any]:
    """Both formats' floors, the faster one (*the* floor), ours (in each format measured) and diffusers over it,
    and the bound: floor + GroupNorm passes + attention products (+ the Adam update) over the floor, the lowest
    *ours / floor* reachable here."""
    per = {name.removeprefix("convs_"): times[name][basis] for name in replays if name.startswith("convs_")}
    best = min(per, key=lambda f: per[f])
    floor = per[best]
    out: dict[str, Any] = {
        "conv_calls": replays["convs_nchw"].calls,  # type: ignore[attr-defined]
        "floor_s": per,
        "floor_format": best,
        "floor_ratio": times["ours"][basis] / floor,
        "conv_share_ours": floor / times["ours"][basis],
    }
    ours = {("nhwc" if settings.channels_last else "nchw"): times["ours"][basis]}  # the run's own format
    ours.update({f: times[f"ours_{f}"][basis] for f in FORMATS if f"ours_{f}" in times})  # and the other one
    out["floor_ratio_by_format"] = {f: t / floor for f, t in ours.items()}
    if UNFUSED_KEY in times and "nhwc" in ours:
        out["fused_norm_speedup"] = times[UNFUSED_KEY][basis] / ours["nhwc"]
    if NORM_KEY in replays and ATTN_KEY in replays:
        out["norm_calls"] = replays[NORM_KEY].calls  # type: ignore[attr-defined]
        out["norm_passes_s"] = times[NORM_KEY][basis]
        out["attention_calls"] = replays[ATTN_KEY].calls  # type: ignore[attr-defined]
        out["attention_s"] = times[ATTN_KEY][basis]
        out["adam_s"] = times[ADAM_KEY][basis] if ADAM_KEY in replays else 0.0
        if ADAM_KEY in replays:
            out["adam_fused"] = replays[ADAM_KEY].fused  # type: ignore[attr-defined]
        out["bound_ratio"] = (floor + out["norm_passes_s"] + out["attention_s"] + out["adam_s"]) / floor
    if "diffusers" in times:
        out["ceiling"] = times["diffusers"][basis] / floor  # diffusers over the floor: the largest exact speed-up
        # ours in each format over diffusers as run (its settings' format): the speed-up a user choosing it sees
        out["speedup_by_format"] = {f: times["diffusers"][basis] / t for f, t in ours.items()}
    return out
