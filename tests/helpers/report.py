"""The report tests' synthetic sweep: records of every kind (failed, running, odd NFE, several seed
blocks) with their images, and the report written from them once per module (``built``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SPACINGS = ("quad", "uniform")
ETAS = (0.0, 0.5, 1.0)
STEPS = (10, 20, 50)
FAILED = ("quad", "ddim", 0.5, 20)  # (spacing, sampler, eta, S) of the FAILED cell
RUNNING = ("quad", "ddim", 1.0, 50)
ODD_NFE = ("quad", "sigma_hat", None, 10)  # nfe != steps
METRIC_FIELDS = {"fid": ("fid", 1.0, min), "isc": ("isc_mean", 1.0, max), "kid": ("kid_mean", 1000.0, min)}
DETERMINISTIC = ("table.md", "table.tex", "table_standalone.tex", "results.csv", "manifest.json", "README.md")


def _png(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def make_records(root: Path) -> tuple[list[dict], dict]:
    """ddim η ∈ {0, 0.5, 1} × S ∈ {10, 20, 50} on two schedules, σ̂ and dpmpp_2m rows, two seed blocks
    for η = 0, one FAILED and one RUNNING cell, one cell with nfe != steps, one tied column."""
    rng = np.random.default_rng(0)
    records: list[dict] = []

    def add(spacing, sampler, eta, steps, block, **kw):
        n = len(records)
        key = (spacing, sampler, eta, steps)
        state = "FAIL" if key == FAILED else "RUNNING" if key == RUNNING else "COMPLETE"
        done = state == "COMPLETE"
        fid = float(40.0 / steps * (1 + (eta or 0.0) * 2) + rng.random()) if done else None
        rec = {
            "number": n,
            "state": state,
            "sampler": sampler,
            "steps": steps,
            "eta": eta,
            "spacing": spacing,
            "seed_block": block,
            "nfe": steps + 2 if key == ODD_NFE else steps,
            "fid": fid,
            "isc_mean": float(8 + rng.random()) if done else None,
            "isc_std": 0.1 if done else None,
            "kid_mean": float(0.01 * rng.random()) if done else None,
            "kid_std": 0.001 if done else None,
            "wall_s": steps * 0.5,
            "images_per_s": 200.0 / steps,
            "n": 100,
            "seeds": f"{block * 100}-{block * 100 + 99}",
            "grid": None,
            "strip": None,
            "error": "CUDA out of memory; retry with a smaller batch" if state == "FAIL" else None,
            "checkpoint_sha256": "c0ffee",
            "extractor": "inception-v3-compat",
            "extractor_sha256": "beef",
            "ref_key": "cifar10/train/32/inception/50000",
            "ref_sha256": "f00d",
            "device": "cpu",
        }
        if done:
            rec["grid"] = f"samples/grid_{n}.png"
            _png(root / rec["grid"], (24, 24), (n * 7 % 256, 80, 160))
            if sampler == "ddim":
                rec["strip"] = f"samples/strip_{n}.png"
                _png(root / rec["strip"], (64, 8), (n * 7 % 256, 160, 80))
        rec.update(kw)
        records.append(rec)

    for spacing in SPACINGS:
        for eta in ETAS:
            for s in STEPS:
                for block in (0, 1) if eta == 0.0 else (0,):
                    add(spacing, "ddim", eta, s, block)
        for s in STEPS:
            add(spacing, "sigma_hat", None, s, 0)
    for s in (10, 20):
        add("uniform", "dpmpp_2m", None, s, 0)
    # A tie at display precision in uniform S = 20: η = 0.5 equals η = 0.0's block mean.
    tied = [r for r in records if (r["spacing"], r["eta"], r["steps"]) == ("uniform", 0.0, 20)]
    target = float(np.mean([r["fid"] for r in tied]))
    for r in records:
        if (r["spacing"], r["eta"], r["steps"]) == ("uniform", 0.5, 20):
            r["fid"] = target
        if (r["spacing"], r["sampler"], r["steps"]) == ("uniform", "dpmpp_2m", 20):
            r["fid"] = target - 0.004 + 10  # a worse row, away from the tie
    meta = {
        "name": "synthetic",
        "command": "ddimbench sweep --name synthetic",
        "git_commit": "0123abc",
        "versions": {"numpy": np.__version__, "torch": "n/a"},
        "device": "cpu",
        "dataset": "cifar10",
        "T": 1000,
        "checkpoint": "ckpt/ema.pt",
        "checkpoint_sha256": "c0ffee",
        "extractor": "inception-v3-compat",
        "extractor_sha256": "beef",
        "ref_key": "cifar10/train/32/inception/50000",
        "ref_sha256": "f00d",
        "n": 100,
        "seeds": "0-99",
        "created": "2024-05-01T12:00:00",
    }
    return records, meta


def make_extras(root: Path) -> dict:
    _png(root / "extras/interp.png", (80, 8), (10, 20, 30))
    return {
        "interpolation": "extras/interp.png",
        "inversion": [{"steps": 10, "mse": 0.0151}, {"steps": 50, "mse": 0.0021}],
    }
