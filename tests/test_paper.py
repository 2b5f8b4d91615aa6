"""bench.report.paper (the DDIM paper's published numbers) and bench.report.plots' Pareto front."""

from __future__ import annotations

import pytest

from bench.report import paper, plots
from ddim.errors import DDIMError


def test_paper_data():
    assert paper.fid("cifar10", "ddim", 0.0, 10) == 13.36
    assert paper.fid("CIFAR-10", "sigma_hat", None, 1000) == 3.17
    assert paper.fid("celeba", "ddim", 1.0, 100) == 13.93
    assert paper.fid("celeba", "ddim", 0.3, 10) is None and paper.fid("cifar10", "ddim", 0.0, 30) is None
    assert paper.fid("church", "ddim", 1.0, 100) == 8.27 and paper.fid("lsun_bedroom", "ddim", 0.0, 10) == 16.95
    assert paper.spacing("cifar10") == "quad" and paper.spacing("celeba") == "uniform"
    assert paper.inversion_mse(20) == 0.0065 and paper.inversion_mse(30) is None
    for ds in ("cifar10", "celeba"):
        table = paper.FID[ds]
        assert len(table) == 5 and all(sorted(row) == [10, 20, 50, 100, 1000] for row in table.values())
        assert all(row[10] > row[1000] for row in table.values())  # more steps, lower FID
    with pytest.raises(DDIMError):
        paper.fid("imagenet", "ddim", 0.0, 10)


def test_pareto_front():
    x = [1.0, 2.0, 3.0, 0.5, 2.5]
    y = [5.0, 3.0, 4.0, 9.0, 1.0]
    assert plots.pareto_front(x, y) == [3, 0, 1, 4]
