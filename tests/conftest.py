"""Test-wide settings: one intra-op thread (the suite runs on 2 shared cores) and offline W&B."""

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One metrics cache per session: the digits classifier and reference statistics are built once."""
    return tmp_path_factory.getbasetemp() / "ddimbench-cache"


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step digits checkpoint for the sweep tests: the weights hardly matter, the plumbing does."""
    from ddim.training import TrainConfig, train

    run = tmp_path_factory.mktemp("ckpt") / "run"
    cfg = TrainConfig(dataset="digits", max_steps=2, batch_size=8, run_dir=str(run), sample_every=0, save_every=2,
                      log_every=1, warmup=1, device="cpu", num_workers=0)  # fmt: skip
    train(cfg)
    return run


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sweep tests' metrics cache (classifier, reference statistics)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of its own: sweep artifacts (ddimbench-sweeps/) and reports/ land here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
