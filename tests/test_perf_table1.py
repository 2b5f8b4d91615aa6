"""bench.perf.table1: the paper's Table 1 grid read from its sweep file, the a + b·S cost model, the job and
its report section (on the CPU, with the tiny UNet)."""

from __future__ import annotations

import json

import pytest

from bench.perf import jobs as perf_jobs
from bench.perf import run as perf
from bench.perf import table1
from bench.perf.models import RunSettings
from bench.perf.report import render


def test_grid_is_the_paper_table1_sweep_file() -> None:
    grid = table1.paper_grid()
    # Song et al. 2020, Table 1: S ∈ {10, 20, 50, 100, 1000} × (η ∈ {0, 0.2, 0.5, 1} + σ̂), 50k samples per cell.
    assert grid == {"cells": [(10, 5), (20, 5), (50, 5), (100, 5), (1000, 5)], "n_cells": 25, "n": 50_000, "batch": 500}


def test_grid_follows_the_file(tmp_path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text("steps: [10, 100]\neta: [0.0, 1.0]\nsampler: [ddim, ddpm]\nn: 2000\nseeds: [0, 1]\nbatch: auto\n")
    # ddpm runs all T = 1000 steps once, whatever S; η varies for ddim only; every seed block is a cell.
    grid = {"cells": [(10, 4), (100, 4), (1000, 2)], "n_cells": 10, "n": 2000, "batch": "auto"}
    assert table1.paper_grid(path) == grid


def test_cost_model_through_two_measurements() -> None:
    assert table1.fit({50: 3.0, 10: 1.0}) == pytest.approx((0.5, 0.05))
    assert table1.fit({10: 2.0, 50: 1.0}) == (2.0, 0.0)  # never a negative cost per step
    grid = table1.paper_grid()
    # 100 calls of 500 per cell; per S-column 5 cells: 5·100·(0.5 + 0.05·S) summed over S = 10..1000.
    assert table1.estimate(0.5, 0.05, 500, grid) == pytest.approx(5 * 100 * (5 * 0.5 + 0.05 * 1180))
    assert table1.estimate(0.5, 0.05, 499, grid) > table1.estimate(0.5, 0.05, 500, grid)  # ⌈50000/499⌉ = 101


def test_table1_is_planned_on_cuda_and_on_request() -> None:
    cpu = [j["kind"] for j in perf.plan(perf.PerfConfig(device="cpu"), "cpu")]
    cuda = [j["kind"] for j in perf.plan(perf.PerfConfig(device="cpu"), "cuda:0")]
    asked = [j["kind"] for j in perf.plan(perf.PerfConfig(device="cpu", only=("table1",)), "cpu")]
    assert "table1" not in cpu and cuda.count("table1") == 1 and asked == ["table1"]
    (gpu,) = [j for j in perf.plan(perf.PerfConfig(device="cpu"), "cuda:0") if j["kind"] == "table1"]
    (cpu,) = perf.plan(perf.PerfConfig(device="cpu", only=("table1",)), "cpu")
    for job in (gpu, cpu):  # the paper's CIFAR10 network, run as the sweep file runs it: float32, NCHW
        assert job["preset"] == "cifar10" and not job["settings"]["bf16"] and not job["settings"]["channels_last"]
    assert "batch" not in gpu and cpu["batch"] == 8  # the file's batch on a GPU; a small one on a CPU


@pytest.mark.slow  # samples the tiny UNet 4 × 60 evaluations and runs Inception-v3 at 299 px on the CPU
def test_table1_job_and_report(tmp_path) -> None:
    job = {"kind": "table1", "settings": RunSettings(device="cpu").to_dict(), "threads": 1, "preset": "tiny",
           "batch": 4, "feature_batch": 2, "reps": 1}  # fmt: skip
    res = json.loads(json.dumps(perf_jobs.run_job(job)))  # JSON-able, as results.json stores it
    assert res["batch"] == 4 and res["grid"]["n_cells"] == 25 and res["grid"]["feature_images"] == 26 * 50_000
    for name in ("ours", "diffusers"):
        m = res["models"][name]
        walls = {S: res["times"][f"{name}_S{S}"]["wall_s"] for S in (10, 50)}
        assert m["measured_images_per_s"] == {str(S): pytest.approx(4 / w) for S, w in walls.items()}
        assert (m["fit_a_s"], m["fit_b_s"]) == pytest.approx(table1.fit(walls))
        a, b = m["fit_a_s"], m["fit_b_s"]
        assert m["images_per_s"]["1000"] == pytest.approx(4 / (a + 1000 * b))  # S = 1000 from the fit
        grid = table1.paper_grid()  # every cell of the sweep file, 12,500 calls of 4 each
        assert m["sampling_hours"] == pytest.approx(table1.estimate(a, b, 4, grid) / 3600)
        assert m["total_hours"] == pytest.approx(m["sampling_hours"] + res["feature_hours"])
    text = render({"machine": {"cpu": "x", "cpu_count": 2, "torch": "t", "torch_threads": 1}, "settings": {},
                   "started": "now", "seconds": 1, "method": "m", "targets": {}, "table1": [res]})  # fmt: skip
    assert "## 5. The paper's Table 1 on this machine" in text and "sweeps/paper-table1.yaml" in text
    assert "| ours |" in text and "(fit)" in text
