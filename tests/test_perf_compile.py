"""bench.perf.network's compile job: the compiling first call timed apart, from an empty inductor cache, and the
number of calls after which compiling pays for itself."""

from __future__ import annotations

import os

import pytest

from bench.perf import run as perf
from bench.perf.network import break_even, cold_compile_cache


def test_break_even_counts_the_calls_that_repay_the_compile() -> None:
    assert break_even(12.0, 0.5, 0.25) == 48  # 48 calls save 12 s
    assert break_even(12.1, 0.5, 0.25) == 49  # a part call is a whole one
    assert break_even(0.0, 0.5, 0.25) == 0
    assert break_even(12.0, 0.25, 0.25) is None and break_even(12.0, 0.2, 0.25) is None  # never pays off


def test_the_compile_job_compiles_inside_an_empty_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from bench.perf.models import RunSettings
    from bench.perf.network import compile_job

    seen = []

    def fake_compile(model, **kwargs):  # records where inductor would cache; runs eager (fast)
        seen.append(os.environ.get("TORCHINDUCTOR_CACHE_DIR", ""))
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    resets: list[int] = []
    monkeypatch.setattr(torch.compiler, "reset", lambda: resets.append(len(seen)))
    job = {"kind": "compile", "settings": RunSettings(device="cpu").to_dict(), "threads": 1, "preset": "tiny",
           "batch": 2, "eval_batch": 2, "reps": 1}  # fmt: skip
    res = compile_job(job)
    assert [r["what"] for r in res["rows"]] == ["train step", "evaluation"]
    assert seen and all("ddimbench-inductor-" in d and not os.path.exists(d) for d in seen)
    # The evaluation gets a compile of its own (after a reset), not the train step's module at a second batch
    # size, which dynamo would recompile with a dynamic batch.
    assert len(seen) == 2 and resets == [1]


def test_compile_is_timed_from_an_empty_inductor_cache(monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/warm")
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    with cold_compile_cache():
        inductor, triton = os.environ["TORCHINDUCTOR_CACHE_DIR"], os.environ["TRITON_CACHE_DIR"]
        assert "ddimbench-inductor-" in inductor and inductor != triton
        assert not os.path.exists(inductor)  # nothing cached yet: inductor creates it on its first compile
        folder = os.path.dirname(inductor)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/warm" and "TRITON_CACHE_DIR" not in os.environ
    assert not os.path.exists(folder)


@pytest.mark.slow  # inductor compiles the tiny UNet's train step and its evaluation
def test_compile_job_times_the_first_call_apart(tmp_path) -> None:
    cfg = perf.PerfConfig(out=str(tmp_path), device="cpu", quick=True, isolate=False, only=("compile",),
                          sample_preset="tiny")  # fmt: skip
    res = perf.run(cfg)
    (job,) = res["compile"]
    assert [r["what"] for r in job["rows"]] == ["train step", "evaluation"], job
    for r in job["rows"]:
        steady = r["times"]["compiled"]["wall_s"]
        assert r["first_call_s"] > steady and r["compile_s"] == pytest.approx(r["first_call_s"] - steady)
        assert r["speedup"] > 0 and len(r["times"]["compiled"]["wall_all"]) == 1  # the first call is not a repeat
        assert r["break_even_calls"] == break_even(r["compile_s"], r["times"]["eager"]["wall_s"], steady)
    assert "## 3. `torch.compile`" in (tmp_path / "README.md").read_text()
