"""bench.sweep.resolve: a sweep's values resolved against the checkpoint (defaults from it, refusals before any
work, the shipped sweep files)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import ROOT
from helpers.sweep import GRID, spec_of

from bench.sweep.resolve import resolve_spec
from ddim.errors import DDIMError


# ------------------------------------------------------------------------------------- resolve_spec
def test_resolve_defaults_from_the_checkpoint(ckpt, cache):
    spec = spec_of(ckpt, cache, *GRID)
    assert spec.T == 1000 and spec.dataset == "digits" and spec.extractor == "classifier"
    assert spec.checkpoint.endswith(".pt") and spec.steps == (2, 3) and spec.eta == (0.0, 1.0)
    assert spec.spacing == ("uniform",) and spec.artifacts == str(Path("ddimbench-sweeps") / "g")
    assert len(spec.cells()) == 4


@pytest.mark.parametrize(
    "tokens, words",
    [
        (["steps=2000"], "exceeds the checkpoint's T = 1000"),
        (["steps=5..100"], "ranges need --search pareto"),
        (["n=5"], "too few for IS"),
        (["name=a b"], "name="),
        (["device=cuda:7"] if not torch.cuda.is_available() else ["device=tpu"], "device"),
        (["extractor=inception", "inception_weights=/nonexistent.pth"], "not found"),
        (["dataset=cifar10"], "cifar10"),
    ],
)
def test_resolve_refuses_before_any_work(ckpt, cache, tokens, words):
    with pytest.raises(DDIMError) as err:
        spec_of(ckpt, cache, *tokens)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_resolve_checkpoint_missing_or_corrupt(tmp_path, cache, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here: no default checkpoint either
    with pytest.raises(DDIMError, match="does not exist"):
        resolve_spec([f"checkpoint={tmp_path / 'nope'}"])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DDIMError, match="corrupt"):
        resolve_spec([f"checkpoint={bad}"])
    with pytest.raises(DDIMError, match="no checkpoint= given and no training run under runs/"):
        resolve_spec(["steps=10"])


def test_shipped_sweep_files_resolve(ckpt, cache):
    quick = resolve_spec([f"checkpoint={ckpt}"], ROOT / "sweeps" / "quick.yaml")
    assert quick.name == "digits-demo" and quick.steps == (10, 20, 50) and quick.n == 500
    assert len(quick.cells()) == 27 and quick.seeds == (0, 1, 2)  # 3 S × (η = 0, 1, σ̂) × 3 seed blocks
    table1 = resolve_spec([f"checkpoint={ckpt}", "n=100"], ROOT / "sweeps" / "paper-table1.yaml")
    assert table1.n == 100  # the command line wins over the file
    assert table1.steps == (10, 20, 50, 100, 1000) and table1.eta == (0.0, 0.2, 0.5, 1.0)
    assert table1.spacing == ("uniform",)  # digits: not CIFAR10, so the paper's uniform spacing
    assert len(table1.cells()) == 5 * 5
