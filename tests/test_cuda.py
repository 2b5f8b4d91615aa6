"""The CUDA paths, end to end; skipped where no GPU is present (CI has none, lent machines do).

Run on a GPU machine with ``pytest tests/test_cuda.py``. The CPU-side equivalents of these code paths
(channels_last, autocast flags, pinned noise) are exercised in test_training.py and test_perf.py.
"""

from __future__ import annotations

import pytest
import torch

from ddim import sampling, schedules
from ddim.checkpoint import load_checkpoint
from ddim.train_config import TrainConfig
from ddim.training import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0, num_groups=4)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("cuda") / "run"
    cfg = TrainConfig(
        dataset="digits", run_dir=str(path), batch_size=32, max_steps=20, save_every=10, log_every=5,
        sample_every=20, grid_size=4, grid_steps=3, device="cuda", bf16=True, channels_last=True, **TINY,
    )  # fmt: skip
    return cfg, train(cfg)


@pytest.fixture(autouse=True)
def no_tf32():
    """Float32 kernels without TF32 while comparing with the CPU (the product turns TF32 on for speed)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-3) -> bool:
    """Equal up to float summation order, relative to the largest value (unclipped DDIM reaches |x| ≈ 100s)."""
    return bool((a - b).abs().max() <= rel * max(1.0, float(a.abs().max())))


def test_bf16_channels_last_training_runs_and_checkpoints(run) -> None:
    cfg, result = run
    assert result.step == 20 and result.checkpoint is not None and result.last_loss is not None
    # Portable: a checkpoint written on the GPU holds CPU tensors only (a plain torch.load works without CUDA).
    raw = torch.load(result.checkpoint, weights_only=True)
    tensors = [t for part in ("model", "ema") for t in raw[part].values()]
    tensors += [t for s in raw["optimizer"]["state"].values() for t in s.values() if isinstance(t, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    assert raw["model"]._metadata == load_checkpoint(result.checkpoint).state["model"]._metadata  # kept in the copy


def test_resume_on_cuda_is_bit_exact_with_deterministic_kernels(tmp_path) -> None:
    base = dict(
        dataset="digits", batch_size=16, save_every=4, log_every=4, sample_every=0, device="cuda",
        deterministic=True, **TINY,
    )  # fmt: skip
    full = train(TrainConfig(run_dir=str(tmp_path / "a"), max_steps=8, **base))
    train(TrainConfig(run_dir=str(tmp_path / "b"), max_steps=4, **base))
    resumed = train(TrainConfig(run_dir=str(tmp_path / "b"), max_steps=8, **base), resume=True)
    a, b = load_checkpoint(full.checkpoint).state, load_checkpoint(resumed.checkpoint).state
    for name in ("model", "ema"):
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), (name, k)


def test_cuda_sampling_matches_cpu(run) -> None:
    _, result = run
    ck = load_checkpoint(result.checkpoint)
    ts = schedules.timesteps(10, ck.diffusion.T)
    out = {}
    for device in ("cpu", "cuda"):
        model = ck.build_model(device)
        noise = sampling.SeededNoise(range(8), (1, 16, 16), device)
        out[device] = sampling.sample(model, noise.initial(), ck.alpha_bar(), ts, eta=1.0, noise=noise).cpu()
    # Same seeds give the same noise on both devices (streams live on the CPU); cuDNN sums in another order.
    assert _close(out["cpu"], out["cuda"]), (out["cpu"] - out["cuda"]).abs().max()


def test_metrics_on_cuda_equal_cpu(tmp_path) -> None:
    from bench.metrics.fidelity import compute_metrics
    from ddim import data
    from ddim.images import to_uint8

    x = to_uint8(data.load_dataset("digits", split="test").images[:200])
    kw = dict(dataset="digits", metrics=("fid",), cache_dir=tmp_path / "cache")
    # TF32 on, as after a training run: scoring turns it off itself, or the FID would move in the 3rd decimal.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    cpu = compute_metrics(x, device="cpu", **kw)
    gpu = compute_metrics(x, device="cuda", **kw)
    assert gpu["fid"] == pytest.approx(cpu["fid"], rel=1e-3, abs=1e-3)


def test_pinned_noise_draws_equal_the_cpu_draws() -> None:
    seeds, shape = range(5, 13), (3, 5, 7)
    cpu, gpu = sampling.SeededNoise(seeds, shape), sampling.SeededNoise(seeds, shape, "cuda")
    x = torch.zeros(1, device="cuda")
    draws = [(cpu.initial(), gpu.initial())] + [(cpu(i, x.cpu()), gpu(i, x)) for i in range(5)]
    for a, b in draws:  # asynchronous copies from page-locked buffers: every draw arrives intact
        assert b.device.type == "cuda" and torch.equal(a, b.cpu())


def test_compiled_sampling_on_cuda_matches_eager(run) -> None:
    from ddim.runtime import compiled

    _, result = run
    ck = load_checkpoint(result.checkpoint)
    ts, device = schedules.timesteps(5, ck.diffusion.T), torch.device("cuda")
    out = []
    for choice in (False, True):
        model = compiled(ck.build_model(device), device, choice)
        noise = sampling.SeededNoise(range(8), (1, 16, 16), device)
        out.append(sampling.sample(model, noise.initial(), ck.alpha_bar(), ts, eta=1.0, noise=noise).cpu())
    assert _close(out[0], out[1]), (out[0] - out[1]).abs().max()  # float summation order only


def test_sampling_batch_fits_the_card(run) -> None:
    from ddim.memory import sampling_batch

    model = load_checkpoint(run[1].checkpoint).build_model("cuda")
    device = torch.device("cuda")
    assert sampling_batch(model, (1, 16, 16), device, cap=64) == 64
    free = torch.cuda.mem_get_info(device)[0]
    batch = sampling_batch(model, (1, 16, 16), device, cap=1 << 14)
    assert batch >= 8 and batch & (batch - 1) == 0  # a power of two, measured from the free memory
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():  # the batch it chose runs within the budget: half the free memory
        model(torch.zeros(batch, 1, 16, 16, device=device), torch.zeros(batch, dtype=torch.long, device=device))
    torch.cuda.synchronize(device)
    assert torch.cuda.max_memory_allocated(device) - before <= 0.5 * free


def test_sample_command_sizes_its_batch_and_runs_bf16_on_the_card(run, tmp_path) -> None:
    from bench.generate import generate
    from bench.sample_config import SampleConfig

    common = dict(checkpoint=str(run[1].checkpoint), n=3, steps=2, device="cuda", batch_size="auto")
    for bf16 in (False, True):
        manifest = generate(SampleConfig(out=str(tmp_path / str(bf16)), bf16=bf16, **common))
        assert manifest["last_run"]["batch_size"] == 3 and manifest["settings"]["bf16"] is bf16  # n caps it


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_workers_spread_over_the_visible_gpus() -> None:
    from bench.sweep.devices import assign_devices

    n = torch.cuda.device_count()
    assert assign_devices("auto", n) == [f"cuda:{i}" for i in range(n)]
