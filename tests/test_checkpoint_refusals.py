"""A doctored checkpoint meets `sample` (and every other loader user) as one line, exit 2, nothing written.

Each case edits one field of a real training checkpoint the way a damaged or hand-edited file would hold it;
these were tracebacks (meta, sparse, a list of train settings), or were used silently (integer, bool or
complex weights cast or left unscanned, a negative step, a UNet making 64px images for a 16px dataset).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from helpers.cli import run_err
from helpers.training import tiny_config

from ddim.training import train


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> dict:
    run = tmp_path_factory.mktemp("ck") / "run"
    result = train(tiny_config(run, max_steps=2, save_every=2))
    return torch.load(result.checkpoint, weights_only=True)


def _each(key: str, change):  # every tensor of state[key], changed
    return lambda s: s.update({key: {k: change(v) for k, v in s[key].items()}})


DOCTORED = {
    "meta ema": (_each("ema", lambda v: v.to("meta")), "ema weight", "holds no values (a meta tensor)"),
    "sparse ema": (_each("ema", lambda v: v.to_sparse()), "ema weight", "sparse_coo tensor, not a dense one"),
    "integer model": (_each("model", lambda v: v.long()), "model weight", "torch.int64, not a real floating-point"),
    "bool ema": (_each("ema", lambda v: v.bool()), "ema weight", "torch.bool, not a real floating-point"),
    "complex model": (_each("model", lambda v: v.to(torch.complex64)), "model weight", "torch.complex64"),
    "train a list": (lambda s: s.update(train=["x"]), "train settings are a list, not a mapping"),
    "dataset a list": (lambda s: s.update(dataset=["x"]), "dataset ['x'] is not a mapping"),
    "negative step": (lambda s: s.update(step=-5), "step -5 is not a count of training steps"),
    "step a float": (lambda s: s.update(step=2.5), "step 2.5 is not a count"),
    "64px UNet, 16px digits": (lambda s: s["unet"].update(resolution=64), "makes 1x64px images but digits is 1x16px"),
    "ch_mult a string": (lambda s: s["unet"].update(ch_mult="12"), "ch_mult='12' must be a list of integers"),
}


@pytest.mark.parametrize("case", DOCTORED)
def test_doctored_checkpoint_is_one_line_and_nothing_is_written(state, tmp_path, capsys, case):
    doctor, *needles = DOCTORED[case]
    doctored = copy.deepcopy(state)
    doctor(doctored)
    path = tmp_path / "doctored.pt"  # not named step-*: the step is checked for itself, not against the name
    torch.save(doctored, path)
    code, err = run_err(["sample", "--checkpoint", path, "--out", tmp_path / "out", "-n", 1, "--steps", 1,
                         "--device", "cpu"], capsys)  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(path) in err and all(n in err for n in needles), err
    assert not (tmp_path / "out").exists()


def test_the_untouched_checkpoint_samples(state, tmp_path, capsys):
    """The control: the same file, saved the same way but unedited, is sampled."""
    torch.save(state, tmp_path / "c.pt")
    code, err = run_err(["sample", "--checkpoint", tmp_path / "c.pt", "--out", tmp_path / "out", "-n", 1,
                         "--steps", 1, "--device", "cpu"], capsys)  # fmt: skip
    assert code == 0, err
    assert len(list(Path(tmp_path / "out").glob("*.png"))) == 2  # the sample and grid.png
