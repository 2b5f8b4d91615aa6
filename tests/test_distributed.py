"""DDP under torchrun (2 CPU processes, gloo) against one process with the same global batch.

Why not bit-exact: DDP all-reduces (sums) the two ranks' gradients of their half-batch means and
divides by 2, while one process sums the per-image losses of the whole batch in one reduction. The
two float32 summation orders differ in the last bits (~1e-7 relative). The data, t and ε every rank
sees are exactly those of the single process (checked bit for bit below).

Tolerances, after 6 steps at lr 1e-3: per-step losses agree to 1e-6 relative (measured ~1e-7);
weights, EMA and Adam moments to 5e-5 absolute (measured 1.3e-5). The weight bound is looser than
float rounding because Adam normalises each gradient entry by its own magnitude: an entry whose
exact gradient is ~0 is pure rounding noise (e.g. the attention key bias, which softmax ignores), and
its sign, which the summation order decides, moves that weight by up to ~lr per step.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers import ROOT as REPO
from helpers.training import tiny_config

from ddim.batches import Batches
from ddim.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint
from ddim.data import load_dataset
from ddim.distributed import Context, env_world, shard
from ddim.errors import DDIMError
from ddim.train_config import TrainConfig
from ddim.training import train

pytestmark = pytest.mark.slow  # torchrun ranks in subprocesses
ATOL = 5e-5  # max abs difference of weights / EMA / Adam moments (see the module doc)
LOSS_RTOL = 1e-6
# Both ranks share torchrun's stdout: one os.write per line (atomic below PIPE_BUF) keeps lines whole.
SCRIPT = """
import json, os, sys, torch
torch.set_num_threads(1)
from ddim.train_config import TrainConfig
from ddim.training import train
r = train(TrainConfig.from_dict(json.loads(sys.argv[1])), resume=sys.argv[2] == "resume")
line = "RESULT " + json.dumps({"step": r.step, "interrupted": r.interrupted, "checkpoint": str(r.checkpoint)})
os.write(1, (line + chr(10)).encode())
"""


def tiny(run_dir: Path, **overrides) -> TrainConfig:
    return tiny_config(run_dir, **{**dict(warmup=2, max_steps=6, save_every=3, log_every=1), **overrides})


# --- pieces that need no second process ---------------------------------------------------------


def test_shard_splits_the_global_batch():
    assert [shard(12, r, 3) for r in range(3)] == [slice(0, 4), slice(4, 8), slice(8, 12)]
    with pytest.raises(DDIMError, match="--batch-size 10 is the global batch and must be divisible by the 4 ranks"):
        shard(10, 1, 4)


def test_env_world(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert env_world() == (0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(DDIMError, match="inconsistent torchrun environment"):
        env_world()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(DDIMError, match="must be integers"):
        env_world()


@pytest.mark.parametrize("rank", ["abc", "1.5"])
def test_train_with_a_rank_that_is_no_integer_is_one_line_and_makes_nothing(tmp_path, monkeypatch, capsys, rank):
    """``RANK=abc ddimbench train ...`` outside torchrun: refused before the run directory exists."""
    from helpers.cli import run_err

    for key in ("WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RANK", rank)
    run = tmp_path / "run"
    code, err = run_err(["train", "--dataset", "digits", "--run-dir", run, "--max-steps", "1", "--batch-size", "4",
                         "--device", "cpu", "--num-workers", "0", "--wandb", "disabled"], capsys)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "RANK, WORLD_SIZE and LOCAL_RANK must be integers" in err and not run.exists(), err


def test_a_plain_process_never_touches_torch_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with Context.from_env("cpu") as ctx:
        assert (ctx.rank, ctx.world, ctx.is_main, ctx.enabled) == (0, 1, True, False)
        assert ctx.any(True) and not ctx.any(False)
        assert ctx.share(lambda: 3) == 3 and ctx.on_main(lambda: 4) == 4
        with pytest.raises(DDIMError, match="boom"):
            ctx.on_main(lambda: (_ for _ in ()).throw(DDIMError("boom")))
    assert not dist.is_initialized()


class _Files(torch.utils.data.Dataset):
    """The digits images without ``.images``: forces the DataLoader path (module level: picklable)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.x = images

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], 0


@pytest.mark.parametrize("hflip", [False, True])
def test_rank_slices_are_exactly_the_single_process_batch(hflip):
    ds = load_dataset("digits")
    common = dict(seed=3, T=1000, device=torch.device("cpu"), hflip=hflip)
    whole = Batches(ds, batch_size=8, part=slice(0, 8), **common)
    halves = [Batches(ds, batch_size=8, part=shard(8, r, 2), **common) for r in range(2)]
    loaders = [
        Batches(_Files(ds.images), batch_size=8, part=shard(8, r, 2), num_workers=r, steps=range(5, 9), **common)
        for r in range(2)
    ]
    for step in range(5, 9):
        x, (t, eps) = whole.x0(step), whole.noise(step)
        assert torch.equal(torch.cat([h.x0(step) for h in halves]), x)
        assert torch.equal(torch.cat([ld.x0(step) for ld in loaders]), x)
        noise = [h.noise(step) for h in halves]
        assert torch.equal(torch.cat([n[0] for n in noise]), t) and torch.equal(torch.cat([n[1] for n in noise]), eps)
    assert not torch.equal(whole.x0(1), whole.x0(2))
    for b in loaders:
        b.close()


# --- two processes --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _results(out: str) -> list[dict]:
    return [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]


def _max_diff(a: Path, b: Path) -> float:
    sa, sb = load_checkpoint(a).state, load_checkpoint(b).state
    diffs = [(sa[k][n] - sb[k][n]).abs().max().item() for k in ("model", "ema") for n in sa[k]]
    for st_a, st_b in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        diffs += [(st_a[n].float() - st_b[n].float()).abs().max().item() for n in ("exp_avg", "exp_avg_sq")]
    return max(diffs)


def _torchrun(cfg: TrainConfig, tmp_path: Path, mode: str = "fresh") -> subprocess.CompletedProcess:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(script), json.dumps(cfg.to_dict()), mode]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)


def _launch(cfg: TrainConfig, tmp_path: Path, port: int, mode: str = "fresh") -> list[subprocess.Popen]:
    """What torchrun does, by hand, so a test can signal one rank."""
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    procs = []
    for rank in range(2):
        env = {**_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
        env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        cmd = [sys.executable, str(script), json.dumps(cfg.to_dict()), mode]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    return procs


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """One process, global batch 16, 6 steps: what two ranks with 8 images each must reproduce."""
    return train(tiny(tmp_path_factory.mktemp("single") / "run")).checkpoint


def test_torchrun_two_ranks_match_one_process(tmp_path, single):
    cfg = tiny(tmp_path / "run")
    proc = _torchrun(cfg, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = _results(proc.stdout)
    assert len(results) == 2 and all(r["step"] == 6 and not r["interrupted"] for r in results)
    diff = _max_diff(checkpoint_path(cfg.run_dir, 6), single)
    assert diff <= ATOL, diff
    # Only rank 0 wrote: one log line per step, the newest `keep` checkpoints, one config.
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in list_checkpoints(cfg.run_dir)] == [3, 6]
    single_loss = [json.loads(line)["loss"] for line in (single.parents[1] / "metrics.jsonl").read_text().splitlines()]
    ddp_loss = [json.loads(line)["loss"] for line in lines]
    assert all(abs(a - b) <= LOSS_RTOL * a for a, b in zip(single_loss, ddp_loss)), (single_loss, ddp_loss)


def test_a_signal_on_one_rank_stops_both_at_the_same_step_then_resume(tmp_path):
    cfg = tiny(tmp_path / "run", max_steps=100_000, save_every=1000, log_every=1)
    procs = _launch(cfg, tmp_path, _free_port())
    metrics = tmp_path / "run" / "metrics.jsonl"
    end = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-3000:]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)
    procs[1].send_signal(signal.SIGTERM)  # only rank 1 is told to stop
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    results = [_results(o[0])[0] for o in outs]
    step = results[0]["step"]
    assert all(r["interrupted"] and r["step"] == step for r in results) and step < 100_000
    assert load_checkpoint(cfg.run_dir).step == step
    # Two ranks resume from that checkpoint and agree with one uninterrupted process.
    end_step = step + 3
    proc = _torchrun(tiny(tmp_path / "run", max_steps=end_step), tmp_path, "resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = train(tiny(tmp_path / "single", max_steps=end_step)).checkpoint
    assert _max_diff(checkpoint_path(cfg.run_dir, end_step), reference) <= ATOL


def test_indivisible_global_batch_is_refused_on_every_rank(tmp_path):
    proc = _torchrun(tiny(tmp_path / "run", batch_size=15), tmp_path)
    assert proc.returncode != 0
    assert "--batch-size 15 is the global batch and must be divisible by the 2 ranks" in proc.stderr
