"""Sample grids in the Optuna artifact store (bench.store.artifacts) and ``ddimbench dashboard``
(bench.report.dashboard) without a browser: uploads, the report's fallback to the store, confinement of
what the store returns, the server's errors, URL and Ctrl-C. The browser checks are in test_browser.py.
Tiny sweeps on a SQLite store, offline, CPU only."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import socket
import urllib.request
from pathlib import Path

import optuna
import pytest
from helpers.dashboard import chromium, dashboard, start
from helpers.sweep import spec_of, url
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState

from bench.cli import main
from bench.report.build import make_report
from bench.store.artifacts import ENV, fetch_missing, store_path
from bench.store.storage import open_storage
from bench.store.study import load_results
from bench.sweep.runner import run_sweep
from ddim.errors import DDIMError

FAST = ["eta=0", "n=20", "batch=10", "interpolation=false"]


def sweep(ckpt, cache, work: Path, name: str, *tokens: str):
    spec = spec_of(ckpt, cache, *FAST, *(tokens or ["steps=2"]), name=name)
    return run_sweep(spec, storage=url(work), wandb="disabled", progress=False, heartbeat=1), spec


def test_each_cell_uploads_its_grid_and_strip_to_its_trial(ckpt, cache, work):
    summary, spec = sweep(ckpt, cache, work, "up", "steps=2,3")
    assert summary.complete == 2
    root = Path(spec.artifacts)
    study = optuna.load_study(study_name="up", storage=open_storage(url(work)))
    store = optuna.artifacts.FileSystemArtifactStore(store_path(root))
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        result = t.user_attrs["result"]
        metas = {m.filename: m for m in get_all_artifact_meta(t, storage=open_storage(url(work)))}
        assert set(metas) == {Path(result["grid"]).name, Path(result["strip"]).name}
        for key in ("grid", "strip"):
            meta = metas[Path(result[key]).name]
            assert meta.mimetype == "image/png"
            with store.open_reader(meta.artifact_id) as f:
                assert f.read() == (root / result[key]).read_bytes()


def test_report_made_elsewhere_fetches_grids_from_a_shared_store(ckpt, cache, work, monkeypatch, capsys):
    shared = work / "shared-store"
    monkeypatch.setenv(ENV, str(shared))
    _, spec = sweep(ckpt, cache, work, "far", "steps=2,3")
    made_here = {p.name: p.read_bytes() for p in (work / spec.artifacts / "cells").glob("*.png")}
    assert len(made_here) == 4 and len(list(shared.iterdir())) == 4
    # Another machine: the same database, the shared store, none of this machine's files.
    elsewhere = work / "other-machine"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = make_report("far", storage=url(work), wandb="disabled")
    assert "are not PNG files under" not in capsys.readouterr().err  # nothing left out
    grids = sorted((elsewhere / out / "grids").glob("*.png"))
    assert len(grids) == 2
    assert {g.read_bytes() for g in grids} == {v for k, v in made_here.items() if not k.endswith("-strip.png")}
    assert (elsewhere / out / "consistency.png").is_file()  # from the fetched strips
    # Without the store the grids are left out with the warning, as before.
    shutil.rmtree(elsewhere / spec.artifacts)
    monkeypatch.setenv(ENV, str(work / "empty-store"))
    make_report("far", storage=url(work), out="again", wandb="disabled")
    assert "4 sample image(s) of 'far' are not PNG files under" in capsys.readouterr().err
    assert not (elsewhere / "again" / "grids").exists()


def test_default_store_lives_in_the_artifacts_folder_and_refills_it(ckpt, cache, work):
    _, spec = sweep(ckpt, cache, work, "here")
    root = Path(spec.artifacts)
    assert store_path(root) == root / "optuna-artifacts" and len(list(store_path(root).iterdir())) == 2
    cells = {p.name: p.read_bytes() for p in (root / "cells").iterdir()}
    shutil.rmtree(root / "cells")
    records, _, _ = load_results("here", url(work))
    assert fetch_missing("here", url(work), records, root) == 2
    assert {p.name: p.read_bytes() for p in (root / "cells").iterdir()} == cells
    assert fetch_missing("here", url(work), records, root) == 0  # nothing missing any more


def test_what_the_store_returns_is_confined_and_must_be_a_png(ckpt, cache, work):
    _, spec = sweep(ckpt, cache, work, "conf")
    root = Path(spec.artifacts)
    records, _, _ = load_results("conf", url(work))
    (rec,) = records
    # A record naming a path outside the artifacts folder is never written, whatever the store holds.
    grid = Path(rec.measured.grid).name
    evil = [
        dataclasses.replace(rec, measurement=dataclasses.replace(rec.measured, grid=f"../{grid}", strip="/tmp/x.png"))
    ]
    assert fetch_missing("conf", url(work), evil, root) == 0
    assert not (root.parent / grid).exists()
    # An artifact that is not a PNG is not taken.
    store = optuna.artifacts.FileSystemArtifactStore(store_path(root))
    for p in store_path(root).iterdir():
        p.write_bytes(b"<script>not an image</script>")
    shutil.rmtree(root / "cells")
    assert fetch_missing("conf", url(work), records, root, store) == 0
    assert not (root / "cells").exists()


def test_a_failed_upload_is_a_warning_and_the_cell_is_measured(ckpt, cache, work, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("bench.sweep.loop.upload_images", broken)
    summary, _ = sweep(ckpt, cache, work, "full")
    assert summary.complete == 1 and summary.failed == 0
    assert "its grid was not put in the artifact store (OSError" in capsys.readouterr().err


def test_an_unwritable_artifact_store_is_refused_before_the_sweep(ckpt, cache, work, monkeypatch):
    (work / "a-file").write_text("x")
    monkeypatch.setenv(ENV, str(work / "a-file" / "store"))
    with pytest.raises(DDIMError, match=f"artifact store .* cannot be created .*set {ENV} to a writable folder"):
        sweep(ckpt, cache, work, "nostore")
    assert "nostore" not in optuna.get_all_study_names(open_storage(url(work)))


# ------------------------------------------------------------------------------------------ the server
def test_dashboard_bad_input_is_one_line_exit_2(ckpt, cache, work, capsys):
    sweep(ckpt, cache, work, "known")
    cases = [
        (["dashboard", "nope", "--storage", url(work)], "no sweep named 'nope'"),
        (["dashboard", "known"], "no sweep named 'known': the store ddimbench-sweeps.db does not exist"),
        (["dashboard", "known", "--storage", "postgresql://u@127.0.0.1:9/db"], "cannot open sweep storage"),
    ]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases.append((["dashboard", "known", "--storage", url(work), "--port", str(port)],
                      f"cannot serve on 127.0.0.1:{port}"))  # fmt: skip
        for argv, words in cases:
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_the_dashboard_changes_nothing_in_the_store(ckpt, cache, work):
    """optuna-dashboard has no login: served with --host 0.0.0.0, anyone on the network could delete the sweep, tell
    its trials or upload artifacts. Every request but a read is answered 405 and never reaches it."""
    import io
    from wsgiref.util import setup_testing_defaults

    from bench.report.dashboard import dashboard_app

    sweep(ckpt, cache, work, "kept")
    app, study_id, _ = dashboard_app("kept", url(work))
    trial_id = open_storage(url(work)).get_all_trials(study_id)[0]._trial_id

    def call(method: str, path: str, body: bytes = b"") -> tuple[str, bytes]:
        env = {"REQUEST_METHOD": method, "PATH_INFO": path, "CONTENT_LENGTH": str(len(body)),
               "CONTENT_TYPE": "application/json", "wsgi.input": io.BytesIO(body)}  # fmt: skip
        setup_testing_defaults(env)
        got: list[str] = []
        out = b"".join(app(env, lambda status, headers, exc_info=None: got.append(status)))
        return got[0], out

    before = [(t.state, t.user_attrs) for t in optuna.load_study(study_name="kept", storage=url(work)).trials]
    status, body = call("GET", "/api/studies")
    assert status.startswith("200") and b'"kept"' in body
    for method, path, body in [("DELETE", f"/api/studies/{study_id}", b""),
                               ("POST", f"/api/studies/{study_id}/rename", b'{"study_name": "gone"}'),
                               ("POST", f"/api/trials/{trial_id}/user-attrs", b'{"user_attrs": {"fid": 0}}'),
                               ("PUT", f"/api/studies/{study_id}/note", b'{"version": 1, "body": "x"}'),
                               ("POST", "/incompatible-rdb-schema", b"")]:  # fmt: skip
        status, _ = call(method, path, body)
        assert status.startswith("405"), (method, path, status)
    study = optuna.load_study(study_name="kept", storage=url(work))
    assert [(t.state, t.user_attrs) for t in study.trials] == before


def test_dashboard_serves_the_sweep_and_stops_on_ctrl_c(ckpt, cache, work):
    _, spec = sweep(ckpt, cache, work, "served", "steps=2,3")
    with dashboard(work, "served", "--storage", url(work), "--port", "0") as board:
        page = start(board)
        base, study_id = page.split("/dashboard/studies/")
        with urllib.request.urlopen(f"{base}/api/studies/{study_id}?after=0", timeout=30) as r:
            detail = json.load(r)
        trials = [t for t in detail["trials"] if t["state"] == "Complete"]
        got = {(p["name"], p["param_external_value"], p["param_external_pytyp"]) for t in trials for p in t["params"]}
        integer, real = "<class 'int'>", "<class 'float'>"
        assert {("steps", "2", integer), ("steps", "3", integer), ("eta", "0.0", real)} <= got
        assert all(t["values"] and isinstance(t["values"][0], float) for t in trials)  # the FID
        # The grid of each trial, served from the artifact store, is the file the sweep wrote.
        grids = {Path(g).name: (Path(spec.artifacts) / g).read_bytes() for g in (r.measured.grid for r in
                 load_results("served", url(work))[0])}  # fmt: skip
        for t in trials:
            art = next(a for a in t["artifacts"] if a["filename"] in grids)
            with urllib.request.urlopen(f"{base}/artifacts/{study_id}/{t['trial_id']}/{art['artifact_id']}",
                                        timeout=30) as r:  # fmt: skip
                assert r.read() == grids[art["filename"]]
        assert board.stop(signal.SIGINT) == 130
    assert board.seen[-1] == "dashboard stopped" and not any("Traceback" in line for line in board.seen), board.seen


def test_a_missing_chromium_fails_in_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium is not installed"):
        chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        chromium()
