"""bench.sweep.runner: grids exactly once across worker processes on one SQLite store, killed workers
retried, failed cells recorded and retried, W&B offline and failing, results read back and reported, the
Pareto search, bad storage and a changed protocol refused.

A tiny checkpoint (2 training steps of the digits preset) keeps every cell well under a second; the
numbers are meaningless, the harness is what is tested. Offline, CPU only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from helpers import ROOT
from helpers.sweep import GRID, RUNNER, complete_cells, kill_mid_cell, spec_of, url
from optuna.trial import TrialState

from bench.report.build import make_report
from bench.report.write import warnings_of
from bench.store.record import columns
from bench.store.storage import open_storage
from bench.store.study import load_results
from bench.sweep.resolve import resolve_spec
from bench.sweep.runner import run_sweep
from ddim import runtime, sampling
from ddim.errors import DDIMError


# ----------------------------------------------------------------------------- exactly once, workers
@pytest.mark.slow
@pytest.mark.timeout(240)  # a rerun that never ends fails here, not at the suite's 600 s
def test_two_workers_every_cell_exactly_once(ckpt, cache, work):
    spec = spec_of(ckpt, cache, *GRID, "interpolation=false")
    summary = run_sweep(spec, workers=2, storage=url(work), wandb="disabled", progress=False, heartbeat=1)
    cells = complete_cells(url(work), "g")
    assert sorted(cells) == sorted(c.key for c in spec.cells())  # 4 complete, no duplicates
    assert summary.complete == 4 and summary.failed == 0 and len(summary.records) == 4
    done = optuna.load_study(study_name="g", storage=url(work)).get_trials(states=(TrialState.COMPLETE,))
    assert os.getpid() not in {t.user_attrs["pid"] for t in done}  # the cells ran in the worker processes
    # (a PRUNED trial is a duplicate pick of GridSampler that yielded before doing any work)
    # Rerunning the same command finishes only what is missing: nothing, not even a new trial.
    before = len(optuna.load_study(study_name="g", storage=url(work)).trials)
    again = run_sweep(spec, storage=url(work), wandb="disabled", progress=False, heartbeat=1)
    assert again.complete == 4 and len(optuna.load_study(study_name="g", storage=url(work)).trials) == before


@pytest.mark.timeout(240)  # a rerun that never ends fails here, not at the suite's 600 s
@pytest.mark.parametrize(
    "workers, sig", [(1, signal.SIGKILL), (2, signal.SIGKILL), (1, signal.SIGTERM), (2, signal.SIGTERM)]
)
@pytest.mark.slow
def test_killed_worker_cell_is_retried(ckpt, cache, work, workers, sig):
    tokens = [f"checkpoint={ckpt}", f"cache_dir={cache}", "name=k", "steps=8,9", "eta=0,1", "n=24", "batch=12",
              "interpolation=false"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, url(work), str(workers), *tokens], cwd=work, env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    killed = kill_mid_cell(url(work), "k", proc, sig)
    proc.wait(timeout=180)  # one worker: the whole sweep died; two: the survivor retries the cell
    spec = resolve_spec(tokens)
    if workers == 2:  # within the same command, whether the worker was killed or interrupted
        assert sorted(complete_cells(url(work), "k")) == sorted(c.key for c in spec.cells())
    summary = run_sweep(spec, storage=url(work), wandb="disabled", progress=False, heartbeat=1)
    cells = complete_cells(url(work), "k")
    assert sorted(cells) == sorted(c.key for c in spec.cells())  # still exactly 4 complete cells
    study = optuna.load_study(study_name="k", storage=url(work))
    assert study.trials[killed].state == TrialState.FAIL  # SIGKILL: declared dead via the heartbeat
    if sig == signal.SIGTERM:  # pre-emption: marked failed at once, like Ctrl-C
        assert "interrupted" in study.trials[killed].user_attrs["error"]
    records, meta, _ = load_results("k", url(work))
    assert len(records) == 4 and all(r.state == "COMPLETE" for r in records)  # the killed try is superseded
    assert meta["superseded_trials"] >= 1 and summary.complete == 4


def test_summary_counts_this_grids_cells_only(ckpt, cache, work):
    first = run_sweep(spec_of(ckpt, cache, "steps=2", "eta=0,1", "n=20", "batch=8", "interpolation=false", name="c"),
                      storage=url(work), wandb="disabled", progress=False, heartbeat=1)  # fmt: skip
    assert first.complete == 2 and first.total == 2
    # A later grid under the same name with one new cell: the summary speaks of that grid (1 cell), while the
    # store (and a report) keeps all three.
    spec = spec_of(ckpt, cache, "steps=3", "eta=0", "n=20", "batch=8", "interpolation=false", name="c")
    second = run_sweep(spec, storage=url(work), wandb="disabled", progress=False, heartbeat=1)
    assert second.complete == 1 and second.failed == 0 and len(second.records) == 3


def test_unwritable_artifacts_fail_before_the_study_exists(ckpt, cache, work):
    from dataclasses import replace

    blocker = work / "afile"
    blocker.write_text("a file")
    spec = replace(spec_of(ckpt, cache, "steps=2", "n=20", name="art"), artifacts=str(blocker / "sub"))
    with pytest.raises(DDIMError, match="artifacts=.* cannot be created"):
        run_sweep(spec, storage=url(work), wandb="disabled", progress=False, heartbeat=1)
    assert "art" not in optuna.study.get_all_study_names(open_storage(url(work)))


@pytest.mark.timeout(240)  # a rerun that never ends fails here, not at the suite's 600 s
def test_failed_cell_is_recorded_then_retried(ckpt, cache, work, monkeypatch):
    real = sampling.sample

    def broken(model, x, ab, ts, *, eta=0.0, **kw):
        if eta == 1.0:
            raise RuntimeError("boom at eta=1")
        return real(model, x, ab, ts, eta=eta, **kw)

    monkeypatch.setattr(sampling, "sample", broken)
    spec = spec_of(
        ckpt,
        cache,
        *GRID,
        name="f",
    )
    summary = run_sweep(spec, storage=url(work), wandb="disabled", progress=False, heartbeat=1)
    assert summary.complete == 2 and summary.failed == 2
    failed = [r for r in summary.records if r.state == "FAIL"]
    assert {r.cell.eta for r in failed} == {1.0} and all("RuntimeError: boom at eta=1" in r.error for r in failed)
    # A second run retries them and they fail again: still 2 failed cells (4 failed trials).
    second = run_sweep(spec, storage=url(work), wandb="disabled", progress=False, heartbeat=1)
    assert second.complete == 2 and second.failed == 2
    assert sum(r.state == "FAIL" for r in second.records) == 4
    out = make_report("f", storage=url(work), wandb="disabled")
    table = (out / "table.md").read_text(encoding="utf-8")
    assert "failed" in table and "boom at eta=1" in (out / "README.md").read_text(encoding="utf-8")
    # The next run retries only the failed cells.
    monkeypatch.setattr(sampling, "sample", real)
    again = run_sweep(spec, storage=url(work), wandb="disabled", progress=False, heartbeat=1)
    assert again.complete == 4 and again.failed == 0
    assert sorted(complete_cells(url(work), "f")) == sorted(c.key for c in spec.cells())


# ------------------------------------------------------------------------------------------- tracking
def test_offline_wandb_runs_hold_each_cells_config_and_scores(ckpt, cache, work):
    from bench.tracking.wandb_run import read_offline_run

    spec = spec_of(ckpt, cache, "steps=2", "eta=0", "n=20", "batch=8", "interpolation=false", name="w")
    run_sweep(spec, storage=url(work), wandb="offline", progress=False, heartbeat=1)
    runs = [read_offline_run(d) for d in sorted((work / spec.artifacts / "wandb").glob("offline-run-*"))]
    cell = next(r for r in runs if r["run"]["job_type"] == "sweep-cell")
    summary = next(r for r in runs if r["run"]["job_type"] == "sweep-summary")
    assert cell["run"]["group"] == "w" == summary["run"]["group"]
    assert cell["config"]["steps"] == 2 and cell["config"]["eta"] == 0.0 and cell["config"]["n"] == 20
    assert cell["config"]["checkpoint_sha256"] and cell["config"]["extractor"] == "classifier"
    (record,) = load_results("w", url(work))[0]
    assert cell["summary"]["fid"] == pytest.approx(record.scores.fid) and cell["history"][0]["nfe"] == 2
    # KID in W&B on the scale of the tables, results.csv and the terminal: ×10³, named so.
    assert "kid_mean" not in cell["summary"] and record.scores.kid_mean is not None
    assert cell["summary"]["kid_mean_x1e3"] == pytest.approx(record.scores.kid_mean * 1000)
    assert any("samples" in f for f in cell["files"]) and any("results" in f for f in summary["files"])
    assert "fid_vs_steps" in summary["charts"]  # the summary run's FID-vs-steps chart (tests/test_wandb_results.py)


def wandb_lines(capfd) -> list[str]:
    captured = capfd.readouterr()
    return [line for line in (captured.out + captured.err).splitlines() if "W&B" in line]


def test_wandb_failing_never_stops_the_sweep(ckpt, cache, work, monkeypatch, capfd):
    from bench.tracking import reach
    from bench.tracking import wandb_run as tracking

    def no_init(*a, **k):
        raise RuntimeError("W&B is down")

    class Exploding(tracking.NullTracker):
        def log(self, *a, **k):
            raise RuntimeError("log exploded")

        log_image = log_table = summary = log

    # No key (online is unavailable) and a fresh process-wide memory of fallbacks already reported.
    monkeypatch.setattr(reach, "api_key_configured", lambda: False)
    monkeypatch.setattr(tracking, "_fallback_warnings", set())
    monkeypatch.setattr(reach, "online_failures", {})
    tokens = ("eta=0,1", "n=20", "batch=8", "interpolation=false")
    capfd.readouterr()
    # README: "one warning, logs go offline to ./wandb (`wandb sync` later) ...": once for 2 cells + summary.
    spec = spec_of(ckpt, cache, "steps=2", *tokens, name="wo")
    assert run_sweep(spec, storage=url(work), wandb="online", progress=False, heartbeat=1).complete == 2
    (line,) = wandb_lines(capfd)
    assert line.startswith("warning: W&B") and "no W&B API key" in line and "logging offline to" in line
    assert "wandb sync" in line
    assert len(list((work / spec.artifacts / "wandb").glob("offline-run-*"))) == 3  # 2 cells + the summary
    # "... then disabled": offline fails too; still one warning, and every cell completes.
    monkeypatch.setattr(tracking, "_init_run", no_init)
    spec = spec_of(ckpt, cache, "steps=2", *tokens, name="wf")
    assert run_sweep(spec, storage=url(work), wandb="online", progress=False, heartbeat=1).complete == 2
    (line,) = wandb_lines(capfd)
    assert line.startswith("warning: W&B") and line.endswith("tracking disabled")
    assert "offline init failed: RuntimeError: W&B is down" in line
    # A tracker that raises on every call: one warning per W&B run (wandb_run.tracked), none repeated.
    monkeypatch.setattr(tracking, "make_tracker", lambda *a, **k: Exploding())
    spec = spec_of(ckpt, cache, "steps=3", *tokens, name="wf2")
    assert run_sweep(spec, storage=url(work), wandb="offline", progress=False, heartbeat=1).complete == 2
    lines = wandb_lines(capfd)
    assert len(lines) == 3 and all(x.startswith("warning: W&B: logging") and "log exploded" in x for x in lines)
    assert sum("the sweep summary" in x for x in lines) == 1
    assert all(sum(f"cell {c.label} failed" in x for x in lines) == 1 for c in spec.cells())


# -------------------------------------------------------------------------------------------- report
def test_results_read_back_from_the_store_report_the_same_bytes_twice(ckpt, cache, work):
    # inversion_n = 12 with batch = 8: the inversion MSE is summed over two batches
    spec = spec_of(ckpt, cache, *GRID, "sampler=ddim,sigma_hat", "inversion=true", "inversion_n=12", name="r")
    run_sweep(spec, storage=url(work), wandb="disabled", progress=False, command="ddimbench sweep ...", heartbeat=1)
    records, meta, extras = load_results("r", url(work))
    assert len(records) == 6  # 2 S × (η = 0, 1, σ̂)
    assert {(r.cell.sampler, r.cell.eta) for r in records} == {("ddim", 0.0), ("ddim", 1.0), ("sigma_hat", None)}
    for r in records:
        m, p = r.measured, r.measured.protocol
        assert m.nfe == r.cell.steps and m.n == 20 and m.wall_s > 0 and p.device == "cpu"
        assert p.extractor_sha256 and p.ref_sha256 and p.checkpoint_sha256 == meta["checkpoint_sha256"]
    assert meta["command"] == "ddimbench sweep ..." and meta["versions"]["optuna"] == optuna.__version__
    assert meta["ref_key"] == records[0].measured.protocol.ref_key and meta["seeds"] == "0-19"
    assert extras["interpolation"] == "extras/interpolation.png" and [x["steps"] for x in extras["inversion"]] == [2, 3]
    want = inversion_mse(spec, [2, 3])
    for row in extras["inversion"]:
        assert 0 <= row["mse"] <= 1 and row["mse"] == pytest.approx(want[row["steps"]], rel=1e-5)
    json.dumps([[columns(r) for r in records], meta, extras])  # JSON-able, straight from the store
    out = make_report("r", storage=url(work), wandb="disabled")
    assert out == Path("reports") / "r"
    table = (work / out / "table.md").read_text(encoding="utf-8")
    assert "| η = 0.0 |" in table and "| η = 1.0 |" in table and "| σ̂ |" in table and "S = 3" in table
    assert (work / out / "interpolation.png").is_file() and (work / out / "inversion.md").is_file()
    assert len(list((work / out / "grids").glob("*.png"))) == 6
    files = ("table.md", "table.tex", "results.csv", "manifest.json")
    first = {f: (work / out / f).read_bytes() for f in files}
    make_report("r", storage=url(work), wandb="disabled")  # again, from the same store: the same bytes
    assert first == {f: (work / out / f).read_bytes() for f in files}


def inversion_mse(spec, steps: list[int]) -> dict[int, float]:
    """Table 2's reconstruction error, recomputed here: the first inversion_n test images, encoded with
    η = 0 DDIM over S steps and decoded with η = 0; per-dimension MSE of pixels in [0, 1]. One batch."""
    from ddim import schedules
    from ddim.checkpoint import load_checkpoint
    from ddim.data import load_dataset

    ck = load_checkpoint(spec.checkpoint)
    model, alpha_bar = ck.build_model("cpu"), ck.alpha_bar()
    x0 = load_dataset(spec.dataset, spec.data_root, "test", spec.resolution).images[: spec.inversion_n]
    assert len(x0) == spec.inversion_n
    out = {}
    for s in steps:
        ts = schedules.timesteps(s, ck.diffusion.T, "uniform")
        rec = sampling.sample(model, sampling.invert(model, x0, alpha_bar, ts), alpha_bar, ts, eta=0.0)
        to01 = lambda x: ((x.double() + 1) / 2).clamp(0, 1)  # noqa: E731
        out[s] = float((to01(rec) - to01(x0)).square().mean())
    return out


def test_a_search_flags_exactly_its_non_dominated_trials_as_the_front(ckpt, cache, work):
    spec = spec_of(ckpt, cache, "steps=2..6", "eta=0..1", "n=20", "batch=10", "trials=3", "interpolation=false",
                   name="p", search="pareto")  # fmt: skip
    summary = run_sweep(spec, storage=url(work), wandb="disabled", progress=False, heartbeat=1)
    assert summary.complete == 3
    records = load_results("p", url(work))[0]
    assert all(2 <= r.cell.steps <= 6 and 0 <= r.cell.eta <= 1 for r in records)
    # The flagged front is exactly the non-dominated records in (FID, NFE), both minimised (brute force).
    done = [(r.number, r.scores.fid, r.measured.nfe) for r in records if r.state == "COMPLETE"]
    assert len(done) == 3 and all(isinstance(r.pareto, bool) for r in records)

    def dominates(p: tuple, q: tuple) -> bool:
        return p[1] <= q[1] and p[2] <= q[2] and p[1:] != q[1:]

    front = {r[0] for r in done if not any(dominates(o, r) for o in done)}
    assert front and {r.number for r in records if r.pareto} == front


# --------------------------------------------------------------------------------------- bad inputs
def test_unreachable_storage_and_unknown_sweep_are_one_line_errors(ckpt, cache, work):
    spec = spec_of(ckpt, cache, *GRID)
    for bad in ("postgresql+psycopg2://u:secret@127.0.0.1:1/db", f"sqlite:///{work}/no/such/dir/x.db", "nonsense"):
        with pytest.raises(DDIMError) as err:
            run_sweep(spec, storage=bad, wandb="disabled", progress=False)
        assert "storage" in str(err.value) and "\n" not in str(err.value) and "secret" not in str(err.value)
    with pytest.raises(DDIMError, match=r"no sweep named 'nope': the store .* does not exist"):
        load_results("nope", url(work))  # and no empty database file is left behind
    assert not (work / "sweeps.db").exists()
    open_storage(url(work))
    with pytest.raises(DDIMError, match=r"no sweep named 'nope' in sqlite:///.* run `ddimbench sweep name=nope"):
        make_report("nope", storage=url(work))


def test_bf16_is_recorded_and_never_mixed_with_float32(ckpt, cache, work, capsys, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda cpuinfo=None: False)  # a CPU without bfloat16 instructions
    common = ("steps=2", "n=20", "interpolation=false")
    run_sweep(spec_of(ckpt, cache, *common, "bf16=true", name="b"), storage=url(work), wandb="disabled",
              progress=False, heartbeat=1)  # fmt: skip
    assert capsys.readouterr().err.count("warning: bf16 on this CPU, which has no bfloat16 instructions") == 1
    run_sweep(spec_of(ckpt, cache, *common, name="f"), storage=url(work), wandb="disabled", progress=False, heartbeat=1)
    assert "bfloat16" not in capsys.readouterr().err  # float32: nothing to say
    (b,), meta_b, _ = load_results("b", url(work))
    (f,), meta_f, _ = load_results("f", url(work))
    assert b.measured.protocol.precision == meta_b["precision"] == "bf16"
    assert f.measured.protocol.precision is None and "precision" not in meta_f  # float32: as stores always were
    assert b.scores.fid is not None and b.scores.fid != f.scores.fid  # other numbers, same seeds
    bf16_note = "the network ran under bfloat16 autocast"
    assert any(bf16_note in w for w in warnings_of([b], meta_b, None))  # the report says so
    assert not any(bf16_note in w for w in warnings_of([f], meta_f, None))
    for name, other in (("b", ()), ("f", ("bf16=true",))):  # either way round: refused, nothing added
        with pytest.raises(DDIMError, match="was run with bf16=(true|false), not bf16=(false|true);"):
            run_sweep(spec_of(ckpt, cache, *common, *other, name=name), storage=url(work), wandb="disabled")
        assert len(load_results(name, url(work))[0]) == 1
        assert "bfloat16" not in capsys.readouterr().err  # a refused run only refuses


def test_same_name_other_protocol_is_refused(ckpt, cache, work):
    run_sweep(spec_of(ckpt, cache, "steps=2", "n=20", "interpolation=false", name="x"), storage=url(work),
              wandb="disabled", progress=False, heartbeat=1)  # fmt: skip
    with pytest.raises(DDIMError, match="was run with n=20, not n=30"):
        run_sweep(spec_of(ckpt, cache, "steps=2", "n=30", name="x"), storage=url(work), wandb="disabled")
