"""Files from elsewhere are data, never code: a pickle that would run something is refused unrun.

Each doctored file below would create ``marker`` when unpickled without restrictions (``open(marker,
"w")``); the test checks that it is refused (one line, exit 2 from the CLI) and that the marker never
appears, and that a genuine file of the same kind still loads.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import run_err as cli
from helpers.metrics import one_line_error, write_pngs
from helpers.sweep import as_record

from bench.cli import main
from bench.metrics.fidelity import INCEPTION_WEIGHTS_ENV, compute_metrics
from ddim.data import load_dataset


class Payload:
    """Unpickling this creates ``marker``: proof that a file's pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def assert_one_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ---- Inception weights (--inception-weights FILE / DDIMBENCH_INCEPTION_WEIGHTS) ----


def test_inception_weights_holding_code_are_refused_unrun(
    tmp_path: Path, test_u8: torch.Tensor, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": Payload(marker)}, evil)
    write_pngs(tmp_path / "s", test_u8[:20])
    argv = ["metrics", tmp_path / "s", "--dataset", "digits", "--extractor", "inception", "--metric", "isc"]
    argv += ["--device", "cpu", "--cache-dir", tmp_path / "c"]
    code, err = cli([*argv, "--inception-weights", evil], capsys)
    assert code == 2 and not marker.exists()
    assert_one_line(err, "evil.pth", "io.open", "could run", "--inception-weights FILE")
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(evil))  # the same from the environment
    code, err = cli(argv, capsys)
    assert code == 2 and not marker.exists()
    assert_one_line(err, "evil.pth", "io.open", "could run")
    # A plain pickle (not a torch file) holding code: refused too (torch reads only protocol 2 outside a zip).
    for protocol in (2, 4):
        with open(evil, "wb") as f:
            pickle.dump({"fc.weight": Payload(marker)}, f, protocol=protocol)
        code, err = cli(argv, capsys)
        assert code == 2 and not marker.exists()
        assert_one_line(err, "evil.pth", "--inception-weights FILE")


def test_genuine_inception_weights_pass_the_check(tmp_path: Path, test_u8: torch.Tensor) -> None:
    """A tensors-only file of the right shape gets past the weights check (the end-to-end run with such a
    file is test_metrics.py::test_inception_end_to_end_with_local_weights)."""
    from bench.metrics import fidelity
    from ddim.files import sha256_file

    path = tmp_path / fidelity.INCEPTION_WEIGHTS_FILE
    torch.save({"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}, path)
    assert fidelity.resolve_inception_weights(path) == path
    fidelity._check_inception_weights(path, sha256_file(path))  # no exception


def test_torch_fidelity_loads_are_weights_only_too(tmp_path: Path) -> None:
    """torch-fidelity itself calls ``torch.load(..., weights_only=False)``; inside ``weights_only_loads``
    such a call refuses a pickle that names code, reads numpy arrays, and the setting is undone after."""
    from bench.metrics.reference import load_plain, weights_only_loads

    marker, evil, stats = tmp_path / "pwned", tmp_path / "evil.pt", tmp_path / "stats.pt"
    torch.save({"mu": Payload(marker)}, evil)
    torch.save({"mu": np.arange(3.0), "sigma": np.eye(3)}, stats)
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    with weights_only_loads():
        with pytest.raises(pickle.UnpicklingError):
            torch.load(evil, map_location="cpu", weights_only=False)
        assert np.array_equal(torch.load(stats, weights_only=False)["sigma"], np.eye(3))
    assert not marker.exists()
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") == before
    assert np.array_equal(load_plain(stats)["mu"], np.arange(3.0))


# ---- the cached reference statistics (--cache-dir) ----


def test_a_reference_cache_holding_code_is_recomputed_unrun(
    cache_dir: Path, test_u8: torch.Tensor, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_pngs(tmp_path / "s", test_u8[:60])
    argv = ["metrics", tmp_path / "s", "--dataset", "digits", "--metric", "fid", "--json", "--device", "cpu"]
    argv += ["--cache-dir", cache_dir]
    assert main([str(a) for a in argv]) == 0
    first = capsys.readouterr().out
    ref_key = json.loads(first)["ref_key"]
    (stat_file,) = (cache_dir / "reference").glob(f"{ref_key}-*-stat-fid-*.pt")
    marker = tmp_path / "pwned"
    torch.save({"mu": Payload(marker), "sigma": np.eye(2)}, stat_file)
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0 and not marker.exists()
    assert out == first  # recomputed from the reference images: the same numbers
    assert_one_line(err, "warning:", stat_file.name, "io.open", "could run")
    assert torch.load(stat_file, weights_only=False)["mu"].ndim == 1  # rewritten with genuine statistics


def test_a_doctored_cache_file_is_refused_even_when_passed_to_compute_metrics(
    cache_dir: Path, test_u8: torch.Tensor, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    kwargs = dict(dataset="digits", cache_dir=cache_dir, metrics=("fid", "kid"), ref_count=559)
    first = compute_metrics(test_u8, **kwargs)
    (features,) = (cache_dir / "reference").glob(f"{first['ref_key']}-*-features-*.pt")
    marker = tmp_path / "pwned"
    torch.save(Payload(marker), features)
    capsys.readouterr()
    assert compute_metrics(test_u8, **kwargs)["fid"] == first["fid"]
    assert not marker.exists() and features.name in capsys.readouterr().err


# ---- CIFAR-10 batches (pickles by format) ----


def _cifar_batches(root: Path, protocol: int = 4, rename: bool = False) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = np.full((2, 3072), i, dtype=np.uint8)
        blob = pickle.dumps({"batch_label": "b", "data": data, "labels": [i, i], "filenames": [b"x", b"y"]}, protocol)
        if rename:  # as numpy 1 (the original files) names the array's reconstruction function
            blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (folder / name).write_bytes(blob)
    return folder


@pytest.mark.parametrize("protocol,rename", [(2, True), (2, False), (4, False)])
def test_genuine_cifar_batches_load(tmp_path: Path, protocol: int, rename: bool) -> None:
    _cifar_batches(tmp_path, protocol, rename)
    train = load_dataset("cifar10", root=tmp_path)
    assert train.images.shape == (10, 3, 32, 32) and train.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_a_cifar_batch_holding_code_is_refused_unrun(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = _cifar_batches(tmp_path)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({"data": Payload(marker), "labels": [0]}, f)
    one_line_error(lambda: load_dataset("cifar10", root=tmp_path), "data_batch_3", "io.open", "refused")
    assert not marker.exists()
    run_dir = tmp_path / "run"
    argv = ["train", "--dataset", "cifar10", "--data-root", tmp_path, "--run-dir", run_dir, "--max-steps", 1]
    code, err = cli([*argv, "--wandb", "disabled", "--device", "cpu"], capsys)
    assert code == 2 and not marker.exists()
    assert_one_line(err, "data_batch_3", "refused")


# ---- a sweep store names folders and files: confined to the sweep's artifacts folder ----


def _png(path: Path, colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path.read_bytes()


def _store(work: Path, name: str, grids: list, artifacts: str, extras: dict | None = None) -> str:
    """A study as another tool (or a hostile database user) could write it: cells whose stored image paths
    are ``grids``, provenance naming ``artifacts`` as the sweep's folder."""
    import optuna

    url = f"sqlite:///{work / 'doctored.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=url)
    study.set_user_attr("meta", {"name": name, "dataset": "digits", "n": 20, "artifacts": artifacts})
    if extras:
        study.set_user_attr("extras", extras)
    for i, grid in enumerate(grids):
        result = {"fid": 1.0 + i, "n": 20, "nfe": 2 + i, "seeds": "0-19", "grid": grid, "strip": grid}
        attrs = {"cell": f"c{i}", "sampler": "ddim", "steps": 2 + i, "spacing": "uniform", "seed_block": 0,
                 "eta": 0.0, "result": result}  # fmt: skip
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=1.0 + i,
                                                  user_attrs=attrs))  # fmt: skip
    return url


@pytest.mark.parametrize("name", ["../../x", "/abs/path", "a/b", ".hidden", ""])
def test_report_refuses_a_study_name_that_is_a_path(
    work: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    url = _store(work, name or "placeholder", [], "ddimbench-sweeps/x")
    inner = work / "a" / "b"
    inner.mkdir(parents=True)
    monkeypatch.chdir(inner)  # reports/../../x would be work/x
    for names in ([name], ["placeholder", name]):  # one sweep, or one of several in a combined report
        code, err = cli(["report", *names, "--storage", url, "--wandb", "disabled"], capsys)
        assert code == 2
        assert_one_line(err, "sweep name", "letters, digits")
        assert sorted(p.name for p in work.iterdir()) == ["a", "doctored.db"] and list(inner.iterdir()) == []


def test_report_reads_only_pngs_inside_the_sweeps_artifacts_folder(work: Path, capsys: pytest.CaptureFixture) -> None:
    root = work / "ddimbench-sweeps" / "g"
    (root / "sweep.json").parent.mkdir(parents=True)
    (root / "sweep.json").write_text('{"name": "g"}')
    genuine = _png(root / "cells" / "ok.png", (10, 200, 30))
    secret = _png(work / "outside" / "secret.png", (250, 1, 2))
    (root / "cells" / "link.png").symlink_to(work / "outside" / "secret.png")
    grids = ["cells/ok.png", "/etc/hostname", str(work / "outside" / "secret.png"), "../../outside/secret.png",
             "cells/link.png", "sweep.json", "cells/missing.png"]  # fmt: skip
    url = _store(work, "g", grids, str(root), extras={"interpolation": "../../outside/secret.png"})
    code, err = cli(["report", "g", "--storage", url, "--wandb", "disabled"], capsys)
    assert code == 0, err
    (warning,) = [line for line in err.splitlines() if "warning" in line]  # 6 bad × (grid, strip) + interpolation
    assert (
        warning.startswith("warning: 13 sample image(s)")
        and "not PNG files under" in warning
        and "Traceback" not in err
    )
    report = work / "reports" / "g"
    assert [p.read_bytes() for p in (report / "grids").iterdir()] == [genuine]
    assert not (report / "interpolation.png").exists()
    hostname = Path("/etc/hostname").read_bytes() if Path("/etc/hostname").is_file() else secret
    for path in report.rglob("*"):
        assert not path.is_file() or (secret not in path.read_bytes() and hostname not in path.read_bytes()), path


def test_report_ignores_an_artifacts_folder_that_is_not_a_sweeps(work: Path, capsys: pytest.CaptureFixture) -> None:
    """The store names a folder without the sweep's sweep.json (e.g. /etc): nothing is read from it."""
    elsewhere = work / "elsewhere"
    _png(elsewhere / "cells" / "ok.png", (10, 200, 30))
    url = _store(work, "g", ["cells/ok.png"], str(elsewhere))
    code, err = cli(["report", "g", "--storage", url, "--wandb", "disabled"], capsys)
    assert code == 0 and "2 sample image(s)" in err and "ddimbench-sweeps/g" in err
    assert not (work / "reports" / "g" / "grids").exists()


def test_write_report_reads_no_file_outside_its_root(tmp_path: Path) -> None:
    """The library entry point refuses too (``make_report`` leaves such paths out before calling it)."""
    from bench.report.write import write_report

    _png(tmp_path / "outside.png", (250, 1, 2))
    _png(tmp_path / "root" / "in.png", (1, 2, 3))
    record = {"number": 0, "state": "COMPLETE", "sampler": "ddim", "eta": 0.0, "steps": 2, "spacing": "uniform",
              "seed_block": 0, "fid": 1.0, "grid": "../outside.png"}  # fmt: skip
    for grid in ("../outside.png", str(tmp_path / "outside.png")):
        call = lambda g=grid: write_report([as_record({**record, "grid": g})], {}, tmp_path / "out",  # noqa: E731
                                           root=tmp_path / "root")  # fmt: skip
        one_line_error(call, "not found as a PNG file under")
    assert write_report([as_record({**record, "grid": "in.png"})], {}, tmp_path / "out", root=tmp_path / "root")


# ---- a doctored checkpoint: its stored settings pass train's rules, its weights are finite ----


@pytest.mark.parametrize("case", ["beta_end=2.0", "unknown dataset", "NaN EMA"])
def test_sample_refuses_a_doctored_checkpoint(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture, case: str):
    """Through the CLI: was a ZeroDivisionError / ValueError traceback, or black PNGs and exit 0."""
    from ddim.checkpoint import resolve_checkpoint, save_checkpoint

    state = torch.load(resolve_checkpoint(ckpt), weights_only=True)
    state.pop("format")
    if case == "beta_end=2.0":
        state["diffusion"]["beta_end"] = 2.0
    elif case == "unknown dataset":
        state["dataset"]["name"] = "imagenet"
    else:
        for v in state["ema"].values():
            v.fill_(float("nan"))
    path = save_checkpoint(tmp_path / "doctored.pt", state)
    out = tmp_path / "samples"
    code, err = cli(["sample", "--checkpoint", path, "-n", 2, "--steps", 2, "--out", out, "--device", "cpu"], capsys)
    assert code == 2 and not out.exists()
    assert_one_line(err, str(path))
