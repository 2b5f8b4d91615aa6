"""bench.metrics.folder: metrics of a folder of PNG samples equal those of the same images in memory; a folder
of the wrong count, shape or mode, or with an unreadable file, is refused in one line naming what is wrong.

Offline, on the bundled digits with the classifier extractor (as test_metrics.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.metrics import one_line_error, write_pngs
from PIL import Image

from bench.metrics.fidelity import compute_metrics
from bench.metrics.folder import compute_metrics_from_folder, read_png_folder


def test_metrics_from_a_png_folder_equal_in_memory(cache_dir: Path, test_u8: torch.Tensor, tmp_path: Path) -> None:
    samples = test_u8[:60]
    write_pngs(tmp_path / "samples", samples)
    (tmp_path / "samples" / "notes.txt").write_text("ignored")
    assert torch.equal(read_png_folder(tmp_path / "samples"), samples)
    got = compute_metrics_from_folder(
        tmp_path / "samples", dataset="digits", cache_dir=cache_dir, metrics=("fid",), n_expected=60
    )
    assert got == compute_metrics(samples, dataset="digits", cache_dir=cache_dir, metrics=("fid",))
    for asked in (61, 59):  # fewer files than asked, and more
        one_line_error(
            lambda a=asked: compute_metrics_from_folder(
                tmp_path / "samples", dataset="digits", cache_dir=cache_dir, n_expected=a
            ),
            "60",
            str(asked),
        )


def test_png_folder_mismatches_are_refused(test_u8: torch.Tensor, tmp_path: Path) -> None:
    def run(folder: Path) -> None:
        compute_metrics_from_folder(folder, dataset="digits", cache_dir=tmp_path / "cache", metrics=("fid",))

    write_pngs(tmp_path / "rgb", test_u8[:12].repeat(1, 3, 1, 1))
    one_line_error(lambda: run(tmp_path / "rgb"), "(3, 16, 16)", "(1, 16, 16)", "nothing is resized")
    write_pngs(tmp_path / "small", test_u8[:12, :, :8, :8])
    one_line_error(lambda: run(tmp_path / "small"), "(1, 8, 8)")
    write_pngs(tmp_path / "mixed", test_u8[:3])
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "mixed" / "zzz.png")
    one_line_error(lambda: run(tmp_path / "mixed"), "zzz.png", "one size")
    Image.fromarray(np.zeros((16, 16, 4), dtype=np.uint8)).save(tmp_path / "rgba.png")
    (tmp_path / "rgba").mkdir()
    os.replace(tmp_path / "rgba.png", tmp_path / "rgba" / "0.png")
    one_line_error(lambda: run(tmp_path / "rgba"), "RGBA")
    (tmp_path / "empty").mkdir()
    one_line_error(lambda: run(tmp_path / "empty"), "no .png")
    one_line_error(lambda: run(tmp_path / "missing"), "does not exist")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_an_unreadable_png_is_named(
    test_u8: torch.Tensor, tmp_path: Path, capsys: pytest.CaptureFixture, damage: str
) -> None:
    from bench.cli import main

    folder = tmp_path / "samples"
    write_pngs(folder, test_u8[:12])
    bad = folder / "000005.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a PNG at all\n" * 8)
    one_line_error(lambda: read_png_folder(folder), str(bad), "not a readable PNG", "regenerate or remove it")
    argv = ["metrics", str(folder), "--dataset", "digits", "--metric", "fid", "--device", "cpu"]
    code = main([*argv, "--cache-dir", str(tmp_path / "cache")])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (code, err)
    assert "000005.png" in lines[0] and "not a readable PNG" in lines[0], lines[0]
    assert "Traceback" not in out + err
    assert not (tmp_path / "cache").exists()  # refused before any work


@pytest.mark.parametrize(
    "files",
    [
        [f"../real/{i:06d}.png" for i in range(12)],  # samples outside the folder would be scored
        [str(Path("real").absolute() / "000000.png"), "/etc/passwd"],
        ["000000.png", "000000.png"],
        ["sub/000000.png"],
        "000000.png",
        [0],
    ],
)
def test_a_manifest_naming_files_a_sample_run_does_not_write_is_refused(
    files, test_u8: torch.Tensor, work: Path, capsys: pytest.CaptureFixture
) -> None:
    """``samples.json`` is read from the folder, so untrusted: its entries never reach a file outside it."""
    from helpers.cli import run_err

    write_pngs(work / "real", test_u8[:12])
    write_pngs(work / "esc", test_u8[:1])
    (work / "esc" / "samples.json").write_text(json.dumps({"files": files, "complete": True}))
    argv = ["metrics", "esc", "--dataset", "digits", "--metric", "fid", "--device", "cpu", "--cache-dir", "cache"]
    code, err = run_err(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "samples.json is not one `ddimbench sample` wrote" in err and "delete it to score" in err, err
    assert not (work / "cache").exists()  # refused before anything was read or built


@pytest.mark.parametrize("n", ["-1", "0"])
def test_metrics_refuses_an_expected_count_below_one(
    n: str, test_u8: torch.Tensor, work: Path, capsys: pytest.CaptureFixture
) -> None:
    """Was: "got 12 samples but -1 were asked; ... generate exactly -1"."""
    from helpers.cli import run_err

    write_pngs(work / "s", test_u8[:12])
    argv = ["metrics", "s", "--dataset", "digits", "--metric", "fid", "--device", "cpu", "--cache-dir", "cache"]
    code, err = run_err([*argv, "-n", n], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"-n must be ≥ 1 (the exact sample count to score), got {n}" in err and "generate exactly" not in err, err
    assert not (work / "cache").exists()
    one_line_error(lambda: compute_metrics(test_u8[:12], dataset="digits", n_expected=int(n)), "n_expected must be ≥ 1")
