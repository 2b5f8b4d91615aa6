"""``ddimbench sample``'s folder: refusals leave it usable, the same checkpoint spelt two ways resumes it, a damaged
manifest is one line, the names of earlier releases (``--schedule``) still resume their folders, a file that is no
sample is never resumed over, and SIGTERM stops it as Ctrl-C does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT
from helpers.cli import run


def test_sample_refusals_leave_the_folder_usable(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "s"
    common = ["sample", "--checkpoint", ckpt, "--out", out, "-n", "2", "--steps", "2"]
    # A setting refused inside the sampler is refused before anything is written.
    code, _, err = run([*common, "--sampler", "plms", "--clip-x0"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and not out.exists()
    # The same checkpoint spelt another way (run dir vs its file) resumes the same folder.
    assert run(common, capsys)[0] == 0
    ckpt = ckpt / "checkpoints" / "step-0000002.pt"
    assert run(["sample", "--checkpoint", ckpt, *common[3:]], capsys)[0] == 0
    # A damaged manifest is one line, not a traceback.
    (out / "samples.json").write_text("{")
    code, _, err = run(common, capsys)
    assert code == 2 and "damaged" in err and len(err.strip().splitlines()) == 1


def _sample(ckpt: Path, out: Path, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, dict]:
    """``ddimbench sample`` of one image into ``out``: (exit code, stderr, samples.json's settings or {})."""
    code, _, err = run(["sample", "--checkpoint", ckpt, "--out", out, "-n", "1", *args], capsys)
    manifest = out / "samples.json"
    return code, err, json.loads(manifest.read_text())["settings"] if manifest.exists() else {}


def test_trailing_spacing_at_an_awkward_step_count(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """S = 61 at T = 1000 once made `trailing` yield 62 timesteps and crash."""
    code, err, settings = _sample(ckpt, tmp_path / "t", capsys, "--steps", "61", "--spacing", "trailing")
    assert code == 0, err
    assert settings["nfe"] == 61


def test_sample_schedule_is_a_deprecated_name_of_spacing(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "old"
    code, err, settings = _sample(ckpt, out, capsys, "--steps", "3", "--schedule", "trailing")
    assert code == 0 and err.count("warning: --schedule is deprecated; write --spacing instead") == 1, err
    assert settings["spacing"] == "trailing"
    manifest = json.loads((out / "samples.json").read_text())  # as an earlier release wrote it: it resumes
    manifest["settings"]["schedule"] = manifest["settings"].pop("spacing")
    (out / "samples.json").write_text(json.dumps(manifest))
    assert run(["sample", "--checkpoint", ckpt, "--out", out, "-n", "1", "--steps", "3", "--spacing", "trailing"],
               capsys)[0] == 0  # fmt: skip
    code, _, err = run(["sample", "--checkpoint", ckpt, "--out", out, "-n", "1", "--steps", "3",
                        "--schedule", "trailing", "--spacing", "quad"], capsys)  # fmt: skip
    assert code == 2 and "--schedule trailing and --spacing quad disagree; pass --spacing only" in err
    # An explicit --spacing equal to the default still disagrees (it is not the default standing in).
    code, err, _ = _sample(ckpt, tmp_path / "explicit", capsys, "--schedule", "quad", "--spacing", "uniform")
    assert code == 2 and "--schedule quad and --spacing uniform disagree" in err


def _foreign(path: Path, how: str) -> None:
    """Put a file that is no sample of the run (16×16 L PNGs) under a sample's name."""
    from PIL import Image

    if how == "junk":
        path.write_text("junk\n")
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # its header and part of the pixels
    else:
        mode, size, fmt = {"small": ("L", 8, "PNG"), "rgba": ("RGBA", 16, "PNG"), "jpeg": ("L", 16, "JPEG")}[how]
        Image.new(mode, (size, size)).save(path, format=fmt)


@pytest.mark.parametrize("how", ["small", "rgba", "jpeg", "junk", "truncated"])
def test_a_rerun_refuses_a_file_under_a_samples_name_that_is_no_sample_of_the_run(
    how: str, ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Was: a torch.stack RuntimeError writing the grid, or "check the path, permissions and free space"."""
    out = tmp_path / "s"
    common = ["sample", "--checkpoint", ckpt, "--out", out, "-n", "3", "--steps", "2", "--device", "cpu"]
    assert run(common, capsys)[0] == 0
    sample = out / "000001.png"
    original = sample.read_bytes()
    _foreign(sample, how)
    theirs, manifest = sample.read_bytes(), (out / "samples.json").read_bytes()
    code, _, err = run(common, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"{sample} is not a sample of this run" in err and "delete it and rerun to regenerate it" in err, err
    assert sample.read_bytes() == theirs and (out / "samples.json").read_bytes() == manifest  # nothing touched
    sample.unlink()  # as the line says
    assert run(common, capsys)[0] == 0 and sample.read_bytes() == original


@pytest.mark.timeout(240)
def test_sigterm_stops_sample_like_ctrl_c_and_the_rerun_finishes_the_folder(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Pre-emption (``kill``) was a silent death (exit 143); now: exit 130, the interrupt line, a resumable folder."""
    out = tmp_path / "s"
    common = ["sample", "--checkpoint", str(ckpt), "--out", str(out), "-n", "8", "--steps", "50", "--batch-size", "1"]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    argv = [sys.executable, "-m", "bench.cli", *common, "--device", "cpu"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 180
        while not (out / "000000.png").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[1]  # still sampling: the signal lands mid-run
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted; rerun the same command to resume", err
    assert "Traceback" not in err
    written = sorted(p.name for p in out.iterdir())
    assert not json.loads((out / "samples.json").read_text())["complete"] and "000000.png" in written
    assert not [n for n in written if n.endswith(".tmp")], written
    code, _, err = run([*common, "--device", "cpu"], capsys)
    assert code == 0, err
    assert json.loads((out / "samples.json").read_text())["complete"]
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{i:06d}.png" for i in range(8)]
