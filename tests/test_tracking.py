"""bench.tracking.wandb_run: offline runs round-trip through our .wandb reader; fallbacks are quick and quiet."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers.tracking import Warnings, fresh_fallback_state  # noqa: F401 (an autouse fixture)

from bench.tracking import offline_log as tracking_log
from bench.tracking import reach
from bench.tracking import wandb_run as tracking
from bench.tracking.tracker import LazyTracker
from ddim.errors import DDIMError


def _run(tmp_path: Path, **kwargs) -> tracking.Tracker:
    warnings = kwargs.pop("warn", Warnings())
    tracker = tracking.make_tracker("offline", dir=tmp_path, warn=warnings, **kwargs)
    assert tracker.mode == "offline" and not warnings
    return tracker


def test_offline_round_trip(tmp_path):
    png = tmp_path / "grid.png"
    from PIL import Image

    Image.fromarray(np.full((6, 5, 3), 200, np.uint8)).save(png)
    config = {"steps": 50, "eta": np.float32(0.5), "schedule": {"kind": "linear", "T": 1000}, "out": tmp_path}
    tracker = _run(tmp_path, name="cell-1", group="g", job_type="sweep", config=config, tags=["a", "b"])
    assert tracker.run_dir.parent == tmp_path / "wandb" and tracker.run_dir.name.startswith("offline-run-")
    tracker.log({"loss": 0.5, "lr": 1e-3}, step=0)
    tracker.log({"loss": 0.25}, step=1)
    tracker.log({"loss": 0.125, "fid/50": 12.5}, step=2)
    tracker.log_image("samples", np.zeros((8, 8, 3), np.uint8), step=3, caption="x_0")
    tracker.log_image("grid", png, step=3)
    tracker.log_table("fid", ["steps", "eta", "fid"], [[10, 0.0, 20.5], [50, 1.0, 9.25]])
    tracker.summary({"best_fid": 9.25, "n": 2})
    tracker.finish()
    tracker.finish()  # idempotent
    tracker.log({"loss": 1.0}, step=9)  # after finish: ignored

    run = tracking.read_offline_run(tracker.run_dir)
    assert run["run"]["name"] == "cell-1" and run["run"]["group"] == "g"
    assert run["run"]["job_type"] == "sweep" and run["run"]["tags"] == ["a", "b"]
    assert run["run"]["project"] == "ddimbench" and run["run"]["exit_code"] == 0
    assert run["config"] == {**config, "eta": 0.5, "out": str(tmp_path)}
    rows = run["history"]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert rows[0] == {"step": 0, "loss": 0.5, "lr": 1e-3}
    assert rows[1] == {"step": 1, "loss": 0.25}
    assert rows[2] == {"step": 2, "loss": 0.125, "fid/50": 12.5}
    media = {k: rows[3][k] for k in ("samples", "grid", "fid")}
    assert media["samples"]["_type"] == "image-file" and media["samples"]["caption"] == "x_0"
    assert (media["grid"]["width"], media["grid"]["height"]) == (5, 6)
    assert media["fid"]["_type"] == "table-file" and media["fid"]["nrows"] == 2
    assert run["summary"]["best_fid"] == 9.25 and run["summary"]["n"] == 2
    assert run["summary"]["loss"] == 0.125  # W&B's summary default: the last logged value
    files = tracker.run_dir / "files"
    for value in media.values():
        assert value["path"] in run["files"] and (files / value["path"]).is_file()
    table = json.loads((files / media["fid"]["path"]).read_text())
    assert table == {"columns": ["steps", "eta", "fid"], "data": [[10, 0.0, 20.5], [50, 1.0, 9.25]]}


def test_lazy_tracker_starts_its_run_at_the_first_record(tmp_path):
    """``LazyTracker`` around ``make_tracker``, as ``train`` builds it."""
    unused = LazyTracker(lambda: tracking.make_tracker("offline", dir=tmp_path / "a"))
    with unused:
        pass  # the command failed before logging anything: no run, no folder
    assert not (tmp_path / "a").exists() and unused.run_dir is None

    with LazyTracker(lambda: tracking.make_tracker("offline", dir=tmp_path / "b", name="lazy")) as tr:
        assert tr.mode == "pending" and not (tmp_path / "b").exists()
        tr.log({"loss": 1.5}, step=1)
        assert tr.mode == "offline" and tr.run_dir is not None
        tr.log({"loss": 0.5}, step=2)  # the same run
        tr.summary({"loss": 0.5})
    (run,) = sorted((tmp_path / "b" / "wandb").glob("offline-run-*"))
    back = tracking.read_offline_run(run)
    assert [r["loss"] for r in back["history"]] == [1.5, 0.5] and back["summary"]["loss"] == 0.5
    tr.log({"loss": 9.0}, step=3)  # after the end: ignored, no second run
    assert len(list((tmp_path / "b" / "wandb").glob("offline-run-*"))) == 1


def test_matplotlib_figure_and_context_manager(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2), dpi=50)
    ax.plot([0, 1], [1, 0])
    with _run(tmp_path) as tracker:
        tracker.log_image("curve", fig, step=0)
    plt.close(fig)
    (row,) = tracking.read_offline_run(tracker.run_dir)["history"]
    assert (tracker.run_dir / "files" / row["curve"]["path"]).is_file()


def test_two_runs_in_a_row_are_separate(tmp_path):
    first = _run(tmp_path, name="one")
    first.log({"x": 1.0}, step=0)
    first.finish()
    second = _run(tmp_path, name="two", config={"k": 2})
    second.log({"y": 2.0}, step=5)
    second.finish()
    assert first.run_dir != second.run_dir
    one, two = (tracking.read_offline_run(t.run_dir) for t in (first, second))
    assert one["run"]["name"] == "one" and one["history"] == [{"step": 0, "x": 1.0}] and one["config"] == {}
    assert two["run"]["name"] == "two" and two["history"] == [{"step": 5, "y": 2.0}]
    assert two["config"] == {"k": 2}


def test_many_steps_span_blocks_and_log_is_cheap(tmp_path):
    tracker = _run(tmp_path)
    n = 400
    start = time.perf_counter()
    for step in range(n):
        tracker.log({"loss": 1.0 / (step + 1), "step_time": 0.01 * step}, step=step)
    per_call = (time.perf_counter() - start) / n
    tracker.finish()
    log = next(tracker.run_dir.glob("run-*.wandb"))
    assert log.stat().st_size > 2 * tracking_log._BLOCK  # several 32 KiB blocks
    rows = tracking.read_offline_run(tracker.run_dir)["history"]
    assert [r["step"] for r in rows] == list(range(n))
    assert rows[-1] == {"step": n - 1, "loss": 1.0 / n, "step_time": 0.01 * (n - 1)}
    assert per_call < 0.01, f"log() took {per_call * 1e3:.2f} ms per call"


def test_out_of_order_step_warns_once(tmp_path):
    warnings = Warnings()
    tracker = _run(tmp_path, warn=warnings)
    for step in (5, 3, 2, 6):
        tracker.log({"a": float(step)}, step=step)
    tracker.finish()
    assert len(warnings) == 1 and "step 3" in warnings[0]


def test_online_without_key_falls_back_to_offline(tmp_path, no_credentials):
    assert reach.default_mode() == "offline"
    warnings = Warnings()
    start = time.perf_counter()
    tracker = tracking.make_tracker("online", dir=tmp_path / "runs", warn=warnings)
    elapsed = time.perf_counter() - start
    tracker.log({"a": 1.0}, step=0)
    tracker.finish()
    assert tracker.mode == "offline" and elapsed < 10
    assert len(warnings) == 1 and "API key" in warnings[0] and str(tracker.run_dir) in warnings[0]
    assert tracking.read_offline_run(tracker.run_dir)["history"] == [{"step": 0, "a": 1.0}]


def test_default_mode_sees_netrc_and_env(no_credentials, monkeypatch):
    netrc = no_credentials / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert reach.default_mode() == "online"
    netrc.unlink()
    assert reach.default_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert reach.default_mode() == "online"


def test_online_with_bogus_key_and_no_network_falls_back(tmp_path, no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    # A closed local port: the cheap probe is refused at once, as on a machine without network.
    monkeypatch.setattr(tracking, "_wandb_base_url", lambda wandb: "https://127.0.0.1:9")
    warnings = Warnings()
    start = time.perf_counter()
    tracker = tracking.make_tracker("online", dir=tmp_path, warn=warnings)
    elapsed = time.perf_counter() - start
    tracker.finish()
    assert tracker.mode == "offline" and elapsed < 20
    assert len(warnings) == 1 and "cannot reach 127.0.0.1:9" in warnings[0]


def test_failed_online_is_remembered_for_the_next_runs(tmp_path, no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setattr(tracking, "_wandb_base_url", lambda wandb: "https://127.0.0.1:9")
    probes = []
    monkeypatch.setattr(reach, "probe", lambda *args: probes.append(args) or "refused")
    warnings = Warnings()
    trackers = [tracking.make_tracker("online", dir=tmp_path, warn=warnings) for _ in range(3)]
    for tracker in trackers:
        tracker.finish()
    assert [t.mode for t in trackers] == ["offline"] * 3
    assert len({t.run_dir for t in trackers}) == 3
    assert len(probes) == 1 and len(warnings) == 1


def test_online_init_failure_is_bounded(tmp_path, no_credentials, monkeypatch):
    """Past the probe, wandb's own online init fails (no network here, or a bogus key) in bounded time."""
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setattr(reach, "server_problem", lambda base_url: None)
    monkeypatch.setattr(tracking, "ONLINE_INIT_TIMEOUT_S", 3.0)
    warnings = Warnings()
    start = time.perf_counter()
    tracker = tracking.make_tracker("online", dir=tmp_path, warn=warnings)
    elapsed = time.perf_counter() - start
    tracker.log({"a": 1.0}, step=0)
    tracker.finish()
    assert tracker.mode in ("offline", "disabled") and elapsed < 20
    assert len(warnings) == 1 and "online init failed" in warnings[0]


def test_init_failure_gives_null_tracker(tmp_path, monkeypatch):
    import wandb

    def broken_init(*args, **kwargs):
        raise RuntimeError("service exploded\nsecond line")

    monkeypatch.setattr(wandb, "init", broken_init)
    warnings = Warnings()
    tracker = tracking.make_tracker("offline", dir=tmp_path, warn=warnings)
    assert isinstance(tracker, tracking.NullTracker) and tracker.mode == "disabled"
    for step in range(3):
        tracker.log({"a": 1.0}, step=step)
    tracker.log_image("x", np.zeros((2, 2)), step=3)
    tracker.summary({"b": 2})
    tracker.finish()
    assert len(warnings) == 1 and "service exploded" in warnings[0] and "disabled" in warnings[0]


def test_log_failure_degrades_to_noops_with_one_warning(tmp_path, monkeypatch):
    from wandb.sdk.wandb_run import Run

    calls = []

    def broken_log(self, *args, **kwargs):
        calls.append(1)
        raise OSError("disk full")

    warnings = Warnings()
    tracker = _run(tmp_path, warn=warnings)
    monkeypatch.setattr(Run, "log", broken_log)
    for step in range(100):  # the caller's loop runs to the end
        tracker.log({"loss": 1.0}, step=step)
        tracker.log_table("t", ["a"], [[1]])
    tracker.summary({"fid": 1.0})
    tracker.finish()
    assert len(calls) == 1 and len(warnings) == 1 and "disk full" in warnings[0]


def test_disabled_writes_nothing(tmp_path):
    tracker = tracking.make_tracker("disabled", dir=tmp_path / "runs", config={"a": 1})
    assert isinstance(tracker, tracking.NullTracker) and tracker.run_dir is None
    tracker.log({"a": 1.0}, step=0)
    tracker.log_image("x", tmp_path / "missing.png")
    tracker.log_table("t", ["a"], [[1]])
    tracker.summary({"a": 1})
    tracker.finish()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["Online ", "OFFLINE", "disabled"])
def test_mode_is_normalised(tmp_path, mode, no_credentials):
    tracker = tracking.make_tracker(mode, dir=tmp_path, warn=Warnings())
    tracker.finish()
    assert tracker.mode == ("disabled" if mode == "disabled" else "offline")


def test_unknown_mode_is_a_ddim_error():
    with pytest.raises(DDIMError, match="unknown tracking mode 'cloud'"):
        tracking.make_tracker("cloud")


def test_import_does_not_load_wandb():
    """Importing tracking and a disabled tracker cost nothing (the key lookup is W&B's own: it loads wandb)."""
    code = (
        "import sys, bench.tracking.wandb_run as t, bench.tracking.reach as r; "
        "t.make_tracker('disabled'); "
        "assert 'wandb' not in sys.modules, 'wandb imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# -- the .wandb framing, against an independent writer of the LevelDB log format ------------------


def _write_log(records: list[bytes]) -> tuple[bytes, set[str]]:
    """LevelDB log writer (as in leveldb's log_writer.cc), after W&B's 7-byte file header."""
    block, out, seen = 32768, bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0)), set()
    for record in records:
        rest, first = record, True
        while True:
            room = block - len(out) % block
            if room < 7:
                out += bytes(room)
                seen.add("padding")
                continue
            n = min(len(rest), room - 7)
            last = n == len(rest)
            kind = (1 if last else 2) if first else (4 if last else 3)
            seen.add({1: "full", 2: "first", 3: "middle", 4: "last"}[kind] + ("-empty" if n == 0 else ""))
            out += struct.pack("<IHB", zlib.crc32(bytes([kind]) + rest[:n]), n, kind) + rest[:n]
            rest, first = rest[n:], False
            if last:
                break
    return bytes(out), seen


def _history(step: int, size: int) -> bytes:
    """A serialized history record of exactly ``size`` bytes (padded through a text item)."""
    from wandb.proto import wandb_internal_pb2 as pb

    def make(pad: int) -> pb.Record:
        record = pb.Record()
        record.history.item.add(nested_key=["_step"], value_json=str(step))
        record.history.item.add(key="loss", value_json=f"{step / 8}")
        record.history.item.add(key="pad", value_json='"' + "p" * pad + '"')
        return record

    base = make(0).ByteSize()
    for pad in range(max(0, size - base - 8), size - base + 1):
        if (record := make(pad)).ByteSize() == size:
            return record.SerializeToString()
    raise AssertionError(f"no history record of exactly {size} bytes")


def _synthetic(tmp_path: Path) -> tuple[Path, list[int], set[str]]:
    from wandb.proto import wandb_internal_pb2 as pb

    # Leave exactly 7 bytes in block 0 (the next record starts with an empty FIRST chunk), then a
    # record over three blocks, then one leaving 3 bytes of block padding, then random sizes.
    sizes = [32768 - 7 - 7 - 7, 70000, 300]
    records = [_history(step, size) for step, size in enumerate(sizes)]
    used = len(_write_log(records)[0]) % 32768
    sizes += [32768 - used - 7 - 3] + random.Random(0).choices(range(100, 40000), k=20)
    records += [_history(step, size) for step, size in enumerate(sizes) if step >= len(records)]
    exit_record = pb.Record()
    exit_record.exit.exit_code = 3
    data, seen = _write_log(records + [exit_record.SerializeToString()])
    path = tmp_path / "run-synthetic.wandb"
    path.write_bytes(data)
    return path, sizes, seen


def test_reader_handles_every_chunk_kind(tmp_path):
    path, sizes, seen = _synthetic(tmp_path)
    assert {"full", "first", "middle", "last", "first-empty", "padding"} <= seen
    run = tracking.read_offline_run(path)
    assert [r["step"] for r in run["history"]] == list(range(len(sizes)))
    assert all(r["loss"] == r["step"] / 8 and len(r["pad"]) < s for r, s in zip(run["history"], sizes))
    assert run["run"]["exit_code"] == 3 and tracking._log_has_exit(path)


def test_reader_tolerates_truncation_and_rejects_corruption(tmp_path):
    path, sizes, _ = _synthetic(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:50000])  # cut inside the 70 kB record
    run = tracking.read_offline_run(path)
    assert [r["step"] for r in run["history"]] == [0] and run["run"]["exit_code"] is None
    assert not tracking._log_has_exit(path)
    corrupt = bytearray(data)
    corrupt[100] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    with pytest.raises(DDIMError, match="corrupt record"):
        tracking.read_offline_run(path)
    path.write_bytes(b"not a log at all")
    with pytest.raises(DDIMError, match="not a W&B run log"):
        tracking.read_offline_run(path)
    with pytest.raises(DDIMError, match="expected one run-"):
        tracking.read_offline_run(tmp_path / "nowhere")


def test_offline_prints_nothing(tmp_path, capfd):
    """wandb's own chatter stays off; our one line about the offline folder goes through ``note``."""
    tracker = _run(tmp_path, config={"a": 1}, note=lambda line: None)
    tracker.log({"loss": 1.0}, step=0)
    tracker.log_image("x", np.zeros((4, 4)), step=0)
    tracker.summary({"fid": 2.0})
    tracker.finish()
    assert capfd.readouterr() == ("", "")
