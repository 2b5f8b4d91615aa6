"""bench.perf.malloc: glibc malloc tuned against untuned, in pairs of fresh processes, and its report section."""

from __future__ import annotations

import sys

import pytest

import bench.perf.run as perf
from bench.perf import malloc
from bench.perf.models import RunSettings
from bench.perf.report import render

JOB = {"kind": "malloc", "settings": RunSettings().to_dict(), "threads": 1, "preset": "tiny", "eval_batch": 4,
       "sample_batch": 2, "train_batch": 4, "sample_steps": 2, "reps": 2}  # fmt: skip


def _side(tuned: bool, cpu: dict[str, float]) -> dict:
    return {
        "tuned": tuned,
        "calls": {k: {"cpu_s": v, "wall_s": v, "faults": 0 if tuned else 100} for k, v in cpu.items()},
    }


def test_pairs_alternate_their_order_and_ratios_are_untuned_over_tuned() -> None:
    calls: list[str] = []
    untuned_cpu = iter([{"eval": 2.0, "sample": 3.0, "train": 1.0}, {"eval": 4.0, "sample": 3.0, "train": 1.0},
                        {"eval": 3.0, "sample": 3.0, "train": 1.0}])  # fmt: skip

    def run(job, env):
        side = "untuned" if env == {"DDIM_MALLOC_TUNING": "0"} else "tuned"
        assert env in ({}, {"DDIM_MALLOC_TUNING": "0"}) and job is jobs
        calls.append(side)
        return _side(False, next(untuned_cpu)) if side == "untuned" else _side(True, dict.fromkeys(malloc.CALLS, 1.0))

    jobs = {**JOB, "pairs": 3}
    res = malloc.compare(jobs, run)
    assert calls == ["untuned", "tuned", "tuned", "untuned", "untuned", "tuned"]
    assert res["pairs"] == 3 and res["calls"]["eval"]["ratios"] == [2.0, 4.0, 3.0]
    assert res["calls"]["eval"]["speedup"] == 3.0 and res["calls"]["sample"]["speedup"] == 3.0
    assert res["calls"]["eval"]["untuned_faults"] == 100 and res["calls"]["eval"]["tuned_faults"] == 0
    text = render({"machine": {"cpu": "x", "cpu_count": 2, "torch": "t", "torch_threads": 1}, "settings": {},
                   "started": "now", "seconds": 1, "method": "m", "targets": {}, "malloc": [res]})  # fmt: skip
    assert "## 6. glibc malloc tuned" in text and "| 2.00 / 4.00 / 3.00 | **3.00×** | yes | 100 → 0 |" in text
    assert res["calls"]["train"]["pairs_agree"] is False  # every ratio 1.0: not faster in any pair


def test_nothing_to_compare_when_the_tuning_did_not_apply_and_a_failed_side_is_an_error() -> None:
    off = malloc.compare({**JOB, "pairs": 1}, lambda job, env: _side(False, dict.fromkeys(malloc.CALLS, 1.0)))
    assert off == {"skipped": malloc.NOT_TUNED, "preset": "tiny"}
    assert "Not measured: the tuned processes' malloc" in render(
        {"machine": {"cpu": "x", "cpu_count": 2, "torch": "t", "torch_threads": 1}, "settings": {}, "started": "now",
         "seconds": 1, "method": "m", "targets": {}, "malloc": [off]})  # fmt: skip
    failed = malloc.compare({**JOB, "pairs": 2}, lambda job, env: {"error": "exit code 1: boom"})
    assert failed == {"error": "untuned process: exit code 1: boom"}


def test_the_section_is_planned_on_the_cpu_only_by_default() -> None:
    cpu = perf.plan(perf.PerfConfig(device="cpu", quick=True), "cpu")
    assert [j["kind"] for j in cpu].count("malloc") == 1 and next(j for j in cpu if j["kind"] == "malloc")["pairs"] == 1
    assert "malloc" not in {j["kind"] for j in perf.plan(perf.PerfConfig(device="cpu", quick=True), "cuda:0")}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_pair_of_real_processes_one_tuned_one_not() -> None:
    """The real subprocesses: the untuned side's malloc is left alone, the tuned side's tuned; every call is timed
    and its page faults counted."""
    res = malloc.compare({**JOB, "pairs": 1}, perf.run_in_subprocess)
    assert "error" not in res and "skipped" not in res, res
    for name in malloc.CALLS:
        c = res["calls"][name]
        assert c["untuned_cpu_s"] > 0 and c["tuned_cpu_s"] > 0 and len(c["ratios"]) == 1, c
        assert c["untuned_faults"] is not None and c["tuned_faults"] is not None


def test_a_malformed_child_result_is_the_job_s_error_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perf, "run_in_subprocess", lambda job, env: {"tuned": env == {}})  # no "calls"
    res = perf.run_job_isolated({**JOB, "pairs": 1}, isolate=True)
    assert res["error"] == "KeyError: 'calls'"


def test_one_pair_says_nothing_about_agreement() -> None:
    sides = iter([_side(False, dict.fromkeys(malloc.CALLS, 2.0)), _side(True, dict.fromkeys(malloc.CALLS, 1.0))])
    res = malloc.compare({**JOB, "pairs": 1}, lambda job, env: next(sides))
    assert res["calls"]["eval"]["ratios"] == [2.0] and res["calls"]["eval"]["pairs_agree"] is None
