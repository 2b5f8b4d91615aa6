"""ddim.checkpoint: exact round trip, newest-file selection, one-line refusals, crash-safe writes."""

from __future__ import annotations

import copy
import errno
import os
import pickle
import re
from dataclasses import asdict

import pytest
import torch

import ddim.checkpoint as ckpt_mod
from ddim.checkpoint import (
    DiffusionConfig,
    check_compatible,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    remove_stale_temps,
    resolve_checkpoint,
    save_checkpoint,
)
from ddim.data import dataset_info
from ddim.errors import DDIMError
from ddim.unet import UNet, UNetConfig

TINY = UNetConfig(
    resolution=16, in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0, num_groups=4
)


def _payload(step: int = 3, unet: UNetConfig = TINY, seed: int = 0) -> dict:
    """What the trainer saves, after ``step`` real Adam steps so the optimiser state is non-trivial."""
    torch.manual_seed(seed)
    model = UNet(unet)
    ema = UNet(unet)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(step):
        x = torch.randn(2, unet.in_channels, unet.resolution, unet.resolution)
        loss = model(x, torch.tensor([1, 500])).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {
        "step": step,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": {"cpu": torch.get_rng_state()},
        "unet": unet.to_dict(),
        "diffusion": asdict(DiffusionConfig()),
        "dataset": asdict(dataset_info("digits")),
        "train": {"dataset": "digits", "seed": seed},
    }


def _assert_tree_equal(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_tree_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_tree_equal(x, y)
    else:
        assert a == b


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg, msg
    return msg


def test_round_trip_is_exact(tmp_path):
    payload = _payload()
    path = save_checkpoint(checkpoint_path(tmp_path, 3), payload)
    ck = load_checkpoint(path)
    for key in ("model", "ema", "optimizer", "rng", "step", "dataset", "train"):
        _assert_tree_equal(payload[key], ck.state[key])
    assert ck.step == 3 and ck.unet == TINY and ck.diffusion == DiffusionConfig()
    assert ck.dataset["name"] == "digits" and ck.train["seed"] == 0
    # The optimiser state loads into a fresh Adam and gives the same next step.
    model = UNet(TINY)
    model.load_state_dict(ck.state["model"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt.load_state_dict(ck.state["optimizer"])
    _assert_tree_equal(opt.state_dict(), payload["optimizer"])


def test_build_model_uses_ema_by_default(tmp_path):
    payload = _payload()
    ck = load_checkpoint(save_checkpoint(tmp_path / "c.pt", payload))
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 900])
    ema, raw = ck.build_model(), ck.build_model(ema=False)
    assert not ema.training and not raw.training
    reference = UNet(TINY).eval()
    reference.load_state_dict(payload["ema"])
    with torch.no_grad():
        assert torch.equal(ema(x, t), reference(x, t))
        assert not torch.equal(ema(x, t), raw(x, t))
    assert torch.equal(ck.alpha_bar(), DiffusionConfig().alpha_bar())
    assert len(ck.sha256()) == 64


def test_run_directory_resolves_to_newest(tmp_path):
    for step in (5, 40, 7):
        save_checkpoint(checkpoint_path(tmp_path, step), _payload(step=1) | {"step": step})
    (tmp_path / "checkpoints" / ".step-0000090.pt.abc.tmp").write_bytes(b"half")  # killed mid-write
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5, 7, 40]
    assert load_checkpoint(tmp_path).step == 40
    assert resolve_checkpoint(tmp_path / "checkpoints").name == "step-0000040.pt"
    assert [p.name for p in remove_stale_temps(tmp_path)] == [".step-0000090.pt.abc.tmp"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-0000005.pt",
        "step-0000007.pt",
        "step-0000040.pt",
    ]


def test_missing_checkpoint_and_empty_run_dir(tmp_path):
    with pytest.raises(DDIMError, match="does not exist") as info:
        load_checkpoint(tmp_path / "nope.pt")
    _one_line(info)
    with pytest.raises(DDIMError, match="no checkpoint in run directory") as info:
        load_checkpoint(tmp_path)
    _one_line(info)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _bad_files(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", _payload())
    data = good.read_bytes()
    files = {
        "truncated": data[: len(data) // 2],
        "truncated-tail": data[:-10],
        "empty": b"",
        "garbage": os.urandom(4096),
        "text": b"hello, not a checkpoint\n",
    }
    for name, content in files.items():
        (tmp_path / f"{name}.pt").write_bytes(content)
    torch.save({"state_dict": UNet(TINY).state_dict()}, tmp_path / "foreign.pt")  # e.g. someone's weights
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with open(tmp_path / "pickle.pt", "wb") as f:
        pickle.dump({"format": ckpt_mod.FORMAT, "x": _Evil(str(tmp_path / "pwned"))}, f)
    return [*files, "foreign", "list", "pickle"]


def test_corrupt_truncated_and_foreign_files_are_refused_in_one_line(tmp_path):
    for name in _bad_files(tmp_path):
        with pytest.raises(DDIMError) as info:
            load_checkpoint(tmp_path / f"{name}.pt")
        msg = _one_line(info)
        assert f"{name}.pt" in msg and ("corrupt" in msg or "not a ddimbench checkpoint" in msg), msg
    assert not (tmp_path / "pwned").exists()  # weights_only loading never runs pickled code


@pytest.mark.parametrize("field", ["unet", "diffusion", "step", "model"])
def test_missing_field_is_refused(tmp_path, field):
    payload = _payload(step=1)
    del payload[field]
    with pytest.raises(DDIMError, match="damaged") as info:
        load_checkpoint(save_checkpoint(tmp_path / "c.pt", payload))
    _one_line(info)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    payload = _payload(step=1)
    payload["unet"] = UNetConfig(**{**TINY.to_dict(), "ch": 16}).to_dict()
    with pytest.raises(DDIMError, match="do not match its UNet config") as info:
        load_checkpoint(save_checkpoint(tmp_path / "c.pt", payload))
    _one_line(info)


DOCTORED = {
    "beta_end=2.0": (lambda p: p["diffusion"].update(beta_end=2.0), "need 0 < beta_start ≤ beta_end < 1"),
    "beta_start=nan": (lambda p: p["diffusion"].update(beta_start=float("nan")), "need 0 < beta_start"),
    "T=1e9": (lambda p: p["diffusion"].update(T=10**9), "T must be an integer in 1..100000"),
    "T=1e9 float": (lambda p: p["diffusion"].update(T=1e9), "T must be an integer"),
    "T=0": (lambda p: p["diffusion"].update(T=0), "T must be an integer"),
    "unknown schedule": (lambda p: p["diffusion"].update(beta_schedule="zigzag"), "unknown beta schedule"),
    "unknown dataset": (lambda p: p["dataset"].update(name="imagenet"), "unknown dataset 'imagenet'"),
    "bad resolution": (lambda p: p["dataset"].update(resolution=-3), "resolution must be a positive integer"),
    "NaN EMA": (lambda p: p["ema"]["conv_out.weight"].fill_(float("nan")), "conv_out.weight holds NaN or inf"),
    "inf model": (lambda p: p["model"]["temb.dense.0.bias"].fill_(float("inf")), "temb.dense.0.bias holds NaN"),
}


@pytest.mark.parametrize("case", DOCTORED)
def test_doctored_settings_and_weights_are_refused(tmp_path, case):
    """A checkpoint whose stored settings train would refuse, or whose weights are not finite: one line naming
    the file (these were a ZeroDivisionError, a ValueError, a memory runaway and black PNGs)."""
    doctor, needle = DOCTORED[case]
    payload = _payload(step=1)
    assert {"conv_out.weight", "temb.dense.0.bias"} <= set(payload["ema"])
    doctor(payload)
    path = save_checkpoint(tmp_path / "c.pt", payload)
    with pytest.raises(DDIMError, match=re.escape(needle)) as info:
        load_checkpoint(path)
    assert str(path) in _one_line(info)


def test_checkpoint_and_train_share_each_rule(tmp_path):
    """The loader's refusal is train's: the same rule, phrased for train's options."""
    from ddim.train_config import TrainConfig

    for diffusion, option in (({"beta_end": 2.0}, "--beta-end"), ({"T": 10**9}, "--T must be an integer in 1..100000")):
        with pytest.raises(DDIMError, match=re.escape(option)):
            TrainConfig(**diffusion, run_dir=str(tmp_path)).validate()
    with pytest.raises(DDIMError, match="unknown dataset 'imagenet'"):
        TrainConfig(dataset="imagenet", run_dir=str(tmp_path)).validate()


def test_check_compatible(tmp_path):
    ck = load_checkpoint(save_checkpoint(tmp_path / "c.pt", _payload(step=1)))
    check_compatible(ck, unet=TINY, dataset="digits", resolution=16, diffusion=DiffusionConfig())
    other = UNetConfig(**{**TINY.to_dict(), "ch_mult": (1, 1)})
    with pytest.raises(DDIMError, match=r"another UNet architecture: ch_mult=\[1, 2\] \(want \[1, 1\]\)") as info:
        check_compatible(ck, unet=other)
    _one_line(info)
    with pytest.raises(DDIMError, match="trained with dataset 'digits', not 'mnist'"):
        check_compatible(ck, dataset="mnist")
    with pytest.raises(DDIMError, match="resolution 16, not 32"):
        check_compatible(ck, resolution=32)
    with pytest.raises(DDIMError, match="diffusion"):
        check_compatible(ck, diffusion=DiffusionConfig("cosine"))


def _fill_disk_after(n_bytes: int):
    """A torch.save stand-in that writes ``n_bytes`` and then fails like a full disk."""

    def save(obj, f):
        f.write(b"\0" * n_bytes)
        raise OSError(errno.ENOSPC, "No space left on device")

    return save


def test_failed_write_keeps_previous_checkpoint_and_leaves_no_temp(tmp_path, monkeypatch):
    path = checkpoint_path(tmp_path, 10)
    save_checkpoint(path, _payload(step=1))
    before = path.read_bytes()
    monkeypatch.setattr(ckpt_mod.torch, "save", _fill_disk_after(1000))
    with pytest.raises(DDIMError) as info:
        save_checkpoint(path, _payload(step=2))
    assert _one_line(info) == (
        f"could not write checkpoint {path}: No space left on device; free space or choose another --run-dir"
    )
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]


def test_disk_full_inside_torch_writer_is_one_line(tmp_path, monkeypatch):
    """The real torch.save writing into a file object whose write() fails (torch may wrap the error)."""
    real_open = os.fdopen

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > 20_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real_open(fd, mode)))
    path = tmp_path / "c.pt"
    with pytest.raises(DDIMError, match="No space left on device; free space") as info:
        save_checkpoint(path, _payload(step=1))
    _one_line(info)
    assert os.listdir(tmp_path) == []


def test_failed_rename_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, _payload(step=1))
    before = path.read_bytes()

    def denied(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", denied)
    with pytest.raises(DDIMError, match="Permission denied; fix the permissions") as info:
        save_checkpoint(path, _payload(step=2))
    _one_line(info)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c.pt"]


class _OnAGpu(torch.Tensor):
    """A CPU tensor that says it lives on a GPU (none here): what ``save_checkpoint`` must move before saving."""

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", 0)

    def cpu(self) -> torch.Tensor:
        return self.as_subclass(torch.Tensor).clone()


def test_a_checkpoint_holds_cpu_tensors_and_a_cpu_payload_is_saved_as_it_is(tmp_path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.GroupNorm(1, 2))
    state = model.state_dict()
    save_checkpoint(tmp_path / "cpu.pt", {"model": state, "step": 3})  # nothing to move: the same bytes as torch.save
    with open(tmp_path / "plain.pt", "wb") as f:
        torch.save({"format": ckpt_mod.FORMAT, "model": state, "step": 3}, f)
    assert (tmp_path / "cpu.pt").read_bytes() == (tmp_path / "plain.pt").read_bytes()
    on_gpu = copy.copy(state)  # an OrderedDict with its _metadata, as a GPU run's state_dict
    on_gpu["0.weight"] = state["0.weight"].as_subclass(_OnAGpu)
    assert on_gpu["0.weight"].device.type == "cuda"
    save_checkpoint(tmp_path / "gpu.pt", {"model": on_gpu, "opt": [on_gpu["0.weight"]]})
    raw = torch.load(tmp_path / "gpu.pt", weights_only=True)  # plain tensors only, or this refuses the subclass
    assert type(raw["model"]["0.weight"]) is torch.Tensor and torch.equal(raw["model"]["0.weight"], state["0.weight"])
    assert raw["model"]._metadata == state._metadata and type(raw["opt"][0]) is torch.Tensor
