"""``ddimbench sample --batch-size auto`` and ``--bf16``: the sweep's ``batch=auto`` and ``bf16=true`` for a folder.

The batch never changes a sample (per-sample seeds); bf16 does, so it is part of the folder's settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.cli import run

from ddim import runtime
from ddim.memory import SAMPLING_CPU_BATCH

COMMON = ["--steps", "2", "--eta", "1", "--seed", "3", "--device", "cpu"]


def _sample(ckpt: Path, out: Path, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    code, _, err = run(["sample", "--checkpoint", ckpt, "--out", out, *COMMON, *args], capsys)
    return code, err


def _manifest(out: Path) -> dict:
    return json.loads((out / "samples.json").read_text())


def _pngs(out: Path, n: int) -> list[bytes]:
    return [(out / f"{i:06d}.png").read_bytes() for i in range(n)]


def test_batch_size_auto_takes_the_cpu_batch_and_changes_no_pixel(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    auto, fixed = tmp_path / "auto", tmp_path / "fixed"
    assert _sample(ckpt, auto, capsys, "-n", "3", "--batch-size", "AUTO")[0] == 0
    assert _sample(ckpt, fixed, capsys, "-n", "3", "--batch-size", "1")[0] == 0
    assert _pngs(auto, 3) == _pngs(fixed, 3)
    assert _manifest(auto)["last_run"]["batch_size"] == min(3, SAMPLING_CPU_BATCH)  # n caps the CPU's 256
    assert _manifest(fixed)["last_run"]["batch_size"] == 1
    assert "batch_size" not in _manifest(auto)["settings"]  # the batch does not fix the pixels


@pytest.mark.parametrize("value", ["0", "-4", "many", "2.5"])
def test_a_bad_batch_size_is_one_line_and_writes_nothing(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture, value: str
) -> None:
    out = tmp_path / "s"
    code, err = _sample(ckpt, out, capsys, "-n", "2", "--batch-size", value)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--batch-size" in err and "auto" in err and value in err
    assert not out.exists()


def test_bf16_is_recorded_changes_pixels_and_is_not_mixed_with_float32(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    f32, bf16, again = tmp_path / "f32", tmp_path / "bf16", tmp_path / "again"
    assert _sample(ckpt, f32, capsys, "-n", "2")[0] == 0
    assert _sample(ckpt, bf16, capsys, "-n", "2", "--bf16")[0] == 0
    assert _manifest(f32)["settings"]["bf16"] is False and _manifest(bf16)["settings"]["bf16"] is True
    assert _pngs(bf16, 2) != _pngs(f32, 2)  # autocast reaches the network
    assert _sample(ckpt, again, capsys, "-n", "2", "--bf16", "--batch-size", "1")[0] == 0
    assert _pngs(again, 2) == _pngs(bf16, 2)  # same seed, same bf16 pixels
    # A folder is never mixed: float32 into the bf16 folder and bf16 into the float32 one are refused.
    for out, flag in ((bf16, ()), (f32, ("--bf16",))):
        code, err = _sample(ckpt, out, capsys, "-n", "2", *flag)
        assert code == 2 and "other settings" in err and len(err.strip().splitlines()) == 1, err


def test_a_folder_written_before_bf16_existed_resumes_as_float32(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "old"
    assert _sample(ckpt, out, capsys, "-n", "2")[0] == 0
    before = _pngs(out, 2)
    manifest = _manifest(out)
    del manifest["settings"]["bf16"]  # as releases before the option wrote it
    (out / "samples.json").write_text(json.dumps(manifest))
    (out / "000001.png").unlink()
    assert _sample(ckpt, out, capsys, "-n", "2")[0] == 0
    assert _pngs(out, 2) == before
    (out / "samples.json").write_text(json.dumps(manifest))  # without bf16 again: it reads as false
    code, err = _sample(ckpt, out, capsys, "-n", "2", "--bf16")
    assert code == 2 and "other settings" in err


def test_the_host_draws_and_writes_while_the_next_batch_samples(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch k+1 is queued before batch k's PNGs are written (a GPU samples while the host encodes), and its x_T
    is drawn before batch k is read back; the files are the ones a batch-at-a-time loop writes."""
    import bench.generate as generate
    from ddim.sampling import SeededNoise

    before = tmp_path / "plain"
    assert _sample(ckpt, before, capsys, "-n", "5", "--batch-size", "5")[0] == 0
    events: list[str] = []
    initial, to_uint8, write = SeededNoise.initial, generate.to_uint8, generate.atomic_write
    monkeypatch.setattr(SeededNoise, "initial", lambda self: events.append("draw") or initial(self))
    monkeypatch.setattr(generate, "to_uint8", lambda x: events.append("read") or to_uint8(x))
    monkeypatch.setattr(generate, "atomic_write", lambda p, fn: events.append(f"png {Path(p).stem}") or write(p, fn))
    steps = {}
    for overlap in (False, True):  # the CPU writes each batch at once; a GPU's order is checked on the CPU too
        monkeypatch.setattr(generate, "OVERLAP_DEVICES", ("cuda", "cpu") if overlap else ("cuda",))
        events.clear()
        out = tmp_path / f"overlap-{overlap}"
        assert _sample(ckpt, out, capsys, "-n", "5", "--batch-size", "2")[0] == 0
        steps[overlap] = [e for e in events if e.startswith(("draw", "read", "png 0"))]
        assert _pngs(out, 5) == _pngs(before, 5)
    assert steps[True] == ["draw", "draw", "read", "draw", "png 000000", "png 000001", "read", "png 000002",
                           "png 000003", "read", "png 000004"]  # fmt: skip
    assert steps[False] == ["draw", "draw", "read", "png 000000", "png 000001", "draw", "read", "png 000002",
                            "png 000003", "read", "png 000004"]  # fmt: skip


def test_a_batch_read_back_is_written_when_the_next_one_fails(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With GPU overlap, batch k waits on the host while batch k+1 samples: an interrupt then must not lose it."""
    import bench.generate as generate

    monkeypatch.setattr(generate, "OVERLAP_DEVICES", ("cuda", "cpu"))
    real, calls = generate.sample, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "sample", interrupted)
    out = tmp_path / "s"
    code, err = _sample(ckpt, out, capsys, "-n", "4", "--batch-size", "2")
    assert code == 130, err
    assert sorted(p.name for p in out.glob("0*.png")) == ["000000.png", "000001.png"]  # batch 0 was kept


@pytest.mark.parametrize("has_bf16", [False, True, None])
def test_bf16_on_a_cpu_without_bfloat16_instructions_warns_in_sample_and_sweep(
    ckpt: Path, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
    has_bf16: bool | None,
) -> None:  # fmt: skip
    """Such a CPU runs bf16 autocast many times slower than float32 (reports/perf/profile.md section 13): `sample
    --bf16` and `sweep bf16=true` say so once, and still run; with the instructions, or where unknown, nothing."""
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda cpuinfo=None: has_bf16)
    warns = 1 if has_bf16 is False else 0
    code, err = _sample(ckpt, tmp_path / "b", capsys, "-n", "1", "--bf16")
    assert code == 0 and err.count("no bfloat16 instructions") == warns, err
    assert len(list((tmp_path / "b").glob("0*.png"))) == 1
    sweep = ["sweep", f"checkpoint={ckpt}", f"cache_dir={cache}", "device=cpu", "steps=2", "n=10", "--dry-run"]
    code, _, err = run([*sweep, "bf16=true"], capsys)
    assert code == 0 and err.count("no bfloat16 instructions") == warns, err
    for argv in (["sample", "--checkpoint", ckpt, "--out", tmp_path / "f", *COMMON, "-n", "1"], sweep):
        code, _, err = run(argv, capsys)  # float32: nothing to say
        assert code == 0 and "bfloat16" not in err, err
    code, _, err = run([*sweep, "bf16=true", "n=1"], capsys)  # a refused sweep only refuses
    assert code == 2 and len(err.strip().splitlines()) == 1 and "bfloat16" not in err, err
    code, err = _sample(ckpt, tmp_path / "f", capsys, "-n", "1", "--bf16")  # so does a refused sample
    assert code == 2 and len(err.strip().splitlines()) == 1 and "other settings" in err, err
