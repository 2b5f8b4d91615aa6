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
