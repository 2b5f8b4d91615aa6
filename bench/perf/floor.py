"""The convolution floor: the convolutions of a training step (or of one evaluation) replayed alone.

Every ``nn.Conv2d`` call of one forward is recorded and replayed on its own copy of the layer, in
either memory format (NCHW or channels_last): forward, and for a training step backward into the
weight, the bias and the input wherever the real step needs it. Its time is what the network would
cost if everything but the convolutions were free. Diffusers' twin runs the same convolutions
(equal architecture), so a network's time over the faster format's floor says how far its
non-convolution work is from free: no rewrite that keeps these convolutions can go below 1×.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from bench.perf.models import RunSettings, autocast

FORMATS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}
TARGET = 1.15  # the target for a network's time over its convolution floor


def _twin(conv: torch.nn.Conv2d) -> torch.nn.Conv2d:
    """A copy of the layer's configuration and weights, without its hooks."""
    w = conv.weight
    twin = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
                           conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device=w.device,
                           dtype=w.dtype)  # fmt: skip
    twin.load_state_dict(conv.state_dict())
    return twin.train(conv.training)


def conv_floor(model: torch.nn.Module, settings: RunSettings, data: tuple, *, fmt: str = "nchw",
               backward: bool = True) -> Callable[[], None]:  # fmt: skip
    """A function that replays the convolutions of one forward of ``model`` on ``data`` = (x_t, ε, t).

    ``fmt``: the replay's memory format (``nchw`` / ``nhwc``) for its copies of the layers and for the
    recorded inputs, whatever the model's own format. ``backward``: a training step (forward +
    backward against a fixed upstream gradient; the network input gets no gradient, as in the real
    step), else the forward alone under ``torch.no_grad`` (a sampling evaluation). The model is
    left untouched: the replay has its own layers and gradients.
    """
    x_t, _, t = data
    memory_format = FORMATS[fmt]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    twins = {id(m): _twin(m).to(memory_format=memory_format) for m in convs}
    calls: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor | None]] = []

    def record(mod: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        x = inputs[0].detach().clone(memory_format=memory_format)
        x.requires_grad_(backward and inputs[0] is not x_t)
        grad = torch.randn_like(out).contiguous(memory_format=memory_format) if backward else None
        calls.append((twins[id(mod)], x, grad))

    hooks = [m.register_forward_hook(record) for m in convs]
    try:
        with torch.no_grad(), autocast(settings):
            model(x_t, t)
    finally:
        for h in hooks:
            h.remove()
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


def floors(model: torch.nn.Module, settings: RunSettings, data: tuple, backward: bool) -> dict[str, Callable]:
    """``conv_floor`` in both memory formats, keyed ``convs_nchw`` / ``convs_nhwc`` (interleave candidates)."""
    eager = getattr(model, "_orig_mod", model)  # record through a compiled wrapper too
    return {f"convs_{f}": conv_floor(eager, settings, data, fmt=f, backward=backward) for f in FORMATS}


def other_format(settings: RunSettings) -> tuple[str, RunSettings]:
    """The interleave key and settings of ours in the memory format the run does not use (channels_last
    for an NCHW run, and back): the benchmark measures ours in both, so the faster can become the default."""
    fmt = "nchw" if settings.channels_last else "nhwc"
    return f"ours_{fmt}", replace(settings, channels_last=not settings.channels_last)


def summary(times: dict[str, Any], basis: str, replays: dict[str, Callable], settings: RunSettings) -> dict[str, Any]:
    """Both formats' floors, the faster one (*the* floor), ours (in each format measured) and diffusers over it."""
    per = {name.removeprefix("convs_"): times[name][basis] for name in replays}
    best = min(per, key=lambda f: per[f])
    floor = per[best]
    out: dict[str, Any] = {
        "conv_calls": next(iter(replays.values())).calls,  # type: ignore[attr-defined]
        "floor_s": per,
        "floor_format": best,
        "floor_ratio": times["ours"][basis] / floor,
        "conv_share_ours": floor / times["ours"][basis],
    }
    ours = {("nhwc" if settings.channels_last else "nchw"): times["ours"][basis]}  # the run's own format
    ours.update({f: times[f"ours_{f}"][basis] for f in FORMATS if f"ours_{f}" in times})  # and the other one
    out["floor_ratio_by_format"] = {f: t / floor for f, t in ours.items()}
    if "diffusers" in times:
        out["ceiling"] = times["diffusers"][basis] / floor  # diffusers over the floor: the largest exact speed-up
    return out
