"""The ``ddimbench`` CLI end to end: train → sample → metrics on digits, and the bad-input catalogue.

Commands run in-process through ``bench.cli.main(argv)`` (the console script's entry point), so the
exit codes and the one-line error contract are exactly what a user sees.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.cli import run
from PIL import Image

from bench.cli import main

TINY_TRAIN = [
    "--max-steps",
    "12",
    "--batch-size",
    "8",
    "--save-every",
    "6",
    "--sample-every",
    "12",
    "--grid-size",
    "4",
    "--grid-steps",
    "2",
    "--log-every",
    "4",
    "--wandb",
    "disabled",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--run-dir", str(path), *TINY_TRAIN]) == 0
    return path


def test_train_writes_a_complete_run(run_dir: Path) -> None:
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-0000006.pt", "step-0000012.pt"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["max_steps"] == 12 and config["unet"]["resolution"] == 16
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 8, 12]
    assert (run_dir / "samples" / "step-0000012.png").is_file()


def test_train_refuses_an_existing_run_without_resume(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run(["train", "--run-dir", run_dir, *TINY_TRAIN], capsys)
    assert code == 2 and "--resume" in err and len(err.strip().splitlines()) == 1


def test_dry_run_prints_the_resolved_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(["train", "--run-dir", tmp_path / "x", "--lr", "1e-3", "--dry-run"], capsys)
    assert code == 0 and json.loads(out)["lr"] == 1e-3
    assert not (tmp_path / "x").exists()


def test_sample_writes_exactly_n_pngs_and_a_grid(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "s"
    code, _, _ = run(
        [
            "sample",
            "--checkpoint",
            run_dir,
            "--steps",
            "3",
            "-n",
            "7",
            "--seed",
            "5",
            "--out",
            out,
            "--batch-size",
            "3",
        ],
        capsys,
    )
    assert code == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [f"{i:06d}.png" for i in range(7)] + ["grid.png"]
    manifest = json.loads((out / "samples.json").read_text())
    assert manifest["complete"] and manifest["settings"]["nfe"] == 3 and len(manifest["files"]) == 7
    with Image.open(out / "000000.png") as im:
        assert im.size == (16, 16) and im.mode == "L"


@pytest.mark.timeout(120)  # a rerun that never ends fails here, not at the suite's 600 s
def test_sample_pixels_depend_only_on_the_seed(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Batch size, a checkpoint file vs its run dir, and an interrupted-then-resumed run change nothing."""
    ckpt = run_dir / "checkpoints" / "step-0000012.pt"
    common = ["--steps", "3", "--eta", "1", "-n", "5", "--seed", "11"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(["sample", "--checkpoint", run_dir, "--out", a, "--batch-size", "5", *common], capsys)[0] == 0
    assert run(["sample", "--checkpoint", ckpt, "--out", b, "--batch-size", "2", *common], capsys)[0] == 0
    for i in range(5):
        assert (a / f"{i:06d}.png").read_bytes() == (b / f"{i:06d}.png").read_bytes()
    # Resume: lose two samples (as a kill would), rerun the same command; they come back identical.
    (b / "000001.png").unlink()
    (b / "000004.png").unlink()
    assert run(["sample", "--checkpoint", ckpt, "--out", b, "--batch-size", "2", *common], capsys)[0] == 0
    for i in range(5):
        assert (a / f"{i:06d}.png").read_bytes() == (b / f"{i:06d}.png").read_bytes()
    # A different seed gives different pixels (the test above could not pass by accident).
    c = tmp_path / "c"
    assert run(["sample", "--checkpoint", ckpt, "--out", c, *common[:-1], "12"], capsys)[0] == 0
    assert (a / "000000.png").read_bytes() != (c / "000000.png").read_bytes()
    # Sample i uses seed + i: seed 12's sample 0 is seed 11's sample 1.
    for i in range(4):
        assert (c / f"{i:06d}.png").read_bytes() == (a / f"{i + 1:06d}.png").read_bytes()


def test_bracketed_paths_print_literally(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "s[red]" / "x[/y]"  # rich markup if it were interpreted: a colour and a closing tag
    code, _, err = run(["sample", "--checkpoint", run_dir, "--steps", "2", "-n", "2", "--out", out], capsys)
    assert code == 0 and f"to {out}" in err and (out / "000001.png").is_file()


def test_metrics_scores_a_sample_folder(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "s"
    assert run(["sample", "--checkpoint", run_dir, "--steps", "2", "-n", "20", "--out", out], capsys)[0] == 0
    code, stdout, _ = run(
        [
            "metrics",
            out,
            "--dataset",
            "digits",
            "--metric",
            "fid",
            "--json",
            "-n",
            "20",
            "--cache-dir",
            tmp_path / "cache",
        ],
        capsys,
    )
    assert code == 0
    result = json.loads(stdout)
    assert result["n"] == 20 and result["fid"] > 0 and result["extractor"] == "classifier"
    # The manifest makes the grid invisible to scoring; a count mismatch is refused.
    code, _, err = run(
        ["metrics", out, "--dataset", "digits", "--metric", "fid", "-n", "21", "--cache-dir", tmp_path / "cache"],
        capsys,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1


def _corrupt(tmp: Path, run_dir: Path) -> Path:
    bad = tmp / "bad.pt"
    bad.write_bytes((run_dir / "checkpoints" / "step-0000012.pt").read_bytes()[:1000])
    return bad


BAD_INPUT = {
    "unknown dataset": (["train", "--dataset", "imagenet"], "unknown --dataset 'imagenet'; choose one of digits"),
    "unknown beta schedule": (
        ["train", "--beta-schedule", "exp", "--dry-run"],
        "unknown --beta-schedule 'exp'; choose one of linear",
    ),
    "missing mnist files": (
        ["train", "--dataset", "mnist", "--data-root", "{tmp}/nodata", "--run-dir", "{tmp}/r"],
        "MNIST not found: expected",
    ),
    "empty image folder": (
        ["train", "--dataset", "folder", "--data-root", "{tmp}", "--preset", "digits", "--run-dir", "{tmp}/r"],
        "no images in",
    ),
    "unknown option": (["sample", "--checkpoint", "{run}", "--bogus"], "--bogus"),
    "unknown spacing": (
        ["sample", "--checkpoint", "{run}", "--spacing", "cubic", "--out", "{tmp}/o"],
        "unknown --spacing 'cubic'; choose one of uniform",
    ),
    "unknown sampler": (
        ["sample", "--checkpoint", "{run}", "--sampler", "euler", "--out", "{tmp}/o"],
        "unknown --sampler 'euler'; choose one of ddim",
    ),
    "steps zero": (
        ["sample", "--checkpoint", "{run}", "--steps", "0", "--out", "{tmp}/o"],
        "steps must be an integer in 1..1000",
    ),
    "steps above T": (["sample", "--checkpoint", "{run}", "--steps", "1001", "--out", "{tmp}/o"], "T = 1000"),
    "steps not a number": (
        ["sample", "--checkpoint", "{run}", "--steps", "a", "--out", "{tmp}/o"],
        "'--steps': Input should be a valid integer",
    ),
    "negative eta": (
        ["sample", "--checkpoint", "{run}", "--eta", "-1", "--out", "{tmp}/o"],
        "eta must be a finite number ≥ 0",
    ),
    "n zero": (["sample", "--checkpoint", "{run}", "-n", "0", "--out", "{tmp}/o"], "-n must be ≥ 1"),
    "eta outside eq. 12": (
        ["sample", "--checkpoint", "{run}", "--eta", "1.5", "--steps", "10", "--out", "{tmp}/o"],
        "eta=1.5 gives σ² > 1 − ᾱ_prev at t=900→800, outside eq. 12",
    ),
    "checkpoint path with brackets": (
        ["sample", "--checkpoint", "{tmp}/nope[/x]", "--out", "{tmp}/o"],
        "nope[/x] does",
    ),
    "seed past 2^32": (
        ["sample", "--checkpoint", "{run}", "--seed", "4294967295", "-n", "2", "--out", "{tmp}/o"],
        "exceeds the largest seed",
    ),
    "eta with another sampler": (
        ["sample", "--checkpoint", "{run}", "--sampler", "plms", "--eta", "0.5", "--out", "{tmp}/o"],
        "--eta applies to the ddim sampler only",
    ),
    "sweep: value with brackets": (["sweep", "spacing=[uniform]", "checkpoint={run}"], "'[uniform]'"),
    "sweep: unknown --wandb": (["sweep", "steps=2", "checkpoint={run}", "--wandb", "bogus"], "unknown --wandb 'bogus'"),
    "report: unknown --wandb": (["report", "x", "--wandb", "bogus"], "unknown --wandb 'bogus'; choose one of online"),
    "sweep: artifacts under a file": (["sweep", "checkpoint={run}", "artifacts={tmp}/afile/sub"], "afile is a file"),
    "sweep: colliding etas": (["sweep", "eta=0.1234567,0.1234568", "checkpoint={run}"], "name the same cell"),
    "sweep: seeds past 2^32": (
        ["sweep", "seed_base=4294967280", "seeds=0,1", "n=20", "checkpoint={run}"],
        "exceeds 2^32 − 1; use a smaller seed_base",
    ),
    "sweep: n past 2^32": (
        ["sweep", "n=99999999999", "checkpoint={run}"],
        "exceeds 2^32 − 1; use a smaller n or fewer",
    ),
    "sweep: eta outside eq. 12": (["sweep", "eta=0,1.5", "steps=10", "checkpoint={run}"], "outside eq. 12"),
    "sweep: search eta above 1": (["sweep", "--search", "pareto", "eta=0..2", "checkpoint={run}"], "within 0..1"),
    "missing checkpoint": (["sample", "--checkpoint", "{tmp}/nothing", "--out", "{tmp}/o"], "does not exist"),
    "run dir without checkpoints": (["sample", "--checkpoint", "{tmp}", "--out", "{tmp}/o"], "no checkpoint"),
    "corrupt checkpoint": (["sample", "--checkpoint", "{bad}", "--out", "{tmp}/o"], "corrupt"),
    "unknown device": (
        ["sample", "--checkpoint", "{run}", "--device", "tpu", "--out", "{tmp}/o"],
        "unknown device 'tpu'",
    ),
    "resume with another architecture": (["train", "--run-dir", "{run}", "--resume", "--ch", "16"], "architecture"),
    "sweep: checkpoint of another dataset": (
        ["sweep", "dataset=mnist", "checkpoint={run}"],
        "1x16px images but mnist is 1x32px",
    ),
    "sweep: --device and device=": (
        ["sweep", "device=cpu", "--device", "cpu", "checkpoint={run}"],
        "device is given twice",
    ),
    "sweep: unknown --device": (["sweep", "--device", "tpu", "checkpoint={run}"], "unknown device 'tpu'"),
    "sweep: empty value": (["sweep", "steps=", "checkpoint={run}"], "steps= has no value"),
    "sweep: not a number": (["sweep", "steps=a", "checkpoint={run}"], "steps='a' is not an integer"),
    "sweep: no key": (["sweep", "=3", "checkpoint={run}"], "'=3' has no key"),
    "sweep: bare word": (["sweep", "steps", "checkpoint={run}"], "'steps' is not KEY=VALUE"),
    "sweep: steps zero": (["sweep", "steps=0", "checkpoint={run}"], "steps=0 is out of range"),
    "sweep: steps above T": (
        ["sweep", "steps=2000", "checkpoint={run}"],
        "steps=2000 exceeds the checkpoint's T = 1000",
    ),
    "sweep: negative eta": (["sweep", "eta=-1", "checkpoint={run}"], "eta=-1 is out of range"),
    "sweep: unknown key": (["sweep", "stpes=10", "checkpoint={run}"], "did you mean 'steps'"),
    "sweep: repeated key": (["sweep", "steps=10", "steps=20", "checkpoint={run}"], "steps is given twice"),
    "sweep: n zero": (["sweep", "n=0", "checkpoint={run}"], "n=0 is out of range"),
    "sweep: unknown sampler": (["sweep", "sampler=euler", "checkpoint={run}"], "unknown sampler 'euler'"),
    "sweep: unknown extractor": (["sweep", "extractor=clip", "checkpoint={run}"], "unknown extractor 'clip'"),
    "sweep: range outside search": (["sweep", "steps=5..10", "checkpoint={run}"], "ranges need --search pareto"),
    "sweep: corrupt checkpoint": (["sweep", "checkpoint={bad}"], "corrupt"),
    "sweep: unreachable storage": (
        ["sweep", "steps=2", "n=2", "metrics=fid", "checkpoint={run}", "--storage", "postgresql://u:p@127.0.0.1:1/db"],
        "cannot open sweep storage",
    ),
    "report of an unknown sweep": (["report", "nope", "--storage", "sqlite:///{tmp}/s.db"], "no sweep named"),
    "metrics of a missing folder": (["metrics", "{tmp}/none", "--dataset", "digits"], "does not exist"),
    "metrics with unknown extractor": (
        ["metrics", "{tmp}", "--dataset", "digits", "--extractor", "clip"],
        "unknown --extractor 'clip'; choose one of classifier, inception",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_2(
    case: str, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv, needle = BAD_INPUT[case]
    subs = {"{tmp}": str(tmp_path), "{run}": str(run_dir), "{bad}": str(_corrupt(tmp_path, run_dir))}
    for k, v in subs.items():
        argv = [a.replace(k, v) for a in argv]
    if case == "metrics with unknown extractor":
        (tmp_path / "x.png").write_bytes((run_dir / "samples" / "step-0000012.png").read_bytes())
    if case == "sweep: artifacts under a file":
        (tmp_path / "afile").write_text("a file, not a folder")
    monkeypatch.chdir(tmp_path)  # sweeps default to ./ddimbench-sweeps.db: a stray store would show up here
    code, out, err = run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert needle.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in out + err
    left = {p.name for p in tmp_path.iterdir()} - {"bad.pt", "x.png", "afile"}  # the inputs this test made
    assert not left, left  # nothing partial: no output folder, store, run directory or temp file


def test_unwritable_output_is_one_line(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run(["sample", "--checkpoint", run_dir, "--out", blocker / "sub", "--steps", "2", "-n", "2"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--out" in err


def test_every_command_has_help(capsys: pytest.CaptureFixture) -> None:
    for command in ("train", "sample", "classifier", "metrics", "sweep", "report", "import-weights"):
        code, out, _ = run([command, "--help"], capsys)
        assert code == 0 and "Usage" in out and "--" in out, command


@pytest.mark.slow
def test_console_script_exit_code_in_a_fresh_process(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cli", "sample", "--checkpoint", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_importing_ddim_pulls_in_no_harness_dependency() -> None:
    code = (
        "import sys, ddim, ddim.sampling, ddim.schedules, ddim.training, ddim.checkpoint, ddim.data, ddim.unet; "
        "bad = [m for m in ('wandb', 'optuna', 'typer', 'torch_fidelity', 'bench') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_checkpoint_round_trips_through_sample(run_dir: Path) -> None:
    from ddim.checkpoint import load_checkpoint

    ck = load_checkpoint(run_dir)
    assert ck.step == 12
    model = ck.build_model()
    x = torch.zeros(1, 1, 16, 16)
    assert model(x, torch.tensor([3])).shape == x.shape
    # The built model holds the saved weights: EMA by default, the raw weights with ema=False, and they differ.
    saved = torch.load(ck.path, map_location="cpu", weights_only=True)
    for ema, key in ((True, "ema"), (False, "model")):
        state = ck.build_model(ema=ema).state_dict()
        assert state.keys() == saved[key].keys()
        assert all(torch.equal(state[k], saved[key][k]) for k in state), key
    assert any(not torch.equal(saved["ema"][k], saved["model"][k]) for k in saved["model"])


def test_train_logs_to_an_offline_wandb_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No W&B server here: the run goes offline under <run-dir>/wandb and holds loss, lr and the grid."""
    from bench.tracking.wandb_run import read_offline_run

    monkeypatch.chdir(tmp_path)
    argv = ["train", "--run-dir", "run", *TINY_TRAIN[:-2], "--wandb", "offline"]
    assert main(argv) == 0
    (run,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    logged = read_offline_run(run)
    assert logged["config"]["max_steps"] == 12 and logged["run"]["job_type"] == "train"
    rows = {row["step"]: row for row in logged["history"]}
    assert sorted(k for k in rows if "loss" in rows[k]) == [4, 8, 12]
    assert {"lr", "grad_norm", "images_per_s"} <= set(rows[12]) and "samples" in rows[12]
    assert logged["run"]["exit_code"] == 0


def test_missing_inception_weights_offline_is_exit_2(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--extractor inception` with no local weights: the how-to line, before any sampling."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.delenv("DDIMBENCH_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["sweep", "steps=2", "n=10", "extractor=inception", f"checkpoint={run_dir}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--inception-weights" in err and "DDIMBENCH_INCEPTION_WEIGHTS" in err
    assert not (tmp_path / "ddimbench-sweeps").exists()  # nothing half-made
