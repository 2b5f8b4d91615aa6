"""The users' own commands, run as written: the README's used-by lines, the seed trainer's workflow
(``--dataset MNIST --epochs 2``), and progress in a log file.

Commands run in-process through ``bench.cli.main`` (the console script's entry point) in a working
directory of their own, except where a real process is the point (progress while it runs, ``make``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT
from helpers.cli import run
from helpers.data import make_mnist
from helpers.training import TINY, tiny_config

import bench.sweep.resolve
from ddim.rundir import newest_run
from ddim.training import train

# The tiny UNet as train options: a step takes milliseconds.
TINY_ARGS = ["--ch", "8", "--ch-mult", "1,2", "--num-res-blocks", "1", "--attn-resolutions", "", "--dropout", "0",
             "--num-groups", "4", "--batch-size", "16", "--log-every", "1", "--grid-size", "4", "--grid-steps", "2",
             "--num-workers", "0", "--device", "cpu", "--wandb", "disabled"]  # fmt: skip


def test_used_by_lines_run_verbatim(
    work: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`ddimbench sweep steps=10,20,50,100 eta=0,0.5,1` (W&B runs beside it), then `ddimbench report sweep`,
    exactly as the README writes them, after a tiny digits training run in runs/digits."""
    train(tiny_config(work / "runs" / "digits", max_steps=4))
    (work / ".cache").mkdir()
    (work / ".cache" / "ddimbench").symlink_to(cache, target_is_directory=True)  # the session's classifier

    @dataclasses.dataclass(frozen=True)
    class SmallSpec(bench.sweep.resolve.SweepSpec):
        n: int = 20  # the default n=1000 × 12 cells takes minutes on the test machine; the command is verbatim

    monkeypatch.setattr(bench.sweep.resolve, "SweepSpec", SmallSpec)
    code, _, err = run(["sweep", "steps=10,20,50,100", "eta=0,0.5,1"], capsys)
    assert code == 0, err
    assert "no checkpoint= given: using runs/digits, the newest training run under runs/" in err
    assert "sweep 'sweep': cells 12/12 (100%)" in err  # progress lines in a non-terminal stderr
    spec = json.loads((work / "ddimbench-sweeps" / "sweep" / "sweep.json").read_text())
    assert spec["steps"] == [10, 20, 50, 100] and spec["eta"] == [0, 0.5, 1] and spec["n"] == 20
    assert spec["checkpoint"].startswith(str(Path("runs") / "digits"))
    # W&B dashboards: one run per cell plus the summary (offline here: no key; `wandb sync` uploads them).
    assert len(list((work / "ddimbench-sweeps" / "sweep" / "wandb").glob("offline-run-*"))) >= 12

    code, _, err = run(["report", "sweep"], capsys)
    assert code == 0, err
    for name in ("table.md", "table.tex", "index.html", "results.csv", "wandb_report.json"):  # + the W&B Report
        assert (work / "reports" / "sweep" / name).is_file(), name


def test_sweep_with_no_run_says_how_to_make_one(work: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run(["sweep", "steps=10,20,50,100", "eta=0,0.5,1"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "no training run under runs/" in err and "ddimbench train" in err and "make demo" in err
    assert sorted(p.name for p in work.iterdir()) == []  # nothing made


def test_newest_run_is_the_one_written_last(tmp_path: Path) -> None:
    for name, mtime in (("b", 100), ("a", 300), ("c", 200)):
        folder = tmp_path / name / "checkpoints"
        folder.mkdir(parents=True)
        (folder / "step-0000001.pt").write_bytes(b"x")
        os.utime(folder / "step-0000001.pt", (mtime, mtime))
    (tmp_path / "empty").mkdir()  # no checkpoint: not a run
    assert newest_run(tmp_path) == tmp_path / "a"
    assert newest_run(tmp_path / "empty") is None and newest_run(tmp_path / "missing") is None


MAKE = shutil.which("make")


@pytest.mark.skipif(MAKE is None, reason="needs make")
@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (["train-celeba"], "ddimbench train --dataset celeba --data-root data --max-steps 500000"),
        (["train-mnist"], "ddimbench train --dataset mnist --epochs 6 --channels 1"),  # the seed trainer's run
        (["sweep"], "ddimbench sweep steps=10,20,50,100 eta=0,0.5,1 name='sweep'"),
        (["sweep", "CHECKPOINT=runs/x", "NAME=g"], "eta=0,0.5,1 checkpoint='runs/x' name='g'"),  # W&B: bare
        (["report"], "ddimbench report 'sweep'"),
        (["demo"], "name=digits-demo --wandb 'offline'"),  # the demo never uploads
        (["report", "NAME=grid", "WANDB=online"], "ddimbench report 'grid' --wandb 'online'"),
    ],
)  # fmt: skip
def test_make_targets_run_the_documented_commands(target: list[str], expected: str) -> None:
    """`make train-celeba` would take days: dry-run it (and the others) and check the command it runs."""
    out = subprocess.run([MAKE, "-n", "-C", str(ROOT), *target], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.replace("\\\n", " ").split())  # continued lines joined
    assert expected in text, text
    if "WANDB=online" not in target and target[0] != "demo":
        assert "--wandb" not in text, text  # `make sweep` is `ddimbench sweep`: online after `wandb login`


@pytest.mark.skipif(MAKE is None, reason="needs make")
def test_make_passes_each_variable_as_one_argument(tmp_path: Path) -> None:
    """A CHECKPOINT with a space, a NAME with `;` and a quote: each one argument, nothing injected; an empty
    DEMO_WANDB passes no --wandb (the commands' own default), as the README says."""
    pwned = tmp_path / "pwned"
    show = ["STAMP=", "DDIM=printf '[%s]\\n'"]  # each argument the command would get, bracketed
    argv = [MAKE, "-s", "-C", str(ROOT), "sweep", *show, "CHECKPOINT=runs/my run", f"NAME=x;touch {pwned}'"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "[checkpoint=runs/my run]\n" in out.stdout and f"[name=x;touch {pwned}']\n" in out.stdout
    assert not pwned.exists()
    demo = subprocess.run([MAKE, "-n", "-C", str(ROOT), "demo", "demo-replicates", "DEMO_WANDB="],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert demo.returncode == 0 and "--wandb" not in demo.stdout and "ddimbench report" in demo.stdout


# --- the seed trainer's workflow -------------------------------------------------------------------


def test_mnist_for_two_epochs_as_the_seed_trainer(work: Path, capsys: pytest.CaptureFixture) -> None:
    """`ddimbench train --dataset MNIST --epochs 2` on 40 synthetic images at batch 16: epochs end at steps
    ceil(40/16) = 3 and ceil(80/16) = 5, each with a sample grid; the run goes to runs/mnist."""
    make_mnist(work / "data", n_train=40)
    argv = ["train", "--dataset", "MNIST", "--epochs", "2", "--channels", "1", *TINY_ARGS]
    code, out, err = run([*argv, "--dry-run"], capsys)
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["max_steps"], shown["epochs"], shown["dataset"], shown["run_dir"]) == (5, 2, "mnist", "runs/mnist")
    code, _, err = run(argv, capsys)
    assert code == 0, err
    run_dir = work / "runs" / "mnist"
    config = json.loads((run_dir / "config.json").read_text())["train"]
    assert config["max_steps"] == 5 and config["epochs"] == 2 and config["sample_every"] == 0
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["step-0000003.png", "step-0000005.png"]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--epochs", "2", "--max-steps", "10"], "--epochs and --max-steps both given; pass one"),
        (["--dataset", "mnist", "--channels", "3"], "--channels 3 does not match mnist, which has 1 channel"),
        (["--dataset", "CelebA", "--channels", "1"], "--channels 1 does not match celeba, which has 3 channels"),
        (["--dataset", "cifar10", "--epochs", "1", "--data-root", "nowhere"], "CIFAR-10 not found"),
    ],
)
def test_seed_options_refused_in_one_line(
    argv: list[str], needle: str, work: Path, capsys: pytest.CaptureFixture
) -> None:
    code, _, err = run(["train", *argv, "--dry-run"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert list(work.iterdir()) == []


def test_dataset_names_in_any_case_and_run_dir_per_dataset(work: Path, capsys: pytest.CaptureFixture) -> None:
    for spelt, name in (("CelebA", "celeba"), ("MNIST", "mnist"), ("Digits", "digits")):
        code, out, err = run(["train", "--dataset", spelt, "--dry-run"], capsys)
        assert code == 0, err
        shown = json.loads(out)
        assert (shown["dataset"], shown["run_dir"], shown["max_steps"]) == (name, f"runs/{name}", 2000)


# --- progress and memory ---------------------------------------------------------------------------


def test_train_writes_progress_lines_to_a_log_while_it_runs(tmp_path: Path) -> None:
    """stderr redirected to a file: a progress line (step, loss, images/s, ETA) is there before the run ends."""
    log = tmp_path / "train.log"
    argv = [sys.executable, "-m", "bench.cli", "train", "--max-steps", "100000", "--run-dir", str(tmp_path / "r"),
            *TINY_ARGS, "--save-every", "100000", "--sample-every", "0"]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with open(log, "w") as stderr:
        proc = subprocess.Popen(argv, stderr=stderr, stdout=subprocess.DEVNULL, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 240
        while "train: step" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()  # still training: the line came before the end
        line = next(x for x in log.read_text().splitlines() if x.startswith("train: step"))
        assert "/100000 (0%), loss " in line and " images/s, ETA " in line, line
    finally:
        proc.send_signal(signal.SIGTERM)  # checkpoint and stop
        assert proc.wait(timeout=120) == 130
    assert "Traceback" not in log.read_text()


def test_progress_lines_carry_throughput_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    from io import StringIO

    from rich.console import Console

    import bench.console as progress

    clock = iter([-10.0, 0.0, 10.0, 20.0, 60.0, 61.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out = StringIO()
    bar = progress.LazyBar("train", Console(file=out, force_terminal=False, width=200), unit="step", loss="")
    bar.update(5, 110, ready=False, loss="loss …")  # no loss yet: the rate's origin, no line
    bar.update(10, 110, loss="loss 0.5", speed="300 images/s")  # t=10: the first line
    bar.update(20, 110, loss="loss 0.4")  # t=10: too soon
    bar.update(30, 110, loss="loss 0.3")  # t=20: too soon
    bar.update(70, 110, loss="loss 0.2")  # t=60: due; 65 steps in 70 s → 40 left ≈ 43 s
    bar.update(110, 110, loss="loss 0.1")  # the end always prints
    lines = out.getvalue().splitlines()
    assert lines[0] == "train: step 10/110 (9%), loss 0.5, 300 images/s, ETA 3m20s, elapsed 0m10s"
    assert lines[1] == "train: step 70/110 (64%), loss 0.2, 300 images/s, ETA 0m43s, elapsed 1m10s"
    assert lines[2].startswith("train: step 110/110 (100%), loss 0.1") and len(lines) == 3


def test_a_run_too_big_for_the_machine_is_announced(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import ddim.memory

    estimate = ddim.memory.estimate_training(tiny_config(work).unet_config())
    monkeypatch.setattr(ddim.memory, "available_bytes", lambda device: estimate.peak(8))  # batch 8 fits, 16 not
    code, _, err = run(["train", "--max-steps", "2", "--sample-every", "0", *TINY_ARGS], capsys)
    assert code == 0, err
    warning = next(line for line in err.splitlines() if line.startswith("warning:"))
    assert f"this run needs about {ddim.memory.gigabytes(estimate.peak(16))} of memory at its peak" in warning
    assert "lower --batch-size (about 8 fits) or train on a GPU" in warning


@pytest.mark.parametrize("batch", ["100000000000000", "1000000000"])  # if refused no more: a fast failing allocation
def test_a_run_that_cannot_fit_twice_over_is_refused_before_anything_is_made(
    work: Path, capsys: pytest.CaptureFixture, batch: str
) -> None:
    """Past ``HOPELESS`` times the machine's memory no misestimate explains it: one line, exit 2, no run directory
    (the kernel would otherwise kill the run at its first step, or the allocator raise)."""
    code, _, err = run(["train", "--max-steps", "2", "--sample-every", "0", *TINY_ARGS, "--batch-size", batch], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "of memory at its peak" in err and "more than twice the" in err and "lower --batch-size" in err, err
    assert not (work / "run").exists() and not any(work.rglob("config.json")), err


def test_memory_estimate_grows_with_the_batch_and_the_model() -> None:
    from ddim.memory import estimate_training
    from ddim.unet import preset

    digits, celeba = estimate_training(preset("digits")), estimate_training(preset("celeba"))
    assert 0 < digits.per_image < celeba.per_image and digits.fixed < celeba.fixed
    assert celeba.peak(128) > 20 * 2**30  # the configuration that was killed at 21 GB on a CPU machine
    assert celeba.largest_batch(celeba.peak(16)) == 16 and celeba.largest_batch(0) == 0
    assert TINY  # the tiny UNet stays the suite's training size


def test_missing_data_is_the_only_line_even_when_the_run_is_too_big(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`make train-celeba` without the images: the memory warning waits for the data, so the error stands alone."""
    import ddim.memory

    monkeypatch.setattr(ddim.memory, "available_bytes", lambda device: 1)  # any run is too big
    argv = ["train", "--dataset", "celeba", "--data-root", work / "data", "--max-steps", "2",
            "--run-dir", work / "runs" / "celeba", "--wandb", "disabled", "--device", "cpu"]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 2 and err.strip().splitlines() == [err.strip()], err
    assert err.startswith("error: CelebA not found") and "img_align_celeba" in err
