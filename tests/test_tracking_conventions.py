"""bench.tracking.conventions and the W&B layout it gives train, sweep and report (issue 12, items 1-2): flags beat
W&B's variables, one line says where offline runs go, reruns update their runs, and lineage runs from the
checkpoint through the cells to the report. Every check reads the offline runs back."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from helpers.tracking import Warnings, fresh_fallback_state  # noqa: F401 (an autouse fixture)

from bench.cli import main
from bench.tracking import artifacts, conventions
from bench.tracking import wandb_run as tracking
from bench.tracking.conventions import WandbOptions

TINY = ["--dataset", "digits", "--ch", "8", "--ch-mult", "1,2", "--num-res-blocks", "1", "--attn-resolutions", "",
        "--num-groups", "4", "--batch-size", "8", "--save-every", "2", "--log-every", "2", "--sample-every", "0",
        "--device", "cpu", "--num-workers", "0", "--wandb", "offline"]  # fmt: skip
ENV = ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_TAGS", "WANDB_DIR")


@pytest.fixture
def clean_env(monkeypatch):
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def offline_runs(root: Path) -> list[dict]:
    """Every offline run under ``root``, read back, oldest first."""
    folders = sorted(root.rglob("offline-run-*"), key=lambda p: p.name)
    return [tracking.read_offline_run(f) for f in folders if f.is_dir()]


# -- options ----------------------------------------------------------------------------------------


def test_flags_beat_the_environment_and_the_environment_beats_the_defaults(clean_env):
    assert (WandbOptions().project, WandbOptions().entity, WandbOptions().tags) == ("ddimbench", None, None)
    clean_env.setenv("WANDB_PROJECT", "env-p")
    clean_env.setenv("WANDB_ENTITY", "env-e")
    clean_env.setenv("WANDB_TAGS", "a, b")
    clean_env.setenv("WANDB_MODE", "disabled")
    env = WandbOptions()
    assert (env.project, env.entity, env.tags, env.mode) == ("env-p", "env-e", ["a", "b"], "disabled")
    flags = WandbOptions(wandb="offline", wandb_project="flag-p", wandb_entity="flag-e", wandb_tags="b,c")
    assert (flags.project, flags.entity, flags.tags, flags.mode) == ("flag-p", "flag-e", ["a", "b", "c"], "offline")
    clean_env.setenv("WANDB_MODE", "dryrun")  # wandb's old name for offline
    assert WandbOptions().mode == "offline"
    clean_env.setenv("WANDB_MODE", "bogus")
    assert WandbOptions().mode is None  # the key decides (and check_mode_env warns)


def test_an_offline_run_records_the_flags_not_the_environment(tmp_path, clean_env):
    clean_env.setenv("WANDB_PROJECT", "env-p")
    clean_env.setenv("WANDB_ENTITY", "env-e")
    clean_env.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    opts = WandbOptions(wandb="offline", wandb_project="flag-p", wandb_entity="flag-e", wandb_tags="t1")
    notes: list[str] = []
    tracker = tracking.make_tracker(opts, dir=tmp_path / "beside", warn=Warnings(), note=notes.append, tags=["own"])
    tracker.log({"a": 1.0}, step=0)
    tracker.finish()
    assert tracker.run_dir.parent == tmp_path / "elsewhere" / "wandb"  # WANDB_DIR wins over the default folder
    run = tracking.read_offline_run(tracker.run_dir)["run"]
    assert (run["project"], run["entity"], run["tags"]) == ("flag-p", "flag-e", ["t1", "own"])
    without_flags = tracking.make_tracker("offline", dir=tmp_path, warn=Warnings(), note=notes.append)
    without_flags.log({"a": 1.0}, step=0)
    without_flags.finish()
    run = tracking.read_offline_run(without_flags.run_dir)["run"]
    assert (run["project"], run["entity"]) == ("env-p", "env-e")


def test_the_offline_folder_is_named_once_with_its_sync_command(tmp_path, no_credentials, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the mode is decided by the key: none here
    notes: list[str] = []
    trackers = [tracking.make_tracker(None, dir=tmp_path, warn=Warnings(), note=notes.append) for _ in range(3)]
    for t in trackers:
        t.finish()
    assert [t.mode for t in trackers] == ["offline"] * 3
    (line,) = notes
    assert "no W&B API key" in line and f"wandb sync {tmp_path / 'wandb'}" in line


def test_the_run_id_file_is_untrusted(tmp_path):
    assert conventions.read_run_id(tmp_path) is None
    conventions.write_run_id(tmp_path, "abc123def456")
    assert conventions.read_run_id(tmp_path) == "abc123def456"
    for junk in ("../../etc", "ABC", "a" * 200, "abc 123", ""):
        (tmp_path / conventions.RUN_ID_FILE).write_text(junk)
        assert conventions.read_run_id(tmp_path) is None, junk


def test_run_ids_are_deterministic_and_distinct():
    one = conventions.run_id("p", None, "sweep-cell", "g", "a")
    assert one == conventions.run_id("p", None, "sweep-cell", "g", "a")
    keys = [("q", None, "sweep-cell", "g", "a"), ("p", "e", "sweep-cell", "g", "a"), ("p", None, "sweep-summary", "g"),
            ("p", None, "report", "g")]  # fmt: skip
    others = {conventions.run_id(*k) for k in keys}
    assert one not in others and len(others) == 4


def test_artifact_mode_decides_upload_by_size(tmp_path, monkeypatch):
    small = tmp_path / "small.pt"
    small.write_bytes(b"x" * 10)
    assert conventions.upload(small, "auto") and conventions.upload(small, "upload")
    assert not conventions.upload(small, "reference")
    monkeypatch.setattr(conventions, "UPLOAD_LIMIT_BYTES", 5)
    assert not conventions.upload(small, "auto")


def test_logging_an_artifact_never_holds_up_the_caller_and_a_failure_is_one_warning(tmp_path, monkeypatch):
    """A big checkpoint's hashing and copying runs in the background; finish() waits for it; a failed artifact
    costs one warning and the run keeps logging."""
    release, real = threading.Event(), artifacts.build

    def slow_build(*args, **kwargs):
        assert release.wait(60), "log_artifact waited for the artifact to be built"
        if args[1] == "broken":
            raise OSError("checkpoint vanished")
        return real(*args, **kwargs)

    monkeypatch.setattr(artifacts, "build", slow_build)
    ckpt = tmp_path / "step-0000002.pt"
    ckpt.write_bytes(b"w" * 4096)
    warnings = Warnings()
    tracker = tracking.make_tracker("offline", dir=tmp_path, warn=warnings, note=lambda line: None)
    tracker.log_artifact("broken", "model", [ckpt], True)
    tracker.log_artifact("model-run", "model", [ckpt], True, aliases=["step-2", "latest"])
    returned_first = not release.is_set()
    release.set()
    tracker.log({"loss": 1.0}, step=1)
    tracker.finish()
    assert returned_first
    run = tracking.read_offline_run(tracker.run_dir)
    assert [a["name"] for a in run["artifacts"]["logged"]] == ["model-run"]
    assert run["history"] == [{"step": 1, "loss": 1.0}]
    assert len(warnings) == 1 and "checkpoint vanished" in warnings[0], warnings


def test_a_missing_artifact_file_costs_the_link_not_the_run(tmp_path):
    warnings = Warnings()
    tracker = tracking.make_tracker("offline", dir=tmp_path, warn=warnings, note=lambda line: None)
    tracker.use_artifact("model-gone", "model", [tmp_path / "gone.pt"])
    tracker.log({"fid": 3.0}, step=0)
    tracker.finish()
    run = tracking.read_offline_run(tracker.run_dir)
    assert run["artifacts"]["used"] == [] and run["history"] == [{"step": 0, "fid": 3.0}]
    assert len(warnings) == 1 and "model-gone" in warnings[0], warnings


def test_the_train_command_takes_the_wandb_flags_over_the_environment(work, clean_env):
    clean_env.setenv("WANDB_PROJECT", "env-p")
    clean_env.setenv("WANDB_TAGS", "env-t")
    argv = ["train", "--run-dir", "run", "--max-steps", "1", *TINY, "--wandb-project", "flag-p", "--wandb-tags", "a,b",
            "--wandb-artifacts", "reference"]  # fmt: skip
    assert main(argv) == 0
    (run,) = offline_runs(work / "run" / "wandb")
    assert run["run"]["project"] == "flag-p" and run["run"]["tags"] == ["env-t", "a", "b"]
    (model,) = run["artifacts"]["logged"]
    assert model["files"] == {"step-0000001.pt": (work / "run" / "checkpoints" / "step-0000001.pt").as_uri()}


# -- the layout, end to end -------------------------------------------------------------------------


def test_train_sweep_report_layout_and_lineage(work, cache, clean_env, capsys):
    clean_env.setenv("WANDB_PROJECT", "x")

    # train, then resume: the same W&B run, a model artifact version per checkpoint.
    assert main(["train", "--run-dir", "run", "--max-steps", "2", *TINY]) == 0
    run_id = conventions.read_run_id(work / "run")
    assert run_id and main(["train", "--run-dir", "run", "--max-steps", "4", "--resume", *TINY]) == 0
    capsys.readouterr()
    trains = offline_runs(work / "run" / "wandb")
    assert len(trains) == 2 and {t["run"]["id"] for t in trains} == {run_id}
    first, resumed = trains
    assert first["config"]["model"]["ch"] == 8 and first["config"]["model"]["ch_mult"] == [1, 2]
    assert first["config"]["model"]["resolution"] == 16 and None not in first["config"]["model"].values()
    assert (first["config"]["preset"], first["config"]["resolution"], first["config"]["dropout"]) == ("digits", 16, 0.0)
    assert isinstance(first["summary"]["loss"], dict) and "min" in first["summary"]["loss"]
    logged = [a for t in trains for a in t["artifacts"]["logged"]]
    assert [(a["name"], a["type"]) for a in logged] == [("model-run", "model")] * 2
    assert [sorted(a["aliases"]) for a in logged] == [["latest", "step-2"], ["latest", "step-4"]]
    newest = logged[-1]

    # a 2x2 sweep on the newest checkpoint: four cell runs, each using that model version and the reference stats.
    store = ["--storage", f"sqlite:///{work / 'sweeps.db'}"]  # absolute: the process caches storages by URL
    sweep = ["sweep", "checkpoint=run", f"cache_dir={cache}", "name=lin", "steps=2,3", "eta=0,1", "n=20", "batch=10",
             "interpolation=false", "--wandb", "offline", *store]  # fmt: skip
    assert main(sweep) == 0
    err = capsys.readouterr().err
    assert err.count("offline runs go to") == 1 and err.count("wandb sync") == 1, err
    sweeps = work / "ddimbench-sweeps" / "lin"
    runs = offline_runs(sweeps)
    cells = [r for r in runs if r["run"]["job_type"] == "sweep-cell"]
    assert len(cells) == 4 and len({c["run"]["id"] for c in cells}) == 4
    for cell in cells:
        used = {a["type"]: a for a in cell["artifacts"]["used"]}
        assert (used["model"]["name"], used["model"]["digest"]) == (newest["name"], newest["digest"])
        assert used["reference-stats"]["name"] == "reference-digits-classifier"
        assert [a["type"] for a in cell["artifacts"]["logged"]] == ["samples"]
    assert len({c["artifacts"]["used"][1]["digest"] for c in cells}) == 1  # one reference-stats version

    # the report uses every cell's grid and logs its folder; reruns add no run id.
    assert main(["report", "lin", "--wandb", "offline", *store]) == 0
    ids = {r["run"]["id"] for r in offline_runs(sweeps)}
    assert main(sweep) == 0 and main(["report", "lin", "--wandb", "offline", *store]) == 0
    everything = offline_runs(work)
    assert {r["run"]["id"] for r in offline_runs(sweeps)} == ids
    assert {r["run"]["project"] for r in everything} == {"x"}
    (report, *_) = [r for r in everything if r["run"]["job_type"] == "report"]
    grids = {a["digest"] for c in cells for a in c["artifacts"]["logged"]}
    assert {a["digest"] for a in report["artifacts"]["used"]} == grids and len(grids) == 4
    mine = [(a["name"], a["type"]) for a in report["artifacts"]["logged"] if a["type"] != "run_table"]  # W&B's table
    assert mine == [("report-lin", "report")]
    assert report["run"]["group"] == "lin" and report["run"]["name"] == "lin-report"


@pytest.mark.slow
def test_worker_processes_take_the_options_and_leave_the_offline_line_to_the_parent(ckpt, cache, work, clean_env,
                                                                                   capfd):  # fmt: skip
    argv = ["sweep", f"checkpoint={ckpt}", f"cache_dir={cache}", "name=w2", "steps=2,3", "n=20", "batch=10",
            "interpolation=false", "--workers", "2", "--wandb", "offline", "--wandb-project", "pw",
            "--wandb-tags", "t", "--storage", f"sqlite:///{work / 'sweeps.db'}"]  # fmt: skip
    assert main(argv) == 0
    err = capfd.readouterr().err
    assert err.count("offline runs go to") == 1, err
    runs = offline_runs(work / "ddimbench-sweeps" / "w2")
    assert sorted(r["run"]["job_type"] for r in runs) == ["sweep-cell", "sweep-cell", "sweep-summary"]
    assert {(r["run"]["project"], tuple(r["run"]["tags"])) for r in runs} == {("pw", ("t",))}
    assert all(r["artifacts"]["used"] for r in runs if r["run"]["job_type"] == "sweep-cell")


@pytest.mark.parametrize("names", [["digits-demo"], ["digits-demo", "digits-seed1", "digits-seed2"], ["a" * 100],
                                   ["b" * 60, "c" * 60]])  # fmt: skip
def test_report_artifact_name_is_one_wandb_accepts(names):
    """A combined report's folder joins its sweeps with ``+``, which W&B refuses in an artifact name."""
    import wandb

    from bench.tracking.conventions import report_artifact, samples_artifact

    name = report_artifact(names)
    assert wandb.Artifact(name, "report").name == name and all(n[:40] in name for n in names)
    assert report_artifact([*names, "x"]) != name  # a longer combination is another name, even when cut
    samples = samples_artifact(names[0], "uniform_ddim_eta0.5_S100_b12")  # a 100-character sweep's grid
    assert wandb.Artifact(samples, "samples").name == samples


def test_report_uses_no_grid_the_store_names_outside_the_sweep_folder(tmp_path):
    """A combined report hands use_grids the store's records unfiltered: absolute and ``..`` grids are skipped."""
    from types import SimpleNamespace

    from PIL import Image

    from bench.tracking.report_run import use_grids

    root, outside = tmp_path / "sweep", tmp_path / "secret.png"
    (root / "cells").mkdir(parents=True)
    Image.new("L", (8, 8)).save(root / "cells" / "ok.png")
    Image.new("L", (8, 8)).save(outside)
    used: list = []
    tracker = SimpleNamespace(use_artifact=lambda name, kind, paths: used.append((name, paths)))
    records = [SimpleNamespace(measurement=SimpleNamespace(grid=g), cell=SimpleNamespace(slug=s))
               for g, s in (("cells/ok.png", "a"), (str(outside), "b"), ("../secret.png", "c"))]  # fmt: skip
    use_grids(tracker, "sw", root, records)
    assert used == [("samples-sw-a", [(root / "cells" / "ok.png").resolve()])]


def test_artifact_names_from_any_run_dir_are_ones_wandb_accepts():
    import wandb

    names = [conventions.model_artifact(f"/x/{run}/checkpoints/step-1.pt")
             for run in ("run-1", "my run", "my_run", "café", "cafe", "r\x1b[2J", "r" * 200)]  # fmt: skip
    assert names[0] == "model-run-1" and names[2] == "model-my_run"  # already valid: unchanged
    assert len(set(names)) == len(names), names  # "my run" and "my_run" stay distinct
    for name in names:
        wandb.Artifact(name, "model")  # raises on a name W&B rejects
        assert len(name) <= conventions.MAX_ARTIFACT_NAME


def test_resume_with_an_unusable_stored_run_id_warns_once_and_starts_a_new_run(work, cache, clean_env, capsys):
    assert main(["train", "--run-dir", "run", "--max-steps", "2", *TINY]) == 0
    (work / "run" / conventions.RUN_ID_FILE).write_text("../../etc/x\x1b[2J\n")
    capsys.readouterr()
    assert main(["train", "--run-dir", "run", "--max-steps", "4", "--resume", *TINY]) == 0
    err = capsys.readouterr().err
    assert err.count("unusable") == 1 and "\x1b" not in err and "a new W&B run starts" in err, err
    new_id = conventions.read_run_id(work / "run")
    assert new_id and len({t["run"]["id"] for t in offline_runs(work / "run" / "wandb")}) == 2
