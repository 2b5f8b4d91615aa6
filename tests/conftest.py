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
