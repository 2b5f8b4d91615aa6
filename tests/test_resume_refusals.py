"""`train --resume` from a damaged run: one line, exit 2, and the run directory left exactly as it was.

A checkpoint whose optimiser state was edited (a string, the wrong structure, other Adam settings, moments of
the wrong shape or NaN) was an AttributeError / TypeError traceback, or one at the first step; a config.json
of the wrong shape was taken as it was and overwritten.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers.cli import run_err

from bench.cli import main

TRAIN = ["train", "--dataset", "digits", "--batch-size", 8, "--ch", 8, "--ch-mult", "1,2", "--num-res-blocks", 1,
         "--attn-resolutions=", "--num-groups", 4, "--sample-every", 0, "--save-every", 2, "--warmup", 1,
         "--device", "cpu", "--num-workers", 0, "--T", 100, "--wandb", "disabled"]  # fmt: skip


def train(run: Path, capsys: pytest.CaptureFixture, *more) -> tuple[int, str]:
    return run_err([*TRAIN, "--run-dir", run, *more], capsys)


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("resume") / "run"
    assert main([str(a) for a in [*TRAIN, "--run-dir", run, "--max-steps", 2]]) == 0
    return run


def _moments(change):  # every parameter's Adam state, changed
    return lambda o: o.update(state={i: change(dict(s)) for i, s in o["state"].items()})


OPTIMIZER = {
    "a string": (lambda o: "x", "optimizer state is not a mapping of state and param_groups"),
    "wrong structure": (lambda o: {"state": 5, "param_groups": "x"}, "is not a mapping of state and param_groups"),
    "no parameter groups": (lambda o: o.update(param_groups=[]), "does not fit the model (ValueError)"),
    "other betas": (
        lambda o: o.update(param_groups=[{**o["param_groups"][0], "betas": "x"}]),
        "has other settings: betas='x' (want (0.9, 0.999))",
    ),
    "moments of another shape": (_moments(lambda s: {**s, "exp_avg": torch.zeros(3)}), "exp_avg has shape (3,)"),
    "NaN moments": (
        _moments(lambda s: {**s, "exp_avg_sq": torch.full_like(s["exp_avg_sq"], float("nan"))}),
        "exp_avg_sq holds NaN or infinite values",
    ),
}


@pytest.mark.parametrize("case", OPTIMIZER)
def test_a_doctored_optimizer_state_is_refused_and_nothing_changes(trained, tmp_path, capsys, case):
    doctor, needle = OPTIMIZER[case]
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    path = run / "checkpoints" / "step-0000002.pt"
    state = torch.load(path, weights_only=True)
    replaced = doctor(state["optimizer"])  # None: changed in place
    state["optimizer"] = state["optimizer"] if replaced is None else replaced
    torch.save(state, path)
    before = snapshot(run)
    code, err = train(run, capsys, "--max-steps", 4, "--resume")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{path} cannot be resumed: its optimizer state" in err and needle in err, err
    assert snapshot(run) == before


def test_the_untouched_run_resumes(trained, tmp_path, capsys):
    """The control: the copied run, resaved unchanged, continues."""
    shutil.copytree(trained, tmp_path / "run")
    path = tmp_path / "run" / "checkpoints" / "step-0000002.pt"
    torch.save(torch.load(path, weights_only=True), path)
    code, err = train(tmp_path / "run", capsys, "--max-steps", 4, "--resume")
    assert code == 0, err
    assert (tmp_path / "run" / "checkpoints" / "step-0000004.pt").is_file()


@pytest.mark.parametrize("saved", [{"train": ["x"]}, {"train": "x"}, {"train": None}])
def test_a_config_json_of_the_wrong_shape_is_refused_and_kept(tmp_path, capsys, saved):
    """A run without checkpoints is compared with its config.json: settings that are not a mapping cannot be."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(saved))
    before = snapshot(run)
    code, err = train(run, capsys, "--max-steps", 2, "--resume")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "config.json holds train settings that are a" in err and "not a mapping" in err, err
    assert snapshot(run) == before
