"""``sweep --workers N``: each worker on its own GPU when several are visible, ``--devices`` to choose them.
No GPU is needed: the device count is faked, and the worker processes are recorded rather than started."""

from __future__ import annotations

import pytest
import torch
from helpers.sweep import spec_of
from helpers.workers import fake_workers

from bench.cli import main
from bench.sweep import runner, workers
from bench.sweep.devices import assign_devices, worker_devices
from ddim.errors import DDIMError


@pytest.mark.parametrize(
    ("device", "workers", "visible", "devices", "expected"),
    [
        ("auto", 4, 2, None, ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]),  # several GPUs: one each, round-robin
        ("cuda", 3, 4, None, ["cuda:0", "cuda:1", "cuda:2"]),
        ("auto", 2, 1, None, ["auto", "auto"]),  # one GPU (or none): all on it, as before
        ("auto", 2, 0, None, ["auto", "auto"]),
        ("cpu", 3, 4, None, ["cpu"] * 3),  # an explicit device is every worker's
        ("cuda:1", 2, 4, None, ["cuda:1", "cuda:1"]),
        ("auto", 3, 3, "cuda:0,cuda:2", ["cuda:0", "cuda:2", "cuda:0"]),  # the list wins, dealt out in turn
        ("cpu", 2, 0, " CPU ", ["cpu", "cpu"]),
        ("auto", 1, 8, None, ["cuda:0"]),
        ("auto", None, 4, "cuda:3,cuda:1", ["cuda:3", "cuda:1"]),  # --workers not given: one per listed device
        ("auto", None, 4, None, ["cuda:0"]),  # neither given: one worker
        ("cpu", None, 0, None, ["cpu"]),
    ],
)
def test_worker_devices(device, workers, visible, devices, expected) -> None:
    assert worker_devices(device, workers, visible, devices) == expected


@pytest.mark.parametrize(
    ("devices", "workers", "match"),
    [
        ("cuda:2", 2, "not visible"),
        ("gpu0", 2, "not a device"),
        ("cuda:0,cuda:0", 2, "repeats"),
        ("cuda", 2, "this machine has no CUDA device; drop --devices"),
        ("cpu,cuda:0,cuda:1", 2, "--devices lists 3 devices but --workers is 2; drop --workers .* or list 2 devices$"),
        ("cuda:0,cuda:1", 1, "--devices lists 2 devices but --workers is 1; drop --workers .* or list 1 device$"),
        (None, 0, "--workers must be ≥ 1, got 0"),
    ],
)
def test_bad_device_lists_are_refused_in_one_line(devices, workers, match) -> None:
    with pytest.raises(DDIMError, match=match) as err:
        worker_devices("auto", workers, 0 if devices == "cuda" else 2, devices)
    assert "\n" not in str(err.value)


def fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_assign_devices_counts_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 3)
    assert assign_devices("auto", 4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:0"]
    fake_gpus(monkeypatch, 0)
    assert assign_devices("auto", 2) == ["auto", "auto"]


class FakeStorage:
    def get_study_id_from_name(self, name):
        return 0

    def get_all_trials(self, study_id, deepcopy=False):
        return []


def test_each_worker_process_gets_its_own_device(monkeypatch, ckpt, cache) -> None:
    spec = spec_of(ckpt, cache, "steps=2", "n=16", "batch=4")
    started = fake_workers(monkeypatch)
    monkeypatch.setattr(workers, "open_storage", lambda url, *a: FakeStorage())
    display = runner.Display(False, 1, "test")
    workers.run_workers(spec, "sqlite://", 10, "tok", "disabled", ["cuda:1", "cuda:0", "cuda:1"], "0" * 64, display,
                        False)  # fmt: skip
    assert [a[0].device for a in started] == ["cuda:1", "cuda:0", "cuda:1"]
    assert [a[7] for a in started] == [0, 1, 2]  # each its own index (its search seed)
    assert all(a[0].steps == spec.steps for a in started)  # otherwise the same spec


def test_sweep_cli_passes_devices_and_run_sweep_places_workers(monkeypatch, ckpt, cache, capsys) -> None:
    seen: dict = {}

    def fake_run_sweep(spec, workers=1, devices=None, **kw):
        seen.update(workers=workers, devices=devices)
        raise DDIMError("stop here")

    monkeypatch.setattr(runner, "run_sweep", fake_run_sweep)
    args = ["sweep", f"checkpoint={ckpt}", f"cache_dir={cache}", "steps=2", "n=16", "--workers", "2"]
    assert main([*args, "--devices", "cpu"]) == 2 and seen == {"workers": 2, "devices": "cpu"}
    assert "stop here" in capsys.readouterr().err
    assert main([*args[:-2], "--devices", "cpu"]) == 2 and seen == {"workers": None, "devices": "cpu"}  # not given
    capsys.readouterr()

    placed: list = []
    monkeypatch.undo()
    fake_gpus(monkeypatch, 2)
    monkeypatch.setattr(runner, "_run_sweep", lambda spec, devices, *a: placed.append(devices))
    runner.run_sweep(spec_of(ckpt, cache, "steps=2", "n=16"), workers=3)
    runner.run_sweep(spec_of(ckpt, cache, "steps=2", "n=16"), workers=2, devices="cuda:1")
    runner.run_sweep(spec_of(ckpt, cache, "steps=2", "n=16"), devices="cuda:1,cuda:0")
    assert placed == [["cuda:0", "cuda:1", "cuda:0"], ["cuda:1", "cuda:1"], ["cuda:1", "cuda:0"]]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (["--devices", "cuda:0,cuda:1", "--workers", "1"], "--devices lists 2 devices but --workers is 1; drop"),
        (["--devices", "cuda:5"], "cuda:5 is not visible (CUDA devices here: cuda:0 to cuda:1)"),
        (["--devices", "tpu"], "'tpu' is not a device"),
    ],
)
def test_dry_run_refuses_the_devices_the_run_would_refuse(monkeypatch, ckpt, cache, work, capsys, options, match):
    fake_gpus(monkeypatch, 2)
    args = ["sweep", f"checkpoint={ckpt}", f"cache_dir={cache}", "steps=2", "n=16", "--dry-run", *options]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and match in err and "Traceback" not in err, err
    assert list(work.iterdir()) == []


def test_dry_run_names_the_workers_devices(monkeypatch, ckpt, cache, work, capsys) -> None:
    """The worker count and the devices resolved and named as the study's provenance names them (not "auto")."""
    import json

    fake_gpus(monkeypatch, 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    args = ["sweep", f"checkpoint={ckpt}", f"cache_dir={cache}", "steps=2", "n=16", "--dry-run"]
    assert main([*args, "--devices", "cuda:1,cuda:0"]) == 0
    out, err = capsys.readouterr()
    assert "workers: 2 on cuda:1 (Fake GPU), cuda:0 (Fake GPU)\n" in err and json.loads(out)["steps"] == [2]
    assert main([*args, "--devices", "cuda:1", "--workers", "3"]) == 0
    assert "workers: 3 on cuda:1 (Fake GPU)\n" in capsys.readouterr().err
    fake_gpus(monkeypatch, 0)
    assert main([*args, "--workers", "2"]) == 0  # device=auto without a GPU
    assert "workers: 2 on cpu\n" in capsys.readouterr().err
    assert list(work.iterdir()) == []


def test_the_study_records_the_devices_the_workers_use(monkeypatch, ckpt, cache, work) -> None:
    """Not the sweep's ``device`` key (auto → cuda:0): each device a worker runs on, once, named as trials are."""
    from helpers.sweep import url

    fake_gpus(monkeypatch, 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    recorded: list[dict] = []

    def fake_create_study(name, storage, heartbeat, protocol, meta, grid=None):
        recorded.append(meta)
        raise DDIMError("stop before any worker starts")

    monkeypatch.setattr(runner, "create_study", fake_create_study)
    spec = spec_of(ckpt, cache, "steps=2", "n=16")
    for devices in ("cuda:1,cuda:0", "cuda:1", "cpu"):
        with pytest.raises(DDIMError, match="stop before"):
            runner.run_sweep(spec, workers=3, devices=devices, storage=url(work), wandb="disabled", progress=False)
    assert [m["device"] for m in recorded] == ["cuda:1 (Fake GPU), cuda:0 (Fake GPU)", "cuda:1 (Fake GPU)", "cpu"]


def test_the_extras_run_on_the_first_workers_device(monkeypatch, ckpt, cache, work) -> None:
    """With several workers the interpolation strip and inversion table are made in this process, on worker 0's
    device (--devices), not on the sweep's device key (auto)."""
    from helpers.sweep import url

    fake_gpus(monkeypatch, 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    built: list[str] = []

    class FakeEvaluator:
        def __init__(self, spec, sha) -> None:
            built.append(spec.device)

        def extras(self, study, display) -> None:
            built.append("extras")

    monkeypatch.setattr(runner, "Evaluator", FakeEvaluator)
    monkeypatch.setattr(workers, "run_workers", lambda *a: None)  # the workers' cells are not the point here
    spec = spec_of(ckpt, cache, "steps=2", "n=16", "interpolation=true")
    assert spec.device == "auto"
    runner.run_sweep(spec, devices="cuda:1,cuda:0", storage=url(work), wandb="disabled", progress=False)
    assert built == ["cuda:1", "extras"]


def test_devices_on_a_machine_without_cuda_say_so(monkeypatch, ckpt, cache, work, capsys):
    fake_gpus(monkeypatch, 0)
    args = ["sweep", f"checkpoint={ckpt}", f"cache_dir={cache}", "steps=2", "n=16", "--dry-run", "--devices", "cuda:0"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "this machine has no CUDA device; drop --devices" in err, err
