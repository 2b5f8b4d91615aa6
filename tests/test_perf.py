"""Tests for the optimised UNet (exactness) and the benchmark code (bench.perf.run*); nothing here is timed.

The optimised ``ddim.unet`` (fused q/k/v product, in-place SiLU and residual adds, SiLU(temb) once,
cached embedding frequencies) is checked against a plain functional reference of the official
DDPM/DDIM network built from the same modules: same outputs and same gradients within float
tolerance. The benchmark runs end-to-end on a tiny config, and its GPU-path code (bf16 autocast,
channels_last, the card-sized batch) runs with device="cpu".
"""

from __future__ import annotations

import json
import math
import mmap
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from bench.perf import floor as perf_floor
from bench.perf import jobs as perf_jobs
from bench.perf import models as perf_models
from bench.perf import run as perf
from bench.perf import timing as perf_timing
from bench.perf import workload as perf_workload
from bench.perf.models import RunSettings
from ddim import fused_norm
from ddim.errors import DDIMError
from ddim.unet import AttnBlock, UNet, UNetConfig, timestep_embedding


def tiny(**overrides) -> UNetConfig:
    base = dict(resolution=16, in_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))
    base.update(dropout=0.0, num_groups=4)
    return UNetConfig(**{**base, **overrides})


# --- the unoptimised reference ------------------------------------------------------------------


def reference_forward(model: UNet, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The network as the official code writes it: out-of-place ops, 1x1-conv attention, NCHW."""
    c = model.config

    def resnet(block, h):
        out = block.conv1(F.silu(block.norm1(h)))
        out = out + block.temb_proj(F.silu(temb))[:, :, None, None]
        out = block.conv2(block.dropout(F.silu(block.norm2(out))))
        return (h if block.nin_shortcut is None else block.nin_shortcut(h)) + out

    def attention(a, h):
        B, C, H, W = h.shape
        n = a.norm(h)
        q, k, v = (proj(n).reshape(B, C, H * W) for proj in (a.q, a.k, a.v))
        w = torch.einsum("bci,bcj->bij", q, k).div(math.sqrt(C)).softmax(dim=-1)  # (B, HW, HW)
        return h + a.proj_out(torch.einsum("bij,bcj->bci", w, v).reshape(B, C, H, W))

    def down(d, h):
        return F.avg_pool2d(h, 2) if d.conv is None else d.conv(F.pad(h, (0, 1, 0, 1)))

    def up(u, h):
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return h if u.conv is None else u.conv(h)

    temb = model.temb.dense[1](F.silu(model.temb.dense[0](timestep_embedding(t, c.ch))))
    hs = [model.conv_in(x)]
    for i, level in enumerate(model.down):
        for j, block in enumerate(level.block):
            h = resnet(block, hs[-1])
            hs.append(attention(level.attn[j], h) if len(level.attn) else h)
        if i != len(model.down) - 1:
            hs.append(down(level.downsample, hs[-1]))
    h = resnet(model.mid.block_2, attention(model.mid.attn_1, resnet(model.mid.block_1, hs[-1])))
    for i in reversed(range(len(model.up))):
        level = model.up[i]
        for j, block in enumerate(level.block):
            h = resnet(block, torch.cat([h, hs.pop()], dim=1))
            h = attention(level.attn[j], h) if len(level.attn) else h
        if i != 0:
            h = up(level.upsample, h)
    return model.conv_out(F.silu(model.norm_out(h)))


def _grads(model: torch.nn.Module, out: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    (out - target).square().sum().backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"ch_mult": (1, 2, 2), "num_res_blocks": 2, "attn_resolutions": (16, 4)},
        {"resamp_with_conv": False, "in_channels": 1},
        {"num_groups": 1, "attn_resolutions": ()},
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_optimised_unet_matches_reference_outputs_and_gradients(overrides: dict, channels_last: bool) -> None:
    torch.manual_seed(0)
    config = tiny(**overrides)
    model = UNet(config).train()
    x = torch.randn(3, config.in_channels, 16, 16)
    t = torch.tensor([0, 421, 999])
    target = torch.randn_like(x)
    ref_out = reference_forward(model, x, t)
    ref_grads = _grads(model, ref_out, target)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    out = model(x, t)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-4)
    grads = _grads(model, out, target)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, atol=1e-4, rtol=1e-3, msg=name)


def test_cached_embedding_frequencies_stay_exact() -> None:
    """The frequency buffer is not in the state dict, and a model cast to bf16 still embeds t in float32."""
    model = UNet(tiny())
    assert "temb_freqs" not in model.state_dict()
    t = torch.tensor([0, 999])
    exact = timestep_embedding(t, 8)
    torch.testing.assert_close(model.temb_freqs, torch.exp(torch.arange(4.0) * -(math.log(10000) / 3)))
    seen: list[torch.Tensor] = []
    model.temb.dense[0].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    model.to(torch.bfloat16)  # casts the buffer too
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(2, 3, 16, 16), t)
    assert seen[0].dtype == torch.float32
    torch.testing.assert_close(seen[0], exact, rtol=0, atol=0)


def test_in_place_ops_do_not_touch_the_caller_tensors() -> None:
    torch.manual_seed(0)
    model = UNet(tiny()).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 7])
    x_copy = x.clone()
    with torch.no_grad():
        model(x, t)
    torch.testing.assert_close(x, x_copy, rtol=0, atol=0)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_every_block_keeps_the_input_memory_format(fmt: torch.memory_format) -> None:
    """No layout leaks: an NCHW network stays NCHW inside (and NHWC stays NHWC), so no hidden conversions."""
    from ddim.unet import AttnBlock, ResnetBlock

    model = UNet(tiny(ch=16, num_groups=4)).eval().to(memory_format=fmt)
    seen: list[bool] = []
    for module in model.modules():
        if isinstance(module, (AttnBlock, ResnetBlock)):
            module.register_forward_hook(lambda m, i, o: seen.append(o.is_contiguous(memory_format=fmt)))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 16, 16).contiguous(memory_format=fmt), torch.tensor([1, 2]))
    assert seen and all(seen) and out.is_contiguous(memory_format=fmt)


def test_unet_traces_as_one_graph() -> None:
    """``--compile`` needs no graph breaks in the UNet (one FX graph, nothing falls back to eager)."""
    import torch._dynamo as dynamo

    model = UNet(tiny()).train()
    explained = dynamo.explain(model)(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]))
    assert explained.graph_count == 1 and explained.graph_break_count == 0


# --- the GPU-path code on the CPU ---------------------------------------------------------------


def test_bf16_autocast_and_channels_last_train_step_on_cpu() -> None:
    """The settings the GPU path uses (bf16 autocast + channels_last) run a full train step on the CPU."""
    settings = RunSettings(device="cpu", bf16=True, channels_last=True)
    config = tiny()
    for name in ("ours", "diffusers"):
        torch.manual_seed(0)
        model = perf_models.prepare(perf_models.build(name, config).train(), settings)
        assert model.conv_in.weight.is_contiguous(memory_format=torch.channels_last) if name == "ours" else True
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        data = perf_workload.batch_data(config, 4, settings)
        assert data[0].is_contiguous(memory_format=torch.channels_last)
        perf_workload.train_step(model, opt, settings, data)
        assert all(torch.isfinite(p).all() for p in model.parameters())
    # bf16 autocast stays close to float32 for our network.
    torch.manual_seed(0)
    model = UNet(config).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 500])
    with torch.no_grad():
        reference = model(x, t)
        with perf_models.autocast(settings):
            out = model(x.contiguous(memory_format=torch.channels_last), t)
    assert out.dtype == torch.bfloat16 and (out.float() - reference).abs().max() < 0.1


def test_diffusers_twin_has_our_architecture() -> None:
    for config in (tiny(), tiny(ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8,), dropout=0.1)):
        ours, twin = UNet(config), perf_models.diffusers_twin(config)
        assert perf_models.n_params(ours) == perf_models.n_params(twin)
        shapes = sorted(p.numel() for p in ours.parameters())
        assert shapes == sorted(p.numel() for p in twin.parameters())
    with pytest.raises(DDIMError, match="resamples with a conv"):
        perf_models.diffusers_twin(tiny(resamp_with_conv=False))


def test_diffusers_twin_computes_our_function() -> None:
    from ddim.diffusers_weights import diffusers_to_ours

    torch.manual_seed(0)
    config = tiny(ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8,))
    twin = perf_models.diffusers_twin(config).eval()
    ours = UNet(config).eval()
    ours.load_state_dict(diffusers_to_ours(twin.unet.state_dict(), config))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t), twin(x, t), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("sampler", ["ddim", "sigma_hat", "ddpm", "dpmpp_2m", "plms", "pndm"])
def test_sampling_loops_never_synchronise_with_the_device(sampler: str) -> None:
    """Run on the ``meta`` device: any host sync inside a loop (``.item()``, ``bool(t)``, ``float(t)``, a
    data-dependent branch) raises there, so passing means the GPU path queues every step without waiting."""
    from ddim import sampling, schedules

    model = UNet(perf_workload.TINY).to("meta").eval()
    ab, ts = schedules.alpha_bar("linear", T=100), schedules.timesteps(5, T=100)
    noise = sampling.SeededNoise(range(3), (1, 8, 8), "meta")
    out = sampling.sample(model, noise.initial(), ab, ts, eta=1.0, sampler=sampler, noise=noise)
    assert out.device.type == "meta" and out.shape == (3, 1, 8, 8)
    if sampler == "ddim":
        assert sampling.invert(model, out, ab, ts).device.type == "meta"

    def syncing(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x, t) * float(x.abs().max())  # the kind of call the test exists to catch

    with pytest.raises((RuntimeError, NotImplementedError)):
        sampling.sample(syncing, noise.initial(), ab, ts, eta=1.0, sampler=sampler, noise=noise)


# --- the timing primitives and the benchmark end to end -------------------------------------------


def test_interleave_runs_candidates_in_turn_and_peak_memory() -> None:
    order: list[str] = []
    times = perf_timing.interleave({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, reps=3, warmup=1)
    assert order == ["a", "b"] * 4
    assert set(times) == {"a", "b"} and all(len(v["wall_all"]) == 3 for v in times.values())
    with perf_timing.PeakMemory("cpu") as mem:
        # 64 MiB of fresh anonymous pages, touched: a malloc'd tensor could reuse pages that earlier
        # tests freed but glibc kept resident, and then the RSS would rightly not grow.
        block = mmap.mmap(-1, 64 << 20)
        block.write(b"\x01" * (64 << 20))
    block.close()
    assert mem.kind in ("rss_peak_minus_start", "ru_maxrss_delta") and mem.mb >= 0
    if mem.kind == "rss_peak_minus_start":
        assert mem.mb >= 60  # the block's own peak, even though earlier tests used more
    assert perf_timing.ratio(2.0, 1.0) == 2.0 and math.isnan(perf_timing.ratio(1.0, 0.0))


def test_benchmark_runs_end_to_end_on_a_tiny_config(tmp_path) -> None:
    cfg = perf.PerfConfig(out=str(tmp_path), device="cpu", quick=True, isolate=False, only=("train", "sample"),
                          train_presets=("tiny",), sample_preset="tiny")  # fmt: skip
    res = perf.run(cfg)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["machine"]["torch"] == torch.__version__ and saved["settings"]["device"] == "cpu"
    (train,) = saved["train"]
    assert train["params"]["ours"] == train["params"]["diffusers"] and train["speedup_wall"] > 0
    assert set(train["memory"]) == {"ours", "diffusers"}
    # The convolution floor replays every conv module call of ours' forward (attention's 1x1 weights run as GEMMs).
    unet = UNet(perf_workload.TINY)
    attn = {id(m) for b in unet.modules() if isinstance(b, AttnBlock) for m in b.modules()}
    convs = [m for m in unet.modules() if isinstance(m, torch.nn.Conv2d) and id(m) not in attn]
    assert train["conv_calls"] == len(convs) and 0 < train["conv_share_ours"] < 1.2 and train["ceiling"] > 0
    for row in (train, *saved["eval"]):  # both formats' floors; the faster one is the floor
        floors = row["floor_s"]
        assert set(floors) == {"nchw", "nhwc"} and floors[row["floor_format"]] == min(floors.values())
        ours = row["times"]["ours"][row["basis"]]
        assert row["floor_ratio"] == pytest.approx(ours / min(floors.values()))
        by = row["floor_ratio_by_format"]  # ours measured in both formats (the run is NCHW)
        assert set(by) == {"nchw", "nhwc"} and by["nchw"] == row["floor_ratio"] and by["nhwc"] > 0
        assert "ours_nhwc" in row["times"]
        diffusers = row["times"]["diffusers"][row["basis"]]
        assert row["speedup_by_format"]["nhwc"] == pytest.approx(diffusers / row["times"]["ours_nhwc"][row["basis"]])
        assert row["speedup_by_format"]["nchw"] == pytest.approx(diffusers / ours)
        if fused_norm.kernels() is not None:  # channels_last with PyTorch's GroupNorm over the fused kernels
            unfused = row["times"][perf_floor.UNFUSED_KEY][row["basis"]]
            assert row["fused_norm_speedup"] == pytest.approx(unfused / row["times"]["ours_nhwc"][row["basis"]])
    (ev,) = saved["eval"]
    sweep_job = next(j for j in perf.plan(replace(cfg, only=("sweep",)), "cpu") if j["kind"] == "sweep")
    assert ev["batch"] == sweep_job["batch"]  # one evaluation as the sweep makes it
    assert ev["conv_calls"] == len(convs) and ev["speedup"] > 0
    bf16 = ev["times"]["ours_bf16"][ev["basis"]]  # ours under bf16 autocast, beside (not in) the floor ratio
    assert ev["bf16_speedup"] == pytest.approx(ev["times"]["ours"][ev["basis"]] / bf16)
    (sample,) = saved["sample"]
    assert [(r["steps"], r["eta"]) for r in sample["rows"]] == [(10, 0.0), (10, 1.0)]
    assert set(sample["host_noise_ms"]) == {"generators", "x_T", "step_z"} and sample["host_noise_ms"]["x_T"] > 0
    want = {"train_floor_ratio_tiny", "train_speedup_tiny", "eval_floor_ratio_tiny", "eval_speedup_tiny",
            "sampler_overhead_S10_eta0"}  # fmt: skip
    assert want <= set(saved["targets"])
    for key in ("train_floor_ratio_tiny", "eval_floor_ratio_tiny"):
        t = saved["targets"][key]
        assert t["target"] == "≤ 1.15×" and t["met"] == (t["value"] <= 1.15)
        row = train if key.startswith("train") else ev
        assert t["reachable"] == row["bound_ratio"] > 1 and row["norm_calls"] > 0 and row["attention_calls"] > 0
    t = saved["targets"]["train_speedup_tiny"]
    assert t["met"] == (t["value"] >= train["ceiling"] / 1.15)
    readme = (tmp_path / "README.md").read_text()
    assert "## 1. Training throughput" in readme and "| tiny |" in readme and "## Targets" in readme
    assert "ceiling" in readme and "floor channels_last (s)" in readme and "One network evaluation" in readme
    assert "bound / floor (lowest reachable)" in readme and "lowest reachable here" in readme
    assert "ours bf16 autocast speed-up" in readme and "Host noise work per call at batch" in readme
    assert "fused GroupNorm speed-up (channels_last)" in readme and "ours NCHW / channels_last over diffusers" in readme
    assert res["targets"] == saved["targets"]


def test_sweep_overhead_job_reference_computed_once(tmp_path) -> None:
    settings = RunSettings(device="cpu").to_dict()
    job = {"kind": "sweep", "settings": settings, "threads": 0, "cache_dir": str(tmp_path / "cache"),
           "n": 16, "batch": 16, "steps": [2], "etas": [0.0, 1.0], "modes": ["loop", "bench.sweep"]}  # fmt: skip
    res = perf_jobs.run_job(job)
    for run in res["runs"]:
        assert "error" not in run, run
        assert run["cells"] == 2 and run["reference_computed_once"] and len(run["reference_stat_files"]) == 1
        assert run["network_calls"] >= 2 * 2 and 0 < run["network_s"] + run["extractor_s"] < run["wall_s"]


@pytest.mark.slow
def test_memory_job_in_a_fresh_subprocess() -> None:
    job = {"kind": "train", "settings": RunSettings().to_dict(), "threads": 1, "preset": "tiny", "batch": 4,
           "memory": True, "models": ["ours"]}  # fmt: skip
    res = perf.run_in_subprocess(job, timeout=300)
    assert res.get("model") == "ours" and res["peak_mb"] > 0, res


def test_gpu_runs_get_their_own_folder_named_after_the_card() -> None:
    assert perf.card_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    assert perf.card_slug("NVIDIA H200") == "h200" and perf.card_slug("Tesla V100-SXM2-16GB") == "v100-sxm2-16gb"
    assert perf.card_slug("NVIDIA") == "gpu"
    assert perf.default_out("cpu") == "reports/perf"


def test_cli_dry_run_and_errors(capsys: pytest.CaptureFixture) -> None:
    assert perf.main(["--dry-run", "--device", "cpu", "--only", "train"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["config"]["only"] == ["train"]
    assert [j["kind"] for j in printed["jobs"]] == ["train"] * 6  # timing + 2 memory jobs per preset
    assert perf.main(["--only", "nope"]) == 2
    assert perf.main(["--threads", "-1", "--dry-run", "--device", "cpu"]) == 2
    assert "choose from train,sample,compile,sweep" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_overhead_leaves_the_storage_s_imports_out_of_the_clock() -> None:
    """What Optuna imports when its first database storage opens (SQLAlchemy, Alembic) is imported before the
    sweep's clock starts, with the rest of the once-per-process imports (a fresh process: this one has them)."""
    code = ("import sys; from bench.perf.sweep import warm_imports; warm_imports('bench.sweep'); "
            "print(all(m in sys.modules for m in ('sqlalchemy.orm', 'alembic.runtime.migration')))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "True", out.stderr
