"""Scoring's device settings (CUDA device, no TF32, no autotuning) hold only while torch-fidelity runs, and a bad
extractor file is named for what it is. CUDA is faked: the order of entering and leaving is what is tested."""

from __future__ import annotations

import contextlib

import pytest
import torch

from bench.metrics.fidelity import compute_metrics
from ddim.errors import DDIMError


def test_a_refusal_before_scoring_leaves_the_device_settings_untouched(tmp_path, monkeypatch) -> None:
    import ddim.runtime

    events: list[str] = []

    @contextlib.contextmanager
    def recorded(name: str):
        events.append(f"enter {name}")
        yield
        events.append(f"exit {name}")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", lambda device: recorded("device"))
    monkeypatch.setattr(ddim.runtime, "numerics", lambda device, **kw: recorded(f"numerics {kw}"))
    bad = tmp_path / "text.pt"
    bad.write_text("hello world\n")
    samples = torch.zeros((4, 1, 16, 16), dtype=torch.uint8)
    with pytest.raises(DDIMError, match=r"text\.pt' \(not a PyTorch file: its bytes are not a pickle torch can"):
        compute_metrics(samples, dataset="digits", extractor="inception", inception_weights=str(bad),
                        metrics=("fid",), cache_dir=tmp_path / "cache", device="cuda")  # fmt: skip
    assert events == []  # CUDA's presence was checked, but nothing was switched before the refusal


def test_scoring_on_cuda_runs_torch_fidelity_without_tf32_or_autotuning(cache_dir, monkeypatch) -> None:
    """Inside the one torch-fidelity call: the CUDA device selected, numerics without TF32, cuDNN autotuning off;
    all of it undone afterwards. (CUDA's presence and device switch are faked, the flags are real; the call is
    faked too: the settings it runs under are what is checked.)"""
    import torch_fidelity

    import ddim.runtime

    events: list[str] = []

    @contextlib.contextmanager
    def recorded(name: str):
        events.append(f"enter {name}")
        try:
            yield
        finally:
            events.append(f"exit {name}")

    class Scored(Exception):
        """Stops after the call: what follows reads files a real call writes."""

    def fake_scoring(**kwargs):
        flags = torch.backends.cudnn
        events.append(f"score benchmark={flags.benchmark} tf32={flags.allow_tf32} cuda={kwargs['cuda']}")
        raise Scored

    real_numerics = ddim.runtime.numerics

    @contextlib.contextmanager
    def spied_numerics(device, **kw):  # the real settings, entered and left where the test can see it
        with recorded(f"numerics {kw}"), real_numerics(device, **kw):
            yield

    from bench.metrics.classifier import ensure_classifier

    ensure_classifier("digits", cache_dir=cache_dir)  # trained (or found) before CUDA is faked: it trains on the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", lambda device: recorded(f"device {device}"))
    monkeypatch.setattr(ddim.runtime, "numerics", spied_numerics)
    monkeypatch.setattr(torch_fidelity, "calculate_metrics", fake_scoring)
    before = torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.benchmark = torch.backends.cudnn.allow_tf32 = True  # as a training run leaves them
    try:
        samples = torch.zeros((4, 1, 16, 16), dtype=torch.uint8)
        with pytest.raises(Scored):
            compute_metrics(samples, dataset="digits", metrics=("fid",), cache_dir=cache_dir, device="cuda:1")
        assert events == ["enter device cuda:1", "enter numerics {'tf32': False}",
                          "score benchmark=False tf32=False cuda=True", "exit numerics {'tf32': False}",
                          "exit device cuda:1"]  # fmt: skip
        assert torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32  # the caller's settings, back
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = before
