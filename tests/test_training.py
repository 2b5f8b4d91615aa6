"""ddim.training: learning, exact resume after SIGKILL, signals, NaN stops, refusals, crash-safe writes.

Every run uses a tiny UNet through TrainConfig's architecture overrides (ch=8, two levels, no
attention: ~42k parameters, ~20 ms per step at batch 16 on one core).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.training import one_line, tiny_config

import ddim.training as training
from ddim.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint
from ddim.errors import DDIMError
from ddim.files import sha256_file
from ddim.train_config import TrainConfig
from ddim.training import train
from ddim.unet import UNet

REPO = Path(__file__).resolve().parents[1]
# The same global batch, weights and data draws as an in-process run (conftest uses one thread too).
# "slow" paces steps to >= 20 ms so a random kill reliably lands mid-run (timing never touches the numbers).
SCRIPT = """
import json, sys, time, torch
torch.set_num_threads(1)
from ddim.train_config import TrainConfig
from ddim.training import train
pace = (lambda step, metrics: time.sleep(0.02)) if sys.argv[3] == "slow" else None
r = train(TrainConfig.from_dict(json.loads(sys.argv[1])), resume=sys.argv[2] == "resume", progress=pace)
print(json.dumps({"step": r.step, "interrupted": r.interrupted, "checkpoint": str(r.checkpoint)}))
"""


tiny = tiny_config


def _tree_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_tree_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_tree_equal(x, y) for x, y in zip(a, b))
    return a == b


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a).state, load_checkpoint(b).state
    assert sa["step"] == sb["step"]
    for key in ("model", "ema", "optimizer"):
        assert _tree_equal(sa[key], sb[key]), f"{key} differs between {a} and {b}"


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return {(d := json.loads(line))["step"]: d["loss"] for line in lines}


def _spawn(cfg: TrainConfig, mode: str = "fresh", pace: str = "fast") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, json.dumps(cfg.to_dict()), mode, pace],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the training subprocess")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 40-step run: the weights every interrupted-and-resumed run must reproduce."""
    cfg = tiny(tmp_path_factory.mktemp("ref") / "run", max_steps=40, save_every=4, log_every=4)
    result = train(cfg)
    assert result.step == 40 and not result.interrupted
    return result.checkpoint


# --- learning ------------------------------------------------------------------------------------


def test_loss_falls_on_digits(tmp_path):
    logged: list[tuple[int, float]] = []
    result = train(tiny(tmp_path / "run", max_steps=80, log_every=10), log=lambda m, s: logged.append((s, m["loss"])))
    assert [s for s, _ in logged] == list(range(10, 81, 10))
    losses = [loss for _, loss in logged]
    # Window means over 10 steps each; ε-prediction starts near 256 (= pixels) and falls fast.
    assert sum(losses[-2:]) / 2 < 0.6 * losses[0], losses
    assert result.last_loss == losses[-1]
    assert _losses(tmp_path / "run") == dict(logged)


def test_run_directory_layout_and_grids(tmp_path):
    grids = []
    cfg = tiny(tmp_path / "run", max_steps=6, save_every=3, keep=1, sample_every=3, log_every=2)
    result = train(cfg, on_grid=lambda path, step: grids.append((path.name, step)))
    assert grids == [("step-0000003.png", 3), ("step-0000006.png", 6)]
    assert [p.name for _, p in list_checkpoints(cfg.run_dir)] == ["step-0000006.pt"]  # keep=1
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert TrainConfig.from_dict(config["train"]) == cfg and config["unet"]["ch"] == 8
    ck = load_checkpoint(cfg.run_dir)
    assert ck.step == 6 == result.step and ck.unet == cfg.unet_config() and ck.dataset["name"] == "digits"
    assert TrainConfig.from_dict(ck.train) == cfg


def test_progress_every_step_and_callers_rng_untouched(tmp_path):
    seen = []
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    train(tiny(tmp_path / "run", max_steps=7, log_every=3), progress=lambda s, m: seen.append((s, m["loss"])))
    assert torch.equal(torch.rand(3), expected)
    assert [s for s, _ in seen] == list(range(1, 8))
    # The loss shown is the last logged one: progress never waits for the device.
    assert seen[0][1] is None and seen[2][1] is not None and seen[3][1] == seen[2][1]


@pytest.mark.parametrize("ema_decay", [0.9999, 0.05], ids=["ramp", "mu"])
def test_ema_follows_the_ramped_decay_rule(tmp_path, ema_decay):
    """After step n+1, ema = d·ema + (1 − d)·θ_{n+1} with d = min(μ, (1+n)/(10+n)) and ema₀ = θ₀.

    μ = 0.9999 exercises the ramp (d = 1/10, then 2/11); μ = 0.05 the cap (d = 0.05 both times).
    A large lr without warm-up makes each step move the weights far more than the tolerance.
    """
    cfg = tiny(tmp_path / "run", max_steps=2, save_every=1, keep=2, lr=1e-2, warmup=0, ema_decay=ema_decay)
    train(cfg)
    with torch.random.fork_rng():  # θ₀ exactly as train() builds it: seed, then the UNet
        torch.manual_seed(cfg.seed)
        init = UNet(cfg.unet_config())
    names = [name for name, _ in init.named_parameters()]
    assert sorted(names) == sorted(init.state_dict())  # parameters are the whole state: all of it is checked
    theta0 = {k: v.double() for k, v in init.state_dict().items()}
    states = [load_checkpoint(checkpoint_path(cfg.run_dir, s)).state for s in (1, 2)]
    theta = [{k: v.double() for k, v in st["model"].items()} for st in states]
    ema = [{k: v.double() for k, v in st["ema"].items()} for st in states]
    expected, prev = [], theta0
    for n in range(2):
        d = min(ema_decay, (1 + n) / (10 + n))
        prev = {k: d * prev[k] + (1 - d) * theta[n][k] for k in names}
        expected.append(prev)
    before = [theta0, theta[0]]
    for n in range(2):
        moved = max(float((theta[n][k] - before[n][k]).abs().max()) for k in names)
        assert moved > 1e-3, f"step {n + 1} barely moved the weights ({moved}): the check below would be weak"
        for k in names:
            torch.testing.assert_close(ema[n][k], expected[n][k], atol=1e-6, rtol=0, msg=f"ema{n + 1} {k}")


# --- exact resume --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)  # a rerun that never ends fails here, not at the suite's 600 s
def test_sigkill_at_a_random_moment_then_resume_is_bit_exact(tmp_path, reference):
    cfg = tiny(tmp_path / "run", max_steps=40, save_every=4, log_every=4)
    delay = random.Random().uniform(0.0, 0.5)  # the run has >= 36 x 20 ms left after its first checkpoint
    proc = _spawn(cfg, pace="slow")
    _wait_for(lambda: list_checkpoints(cfg.run_dir), proc)
    time.sleep(delay)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "finished before the kill; lower the delay"
    killed_at = list_checkpoints(cfg.run_dir)[-1][0]
    assert killed_at < 40, f"delay {delay:.3f}s"
    result = train(cfg, resume=True)
    assert result.step == 40
    _assert_same_weights(result.checkpoint, reference)
    assert _losses(cfg.run_dir) == _losses(reference.parents[1]), f"delay {delay:.3f}s"


@pytest.mark.slow
@pytest.mark.timeout(120)  # a rerun that never ends fails here, not at the suite's 600 s
def test_sigint_checkpoints_the_current_step_and_resume_is_bit_exact(tmp_path, reference):
    cfg = tiny(tmp_path / "run", max_steps=40, save_every=4, log_every=4)
    handler = signal.getsignal(signal.SIGINT)

    def interrupt(step, metrics):
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)

    result = train(cfg, progress=interrupt)
    assert result.interrupted and result.step == 7
    assert result.checkpoint == checkpoint_path(cfg.run_dir, 7) and load_checkpoint(cfg.run_dir).step == 7
    assert signal.getsignal(signal.SIGINT) is handler
    resumed = train(cfg, resume=True)
    assert resumed.step == 40 and not resumed.interrupted
    _assert_same_weights(resumed.checkpoint, reference)


@pytest.mark.slow
def test_second_sigint_aborts_at_once(tmp_path):
    def interrupt(step, metrics):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path / "run", max_steps=10), progress=interrupt)


@pytest.mark.slow
def test_sigterm_in_a_subprocess_checkpoints_and_exits_cleanly(tmp_path):
    cfg = tiny(tmp_path / "run", max_steps=100_000, save_every=1000, log_every=2)
    proc = _spawn(cfg)
    _wait_for(lambda: (tmp_path / "run" / "metrics.jsonl").exists(), proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["interrupted"] and 2 <= result["step"] < 100_000
    assert result["checkpoint"] == str(checkpoint_path(cfg.run_dir, result["step"]))
    assert load_checkpoint(cfg.run_dir).step == result["step"]


def test_resume_on_a_fresh_directory_starts_a_new_run(tmp_path):
    assert train(tiny(tmp_path / "run", max_steps=3), resume=True).step == 3


@pytest.mark.timeout(120)  # a rerun that never ends fails here, not at the suite's 600 s
def test_resume_of_a_finished_run_does_nothing_more(tmp_path):
    cfg = tiny(tmp_path / "run", max_steps=5)
    first = train(cfg)
    again = train(cfg, resume=True)
    assert again.step == 5 and again.checkpoint == first.checkpoint and not again.interrupted


# --- failed writes -------------------------------------------------------------------------------


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    cfg = tiny(tmp_path / "run", max_steps=20, save_every=5)
    real_save, saves, good = torch.save, [], {}

    def save(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            f.write(b"\0" * 4096)
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)

    def remember(step, metrics):
        if step == 6:
            good["sha"] = sha256_file(checkpoint_path(cfg.run_dir, 5))

    with pytest.raises(DDIMError) as info:
        train(cfg, progress=remember)
    target = checkpoint_path(cfg.run_dir, 10)
    assert one_line(info) == (
        f"could not write checkpoint {target}: No space left on device; free space or choose another --run-dir"
    )
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(os.listdir(folder)) == ["step-0000005.pt"]  # no temp file, no partial step 10
    assert sha256_file(folder / "step-0000005.pt") == good["sha"]
    monkeypatch.undo()
    assert train(cfg, resume=True).step == 20  # the run continues from step 5 once there is space


@pytest.mark.slow
@pytest.mark.timeout(120)  # a rerun that never ends fails here, not at the suite's 600 s
def test_killed_during_a_checkpoint_write_resumes_from_the_previous_one(tmp_path):
    cfg = tiny(tmp_path / "run", max_steps=6, save_every=3)
    train(tiny(tmp_path / "run", max_steps=3, save_every=3))
    stale = tmp_path / "run" / "checkpoints" / ".step-0000006.pt.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    with (tmp_path / "run" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss": 1.0}\n{"step": 6, "lo')  # lines past the checkpoint, one cut short
    (tmp_path / "run" / "samples").mkdir()
    (tmp_path / "run" / "samples" / "step-0000006.png").write_bytes(b"grid from lost steps")
    assert train(cfg, resume=True).step == 6
    assert not stale.exists() and not (tmp_path / "run" / "samples" / "step-0000006.png").exists()
    assert sorted(_losses(tmp_path / "run")) == [3, 5, 6] and _losses(tmp_path / "run")[5] != 1.0


# --- speed options run on the CPU too ------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{"channels_last": True}, {"compile": True, "compile_backend": "aot_eager"}, {"deterministic": True}],
    ids=["channels_last", "compile", "deterministic"],
)
def test_speed_options_train_the_same_model(tmp_path, options):
    base = train(tiny(tmp_path / "base", max_steps=4, log_every=1))
    other = train(tiny(tmp_path / "other", max_steps=4, log_every=1, **options))
    a, b = _losses(tmp_path / "base"), _losses(tmp_path / "other")
    assert a.keys() == b.keys()
    assert all(abs(a[k] - b[k]) <= 1e-5 * abs(a[k]) for k in a), (a, b)
    wa, wb = (load_checkpoint(r.checkpoint).state["model"] for r in (base, other))
    # Measured on CPU: channels_last 5.4e-6 (other summation order in the convolutions), compile and
    # deterministic 0; a step moves weights by up to lr = 1e-3, so 5e-5 is 10x the measured gap and 1/20 of a step.
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst <= 5e-5, worst


def test_resume_may_change_speed_options(tmp_path):
    cfg = tiny(tmp_path / "run", max_steps=2, save_every=2)
    train(cfg)
    resumed = train(tiny(tmp_path / "run", max_steps=4, save_every=2, channels_last=True), resume=True)
    assert resumed.step == 4


def test_file_backed_dataset_trains_through_the_loader(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(6):
        pixels = torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    cfg = tiny(tmp_path / "run", dataset="folder", data_root=str(folder), resolution=16, preset="digits")
    result = train(TrainConfig(**{**cfg.to_dict(), "max_steps": 3, "num_workers": 1, "batch_size": 4}))
    assert result.step == 3 and load_checkpoint(result.checkpoint).unet.in_channels == 3


def test_save_checkpoint_reexported_for_callers():
    assert training.save_grid is not None and save_checkpoint is not None
