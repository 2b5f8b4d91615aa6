"""``python -m bench.perf`` as a run: a failing job spares the others, partial results survive a kill, and the
command's exit code says whether every job ran."""

from __future__ import annotations

import json

import bench.perf.jobs as perf_jobs
import bench.perf.run as perf
from bench.perf.models import RunSettings


def test_a_failing_job_spares_the_others_and_the_run_exits_1(tmp_path, monkeypatch, capsys) -> None:
    """A job that raises (any exception, not only the expected kinds) is recorded and the next jobs still run;
    results.partial.json is written after every job, so a killed run keeps what it measured, and the last full
    run's results.json stays until the new one is complete."""
    real, seen = perf_jobs.run_job, []

    def flaky(job):
        seen.append(job["kind"])
        if job["kind"] == "sample" and not job.get("memory"):
            raise ValueError("boom\n  (a second line, as CUDA errors have)")
        if len(seen) == 2:  # the first job's results are already on disk, marked incomplete, beside the last run's
            partial = json.loads((tmp_path / perf.PARTIAL).read_text())
            assert partial["complete"] is False and partial["train"] and not partial["failed"]
            assert (tmp_path / "results.json").read_text() == "{}"
        return real(job)

    monkeypatch.setattr(perf_jobs, "run_job", flaky)
    (tmp_path / "results.json").write_text("{}")  # the last complete run's
    cfg = perf.PerfConfig(out=str(tmp_path), device="cpu", quick=True, isolate=False, only=("train", "sample"),
                          train_presets=("tiny",), sample_preset="tiny")  # fmt: skip
    res = perf.run(cfg)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(res)) and saved["complete"] is True and not (tmp_path / perf.PARTIAL).exists()
    assert saved["failed"] == ["sample tiny: ValueError: boom (a second line, as CUDA errors have)"]
    assert seen[-1] == "eval" and saved["eval"] and saved["train"]  # the jobs after the failed one ran
    assert "1 job(s) failed" in (tmp_path / "README.md").read_text()
    # The command exits 1 and names the failure when any job failed.
    monkeypatch.setattr(perf, "run", lambda cfg, log=None: res)
    assert perf.main(["--out", str(tmp_path), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "1 job(s) failed" in err and "ValueError: boom" in err


def test_a_job_past_its_time_limit_is_an_error_not_a_crash() -> None:
    job = {"kind": "train", "settings": RunSettings().to_dict(), "threads": 1, "preset": "tiny", "batch": 4,
           "memory": True, "models": ["ours"]}  # fmt: skip
    assert perf.run_in_subprocess(job, timeout=0.05) == {"error": "timed out after 0.05 s"}


def test_a_job_failing_in_its_subprocess_reports_its_own_error() -> None:
    """The parent reads the job's result line: the exception itself, not the traceback's last line."""
    job = {"kind": "nope", "settings": RunSettings().to_dict(), "threads": 1}
    assert perf.run_in_subprocess(job, timeout=300) == {"error": "DDIMError: unknown benchmark job kind 'nope'"}
