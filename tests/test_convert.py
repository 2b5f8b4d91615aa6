"""Weight import: diffusers UNet2DModel and official DDIM/DDPM state dicts give our UNet the same function.

The references are diffusers' own ``UNet2DModel`` (an independent implementation of the DDPM UNet), built
randomly initialised and saved with ``save_pretrained``: no download is needed.

Official-format state dicts are made by ``official_from_diffusers``, which walks diffusers' modules and names
them as the official ``models/diffusion.py`` Model does (written here, independently of ``ddim.convert``).
Those tests prove that ``from_official`` reads the architecture from official names and shapes and yields the
same function as diffusers; that the names are the real checkpoints' rests on our UNet mirroring the official
Model name for name (``tests/test_unet.py::test_official_module_names``).
"""

import json
from pathlib import Path

import diffusers  # a test dependency: a missing install must fail, not skip
import pytest
import torch
import yaml
from helpers.cli import run
from PIL import Image

from ddim import sampling, schedules
from ddim.checkpoint import load_checkpoint
from ddim.convert import from_official, import_weights
from ddim.diffusers_weights import diffusers_to_ours, from_diffusers
from ddim.errors import DDIMError
from ddim.schedules import DiffusionConfig
from ddim.unet import UNet, UNetConfig, preset

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

TINY = UNetConfig(resolution=16, ch=8, ch_mult=(1, 2, 2), attn_resolutions=(8,), dropout=0.0, num_groups=4)
TINY32 = UNetConfig(resolution=16, ch=32, ch_mult=(1, 2, 2), attn_resolutions=(8,), dropout=0.0)  # official: 32 groups


def ddpm_unet2d(boc, attn_levels, *, size, groups=32, layers=2, dropout=0.0, **overrides):
    """A diffusers UNet2DModel in the DDPM layout (the google/ddpm-* config: DDPM's [sin, cos] embedding,
    asymmetric downsample padding, single-head attention, GroupNorm eps 1e-6)."""
    down = tuple("AttnDownBlock2D" if i in attn_levels else "DownBlock2D" for i in range(len(boc)))
    up = tuple(b.replace("Down", "Up") for b in reversed(down))
    kwargs = dict(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        block_out_channels=boc,
        layers_per_block=layers,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=groups,
        norm_eps=1e-6,
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        attention_head_dim=None,
        act_fn="silu",
        dropout=dropout,
    )
    torch.manual_seed(0)
    return diffusers.UNet2DModel(**{**kwargs, **overrides}).eval()


def tiny_ref(**overrides):
    return ddpm_unet2d((8, 16, 16), (1,), size=16, groups=4, **overrides)


def tiny32_ref():
    return ddpm_unet2d((32, 64, 64), (1,), size=16)


def outputs(model, ref=None, ts=(0, 1, 500, 999), res=16):
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(len(ts), 3, res, res, generator=g), torch.tensor(ts)
    with torch.no_grad():
        ours = model.eval()(x, t)
        return ours if ref is None else (ours, ref(x, t).sample)


def save_pipeline(ref, path, **scheduler_kwargs):
    scheduler = diffusers.DDPMScheduler(variance_type="fixed_large", **scheduler_kwargs)
    diffusers.DDPMPipeline(unet=ref, scheduler=scheduler).save_pretrained(path)
    return path


# --------------------------------------------------------------------------------------------- diffusers


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """DDPM CIFAR10 (google/ddpm-cifar10-32 layout: 128·(1,2,2,2), 2 res blocks, attention at 16×16, 35.7M),
    saved as a pipeline directory, with its outputs at t = 0, 250, 999 computed once."""
    ref = ddpm_unet2d((128, 256, 256, 256), (1,), size=32, dropout=0.1)
    path = save_pipeline(ref, tmp_path_factory.mktemp("ddpm-cifar10-32"))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 250, 999])
    with torch.no_grad():
        eps = ref(x, t).sample
    return ref, path, x, t, eps


def max_diff(model, x, t, eps):
    with torch.no_grad():
        return float((model.eval()(x, t) - eps).abs().max())


def test_cifar10_ddpm_unet_converts_to_the_same_function(cifar):
    _, path, x, t, eps = cifar
    sd, config, diffusion = from_diffusers(path)
    assert config == preset("cifar10") and diffusion == DiffusionConfig()
    model = UNet(config)
    model.load_state_dict(sd, strict=True)
    assert eps.std() > 0.1  # a non-trivial function
    assert max_diff(model, x, t, eps) <= 1e-4


def test_cifar10_import_weights_then_load_checkpoint(cifar, tmp_path):
    _, path, x, t, eps = cifar
    ckpt_file = import_weights(path, tmp_path / "run", dataset="cifar10")
    ck = load_checkpoint(tmp_path / "run")
    assert ck.path == ckpt_file and ck.step == 0 and ck.unet == preset("cifar10")
    assert ck.dataset == {"name": "cifar10", "channels": 3, "resolution": 32, "hflip": True}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["imported"]["format"] == "diffusers"
    assert max_diff(ck.build_model(), x[:1], t[:1], eps[:1]) <= 1e-4


def test_tiny_import_load_and_sample(tmp_path):
    ref = tiny_ref()
    save_pipeline(ref, tmp_path / "pipe", beta_schedule="scaled_linear", beta_start=1e-4, beta_end=0.02)
    import_weights(tmp_path / "pipe", tmp_path / "run")
    ck = load_checkpoint(tmp_path / "run")
    assert ck.dataset["name"] == "imported" and ck.diffusion == DiffusionConfig("quad", 1000, 1e-4, 0.02)
    model = ck.build_model()
    ours, theirs = outputs(model, ref)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    # The sweep's path: sample by name from the imported checkpoint.
    noise = sampling.SeededNoise([0, 1], (3, 16, 16))
    for sampler in ("ddim", "dpmpp_2m", "plms"):
        x = sampling.sample(model, noise.initial(), ck.alpha_bar(), schedules.timesteps(3, 1000), sampler=sampler)
        assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()


@pytest.mark.parametrize(
    "diffusers_schedule,ours",
    [("linear", "linear"), ("scaled_linear", "quad"), ("squaredcos_cap_v2", "cosine"), ("sigmoid", "sigmoid")],
)
def test_scheduler_config_gives_the_same_alpha_bar(tmp_path, diffusers_schedule, ours):
    save_pipeline(tiny_ref(), tmp_path, beta_schedule=diffusers_schedule, num_train_timesteps=500, beta_end=0.03)
    _, _, diffusion = from_diffusers(tmp_path)
    assert (diffusion.beta_schedule, diffusion.T, diffusion.beta_end) == (ours, 500, 0.03)
    theirs = diffusers.DDPMScheduler.from_pretrained(tmp_path / "scheduler").alphas_cumprod.double()
    torch.testing.assert_close(diffusion.alpha_bar(), theirs, atol=2e-6, rtol=1e-5)  # theirs is float32


def test_bare_unet_dir_legacy_attention_names_and_bin(tmp_path):
    ref = tiny_ref()
    ref.save_pretrained(tmp_path)
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    ref.load_state_dict({k: v.half().float() for k, v in ref.state_dict().items()})  # fp16-exact weights
    sd = {}
    for k, v in ref.state_dict().items():
        for new, old in legacy.items():
            k = k.replace(f".{new}.", f".{old}.")
        sd[k] = v.half()  # stored in fp16, as some Hub files are
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(sd, tmp_path / "diffusion_pytorch_model.bin")
    sd_ours, config, diffusion = from_diffusers(tmp_path, T=400)
    assert config == TINY and diffusion == DiffusionConfig(T=400)  # no scheduler config: DDPM's betas
    assert all(v.dtype == torch.float32 for v in sd_ours.values())
    model = UNet(config)
    model.load_state_dict(sd_ours)
    ours, theirs = outputs(model, ref)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_diffusers_to_ours_is_strict():
    sd = tiny_ref().state_dict()
    assert set(diffusers_to_ours(sd, TINY)) == set(UNet(TINY).state_dict())
    with pytest.raises(DDIMError, match=r"missing mid_block\.attentions\.0\.to_q\.weight"):
        diffusers_to_ours({k: v for k, v in sd.items() if k != "mid_block.attentions.0.to_q.weight"}, TINY)
    with pytest.raises(DDIMError, match=r"unexpected extra\.weight"):
        diffusers_to_ours({**sd, "extra.weight": torch.zeros(1)}, TINY)
    with pytest.raises(DDIMError, match=r"wrong shape conv_in\.weight"):
        diffusers_to_ours({**sd, "conv_in.weight": torch.zeros(8, 1, 3, 3)}, TINY)


def _rewrite_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, **changes}))


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"flip_sin_to_cos": True}, "flip_sin_to_cos=True"),
        ({"attention_head_dim": 4}, "attention_head_dim=4"),
        ({"downsample_padding": 1}, "downsample_padding=1"),
        ({"norm_eps": 1e-5}, "norm_eps"),
        ({"out_channels": 6}, "out_channels=6"),
        ({"up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D"]}, "up_block_types"),
        ({"block_out_channels": [8, 32, 32]}, r"wrong shape down_blocks\.1\.resnets\.0\.conv1\.weight"),
    ],
)
def test_unsupported_or_inconsistent_configs_are_refused(tmp_path, changes, match):
    tiny_ref().save_pretrained(tmp_path)
    _rewrite_config(tmp_path, **changes)
    with pytest.raises(DDIMError, match=match):
        from_diffusers(tmp_path)


def test_bad_diffusers_inputs(tmp_path, monkeypatch):
    with pytest.raises(DDIMError, match="does not exist"):
        from_diffusers(tmp_path / "no" / "such" / "dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DDIMError, match="no config.json"):
        from_diffusers(tmp_path / "empty")
    save_pipeline(tiny_ref(), tmp_path / "pipe", prediction_type="v_prediction")
    with pytest.raises(DDIMError, match="prediction_type='v_prediction'"):
        from_diffusers(tmp_path / "pipe")
    with pytest.raises(DDIMError, match="T=10 was asked"):
        import_weights(tmp_path / "pipe", tmp_path / "run", T=10)
    (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").unlink()
    weights = tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(DDIMError, match="cannot read weights"):
        from_diffusers(tmp_path / "pipe")
    weights.unlink()
    with pytest.raises(DDIMError, match="has no diffusion_pytorch_model"):
        from_diffusers(tmp_path / "pipe")
    # A Hub name, offline: one line saying what to do instead.
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(DDIMError, match=r"Hugging Face Hub \(OSError\).*pass the local directory"):
        import_weights("google/ddpm-cifar10-32", tmp_path / "run")


def test_import_refuses_a_run_dir_with_checkpoints_and_bad_options(tmp_path):
    save_pipeline(tiny_ref(), tmp_path / "pipe")
    import_weights(tmp_path / "pipe", tmp_path / "run")
    with pytest.raises(DDIMError, match="already holds checkpoints"):
        import_weights(tmp_path / "pipe", tmp_path / "run")
    with pytest.raises(DDIMError, match="drop --preset"):
        import_weights(tmp_path / "pipe", tmp_path / "run2", preset="cifar10")
    with pytest.raises(DDIMError, match="unknown weights format"):
        import_weights(tmp_path / "pipe", tmp_path / "run2", fmt="onnx")
    with pytest.raises(DDIMError, match="1 channels"):
        import_weights(tmp_path / "pipe", tmp_path / "run2", dataset="mnist")


# --------------------------------------------------------------------------------------------- official


def official_from_diffusers(ref) -> dict:
    """Official ``models/diffusion.py`` names for a diffusers DDPM UNet, written from the official Model's
    structure (temb.dense, down[i].block/attn/downsample, mid.block_1/attn_1/block_2, up[i] numbered from
    the top, norm_out, conv_out; q/k/v/proj_out are 1×1 convs), by walking diffusers' modules."""
    levels = len(ref.down_blocks)
    modules = {
        "temb.dense.0": ref.time_embedding.linear_1,
        "temb.dense.1": ref.time_embedding.linear_2,
        "conv_in": ref.conv_in,
        "norm_out": ref.conv_norm_out,
        "conv_out": ref.conv_out,
        "mid.block_1": ref.mid_block.resnets[0],
        "mid.attn_1": ref.mid_block.attentions[0],
        "mid.block_2": ref.mid_block.resnets[1],
    }
    for name, blocks in (("down", ref.down_blocks), ("up", ref.up_blocks[::-1])):
        for i, blk in enumerate(blocks):
            modules |= {f"{name}.{i}.block.{j}": r for j, r in enumerate(blk.resnets)}
            modules |= {f"{name}.{i}.attn.{j}": a for j, a in enumerate(getattr(blk, "attentions", []))}
            for sampler in getattr(blk, f"{name}samplers", None) or []:
                modules[f"{name}.{i}.{name}sample.conv"] = sampler.conv
    assert len(ref.up_blocks) == levels
    renames = {
        "time_emb_proj": "temb_proj",
        "conv_shortcut": "nin_shortcut",
        "group_norm": "norm",
        "to_q": "q",
        "to_k": "k",
        "to_v": "v",
        "to_out.0": "proj_out",
    }
    sd = {}
    for prefix, module in modules.items():
        for name, p in module.named_parameters():
            leaf, _, kind = name.rpartition(".")
            leaf = renames.get(leaf, leaf)
            conv_1x1 = p.ndim == 2 and leaf in ("q", "k", "v", "proj_out")
            tensor = p.detach().clone()
            sd[".".join(filter(None, (prefix, leaf, kind)))] = tensor[..., None, None] if conv_1x1 else tensor
    assert len(sd) == len(ref.state_dict())
    return sd


def test_official_cifar10_infers_the_preset(cifar, tmp_path):
    """No config: every shape-giving field is read from the keys, resolution/dropout from the matching preset."""
    ref, _, x, t, eps = cifar
    torch.save(official_from_diffusers(ref), tmp_path / "model-790000.ckpt")
    sd, config, diffusion = from_official(tmp_path / "model-790000.ckpt")
    assert config == preset("cifar10") and diffusion == DiffusionConfig()
    model = UNet(config)
    model.load_state_dict(sd)
    assert max_diff(model, x[1:2], t[1:2], eps[1:2]) <= 1e-4


def test_official_with_yaml_config_and_training_list(tmp_path):
    ref = tiny32_ref()
    official = official_from_diffusers(ref)
    yml = {
        "data": {"dataset": "CIFAR10", "image_size": 16, "channels": 3},
        "model": {
            "type": "bayesian",
            "in_channels": 3,
            "out_ch": 3,
            "ch": 32,
            "ch_mult": [1, 2, 2],
            "num_res_blocks": 2,
            "attn_resolutions": [8],
            "dropout": 0.1,
            "resamp_with_conv": True,
        },
        "diffusion": {
            "beta_schedule": "linear",
            "beta_start": 0.0001,
            "beta_end": 0.02,
            "num_diffusion_timesteps": 1000,
        },
    }
    yml["diffusion"]["beta_start"] = "1e-4"  # how PyYAML reads 1e-4 written without a dot
    (tmp_path / "tiny.yml").write_text(yaml.safe_dump(yml))
    # The official training ckpt.pth: [model, optimizer, epoch, step, ema], DataParallel "module." names.
    junk = {f"module.{k}": torch.zeros_like(v) for k, v in official.items()}
    ema = {f"module.{k}": v for k, v in official.items()} | {"module.logvar": torch.zeros(1000)}
    torch.save([junk, {"state": {}, "param_groups": []}, 3, 1234, ema], tmp_path / "ckpt.pth")
    with pytest.raises(DDIMError, match="no preset has this architecture"):
        from_official(tmp_path / "ckpt.pth")
    ckpt = import_weights(tmp_path / "ckpt.pth", tmp_path / "run", config=tmp_path / "tiny.yml")
    ck = load_checkpoint(ckpt)
    assert ck.unet == UNetConfig(**{**TINY32.__dict__, "dropout": 0.1})
    assert ck.dataset["name"] == "cifar10" and ck.diffusion == DiffusionConfig()
    ours, theirs = outputs(ck.build_model(), ref)  # the EMA weights, not the zeroed model weights
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_official_config_must_match_the_weights(tmp_path):
    torch.save(official_from_diffusers(tiny32_ref()), tmp_path / "m.ckpt")
    with pytest.raises(DDIMError, match="does not match the weights"):
        from_official(tmp_path / "m.ckpt", config=UNetConfig(**{**TINY32.__dict__, "attn_resolutions": (16,)}))
    assert from_official(tmp_path / "m.ckpt", config=TINY32)[1] == TINY32
    with pytest.raises(DDIMError, match="either a preset or an official config"):
        import_weights(tmp_path / "m.ckpt", tmp_path / "run", preset="cifar10", config={"model": {}})
    with pytest.raises(DDIMError, match="does not match the weights"):
        import_weights(tmp_path / "m.ckpt", tmp_path / "run", preset="cifar10")


def test_bad_official_inputs(tmp_path):
    with pytest.raises(DDIMError, match="does not exist"):
        from_official(tmp_path / "missing.ckpt")
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    with pytest.raises(DDIMError, match="not an official DDIM/DDPM state dict"):
        from_official(tmp_path / "list.ckpt")
    torch.save({"conv_in.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "partial.ckpt")
    with pytest.raises(DDIMError, match="lacks conv_in / conv_out"):
        from_official(tmp_path / "partial.ckpt")
    (tmp_path / "garbage.ckpt").write_bytes(b"\x00garbage")
    with pytest.raises(DDIMError, match="cannot read weights"):
        from_official(tmp_path / "garbage.ckpt")
    sd = official_from_diffusers(tiny32_ref())
    torch.save({**sd, "down.0.block.0.extra.weight": torch.zeros(3)}, tmp_path / "extra.ckpt")
    with pytest.raises(DDIMError, match=r"unexpected down\.0\.block\.0\.extra\.weight"):
        from_official(tmp_path / "extra.ckpt", config=TINY32)
    # Our own checkpoints are not official ones.
    save_pipeline(tiny_ref(), tmp_path / "pipe")
    ours = import_weights(tmp_path / "pipe", tmp_path / "run")
    with pytest.raises(DDIMError, match="ddimbench checkpoint already"):
        from_official(ours)


def test_import_weights_then_sample(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A diffusers DDPM pipeline folder → our checkpoint → `sample` with a baseline sampler, all via the CLI."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
        attention_head_dim=None,
    )  # fmt: skip
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(tmp_path / "pipe")
    code, _, err = run(["import-weights", tmp_path / "pipe", "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    sample = ["sample", "--checkpoint", tmp_path / "run", "--sampler", "dpmpp_2m", "--steps", "4", "-n", "3"]
    code, _, err = run([*sample, "--out", tmp_path / "s"], capsys)
    assert code == 0, err
    with Image.open(tmp_path / "s" / "000002.png") as im:
        assert im.size == (16, 16) and im.mode == "RGB"
    # Importing into a run that already holds a checkpoint is refused, in one line.
    code, _, err = run(["import-weights", tmp_path / "pipe", "--out", tmp_path / "run"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
