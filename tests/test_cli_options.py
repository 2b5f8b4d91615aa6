"""The command line's surface: --version, bare `ddimbench`, shell completion, choices in --help, the sweep
keys in `sweep --help`, and the Inception-weights flags and messages (no network: downloads are faked)."""

from __future__ import annotations

import copy
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import pytest
from helpers import ROOT
from helpers.cli import run

from bench.metrics import inception
from bench.metrics.fidelity import resolve_inception_weights
from bench.sweep.overrides import KEYS
from bench.sweep.spec import SweepSpec


@pytest.fixture(autouse=True)
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Help rendered 250 columns wide: no option text wrapped inside its column."""
    monkeypatch.setenv("COLUMNS", "250")


def flat(text: str) -> str:
    """Help text without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_version(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and re.fullmatch(r"ddimbench \d+\.\d+\.\d+\S*", out.strip()), out


def test_bare_command_prints_help_and_exits_0(capsys: pytest.CaptureFixture) -> None:
    code, out, err = run([], capsys)
    assert code == 0 and "Usage: ddimbench" in out and "sweep" in out and "error" not in err, (out, err)


def test_shell_completion_offers_commands_and_choices() -> None:
    def complete(words: str, cword: int) -> list[str]:
        env = {**os.environ, "_DDIMBENCH_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "bench.cli"], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert complete("ddimbench sw", 1) == ["sweep"]
    assert complete("ddimbench train --dataset c", 3) == ["cifar10", "celeba"]
    assert complete("ddimbench sample --sampler p", 3) == ["plms", "pndm"]


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("train", ["--dataset <digits|mnist|cifar10|celeba|folder>", "--wandb <online|offline|disabled>",
                   "--device <auto|cpu|cuda|cuda:N>", "--beta-schedule <linear|quad|const|jsd|sigmoid|cosine>"]),
        ("sample", ["--spacing <uniform|quad|trailing|linspace>",
                    "--sampler <ddim|sigma_hat|ddpm|dpmpp_2m|plms|pndm>"]),
        ("metrics", ["--extractor <classifier|inception>", "--metric <fid|isc|kid>"]),
        ("sweep", ["--wandb <online|offline|disabled>", "--device <auto|cpu|cuda|cuda:N>"]),
        ("report", ["--wandb <online|offline|disabled>"]),
    ],
)  # fmt: skip
def test_help_shows_the_choices(command: str, shown: list[str], capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run([command, "--help"], capsys)
    text = flat(out)
    assert code == 0
    for item in shown:
        assert item in text, (item, text)


@pytest.mark.parametrize(
    ("argv", "problem", "command"),
    [
        (["sweep", "steps=1", "--workers", "0"], "'--workers': Input should be greater than or equal to 1", "sweep"),
        (["report", "x", "--bogus"], "No such option: --bogus", "report"),
        (["report"], "Missing argument 'NAME'", "report"),
        (["frobnicate"], "No such command 'frobnicate'", ""),
    ],
)  # fmt: skip
def test_a_usage_error_points_to_the_help_of_the_command_run(argv, problem, command, capsys) -> None:
    code, _, err = run(argv, capsys)
    pointer = f"; see `{' '.join(['ddimbench', command]).strip()} --help`"
    assert code == 2 and err.count("\n") == 1 and problem in err and err.rstrip().endswith(pointer), err
    assert f"{problem}.;" not in err  # no stray full stop before the pointer


def test_compare_paper_help_lists_exactly_the_datasets_accepted(capsys: pytest.CaptureFixture) -> None:
    from bench.report import paper
    from ddim.errors import DDIMError

    _, out, _ = run(["report", "--help"], capsys)
    listed = re.search(r"--compare-paper <([^>]+)>", flat(out))[1].split("|")
    assert [paper.canonical(name) for name in listed] == listed == ["cifar10", "celeba", "lsun_bedroom", "lsun_church"]
    with pytest.raises(DDIMError) as refused:
        paper.canonical("imagenet")
    assert str(refused.value).endswith(f"use one of: {', '.join(listed)}")


def test_choices_accept_any_case(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, out, err = run(["train", "--dataset", "CIFAR10", "--wandb", "Offline", "--dry-run"], capsys)
    assert code == 0 and '"dataset": "cifar10"' in out, err


def test_sweep_help_lists_every_key_with_the_code_default(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(["sweep", "--help"], capsys)
    text = flat(out)
    assert code == 0
    for key in KEYS:
        assert re.search(rf"\b{key}\b", text), key
    for item in ("steps=10,20,50,100", "eta=0", "n=1000", "sampler=ddim", "metrics=fid,isc,kid", "trials=20",
                 "interpolation=true", "device=auto"):  # fmt: skip
        assert item in text, item
    assert "checkpoint — run directory or .pt checkpoint file (default: the newest run under runs/)" in text


def test_sweep_help_follows_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """The listing is computed from SweepSpec: change a default there and the help changes."""
    from bench.sweep.overrides import describe_keys

    fields = dict(SweepSpec.__dataclass_fields__)
    changed = copy.copy(fields["n"])
    changed.default = 777
    monkeypatch.setattr(SweepSpec, "__dataclass_fields__", {**fields, "n": changed})
    listed = dict(describe_keys())
    assert "n=777" in listed and "n=1000" not in listed


# --- Inception weights: the flags the messages name exist; offline, the message says which file where ----


@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    return tmp_path / "torch-home" / "hub" / "checkpoints" / inception.WEIGHTS_FILE


def test_offline_message_names_the_file_the_place_and_flags_that_exist(
    empty_hub: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(Exception) as info:
        resolve_inception_weights()
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert f"at {empty_hub}" in message and inception.weights_url() in message
    assert inception.weights_url().endswith(inception.WEIGHTS_FILE)
    flags = set(re.findall(r"--[a-z][a-z-]+", message))
    assert flags == {"--download", "--inception-weights"}, flags
    for command in ("sweep", "metrics"):  # every command that scores with Inception takes them
        code, out, _ = run([command, "--help"], capsys)
        assert code == 0 and all(flag in flat(out) for flag in flags), command


def test_download_goes_through_torch_hub_from_torch_fidelity_url_and_checks_the_hash(
    empty_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.hub

    calls = []

    def fake(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        calls.append((url, hash_prefix))
        Path(dst).write_bytes(b"fake weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake)
    with pytest.raises(Exception, match="not the expected file"):
        resolve_inception_weights(download=True)
    assert calls == [(inception.weights_url(), inception.WEIGHTS_SHA256[:8])]
    assert not empty_hub.exists()  # a wrong file is not left where torch-fidelity would load it
    monkeypatch.setattr(inception, "WEIGHTS_SHA256", hashlib.sha256(b"fake weights").hexdigest())
    assert resolve_inception_weights(download=True) == empty_hub and empty_hub.read_bytes() == b"fake weights"
    assert resolve_inception_weights() == empty_hub  # now cached: no download


def test_download_without_network_is_one_line(empty_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.hub

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(Exception) as info:
        resolve_inception_weights(download=True)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and "failed (" in message and f"at {empty_hub}" in message


def test_a_foreign_file_in_the_cache_is_refused(empty_hub: Path) -> None:
    empty_hub.parent.mkdir(parents=True)
    empty_hub.write_bytes(b"pytorch-fid's weights, renamed")
    with pytest.raises(Exception, match="is not torch-fidelity's") as info:
        resolve_inception_weights()
    assert "delete it" in str(info.value)


def test_sweep_download_flag_fetches_before_any_work(
    empty_hub: Path, ckpt: Path, work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import torch.hub

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    argv = ["sweep", "steps=2", "n=10", "extractor=inception", f"checkpoint={ckpt}", "--download"]
    code, _, err = run(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "downloading the Inception weights" in err, err
    weights = work / "w.pth"
    weights.write_bytes(b"x")
    code, out, err = run([*argv[:-1], "--inception-weights", weights, "--dry-run"], capsys)
    assert code == 0 and f'"inception_weights": "{weights}"' in out, err  # the flag is the key
    code, _, err = run([*argv[:-1], "--inception-weights", weights, f"inception_weights={weights}"], capsys)
    assert code == 2 and "inception_weights is given twice" in err


def test_help_version_and_completion_need_no_torch() -> None:
    """Building the command (what --help, --version and every completion do) imports no torch: a TAB stays quick."""
    code = (
        "import sys, typer, bench.cli; typer.main.get_command(bench.cli.app); "
        "assert 'torch' not in sys.modules and 'wandb' not in sys.modules, 'heavy import'"
    )
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env={**os.environ, "PYTHONPATH": path})


@pytest.mark.parametrize("command", [["metrics", "."], ["classifier"]])
def test_download_flag_fetches_the_data_first(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    import ddim.data
    from ddim.errors import DDIMError

    def fetch(name: str, root: str) -> None:
        raise DDIMError(f"fetching {name} into {root}")

    monkeypatch.setattr(ddim.data, "fetch_dataset", fetch)
    code, _, err = run([*command, "--dataset", "MNIST", "--data-root", tmp_path, "--download"], capsys)
    assert code == 2 and f"fetching mnist into {tmp_path}" in err, err


def test_fetch_dataset_downloads_only_what_torchvision_can(monkeypatch: pytest.MonkeyPatch) -> None:
    import ddim.data

    calls = []
    monkeypatch.setattr(ddim.data, "load_dataset", lambda name, root, split, download=False: calls.append(name))
    for name in ("MNIST", "cifar10", "celeba", "digits", "folder"):
        ddim.data.fetch_dataset(name, "data")
    assert calls == ["mnist", "cifar10"]


def test_the_torch_free_names_are_the_librarys() -> None:
    """The CLI lists ddim.names without importing torch; the sampler names must be the registry's."""
    import ddim.data
    import ddim.names
    import ddim.sampling
    import ddim.schedules

    assert ddim.names.SAMPLERS == tuple(ddim.sampling.REGISTRY)
    assert ddim.data.DATASETS is ddim.names.DATASETS and ddim.schedules.SPACINGS is ddim.names.SPACINGS
