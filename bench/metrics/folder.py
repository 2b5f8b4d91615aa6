"""Scoring a folder of PNG samples (``ddimbench metrics``): read exactly the samples, check their size, measure.

The names ``ddimbench sample`` gives the files of its folders (``sample_names``, ``MANIFEST``) are defined here,
where they are read back; ``bench.generate`` writes them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.metrics.fidelity import (
    EXTRACTORS,
    check_expected_count,
    compute_metrics,
    default_extractor,
    resolve_inception_weights,
)
from bench.metrics.reference import first_line
from ddim.errors import DDIMError

MANIFEST = "samples.json"  # what ``ddimbench sample`` (bench.generate) writes beside the samples


def sample_names(n: int) -> list[str]:
    """The files of samples 0..n-1 (``000000.png`` …) that ``ddimbench sample`` writes, in order: exactly the list
    its manifest holds."""
    return [f"{i:06d}.png" for i in range(n)]


def _listed_samples(folder: Path) -> list[Path] | None:
    """The files named by a ``ddimbench sample`` manifest (``samples.json``), or None without one.

    The manifest is untrusted: it must list exactly the names ``ddimbench sample`` writes (``sample_names``:
    plain file names in the folder, in order, each once), so no entry reaches a file outside the folder.
    """
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return None
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
        names = info["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DDIMError(f"{manifest} is damaged; rerun `ddimbench sample` into that folder") from None
    if not isinstance(names, list) or names != sample_names(len(names)):
        raise DDIMError(
            f"{manifest} is not one `ddimbench sample` wrote (its files are not 000000.png, 000001.png, … in order); "
            f"delete it to score the folder's PNGs, or rerun `ddimbench sample` into an empty folder"
        )
    if not info.get("complete", False):
        raise DDIMError(f"{folder} holds an unfinished `ddimbench sample` run; rerun the same command to finish it")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DDIMError(f"{folder} lacks {len(missing)} listed samples (e.g. {missing[0]}); rerun `ddimbench sample`")
    return [folder / n for n in names]


def _image_error(exc: BaseException) -> str:
    """A short reason for a PIL failure (without the path PIL repeats)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image PIL can identify"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return first_line(exc)


def read_png_folder(folder: str | os.PathLike) -> Tensor:
    """The PNGs directly in ``folder`` (sorted by name) as uint8 (N, C, H, W); nothing is resized.

    A folder written by ``ddimbench sample`` is read through its manifest: exactly the listed
    samples (its grid image is not a sample).
    """
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise DDIMError(f"sample folder {str(folder)!r} does not exist; pass the folder the samples were written to")
    files = _listed_samples(folder)
    if files is None:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise DDIMError(f"no .png files in {str(folder)!r}; pass the folder the samples were written to")
    images = []
    for path in files:
        try:
            with Image.open(path) as im:
                if im.mode not in ("L", "RGB"):
                    raise DDIMError(f"{path} has PNG mode {im.mode}; samples must be 8-bit grayscale (L) or RGB")
                arr = np.asarray(im, dtype=np.uint8)  # decodes: a truncated file fails here
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
            raise DDIMError(f"{path} is not a readable PNG ({_image_error(e)}); regenerate or remove it") from None
        img = torch.from_numpy(arr.copy())
        img = img[None] if img.dim() == 2 else img.permute(2, 0, 1)  # (C, H, W)
        if images and img.shape != images[0].shape:
            raise DDIMError(
                f"{path} is {tuple(img.shape)} (C, H, W) but {files[0].name} is {tuple(images[0].shape)}; "
                f"all samples must share one size"
            )
        images.append(img)
    return torch.stack(images)


def compute_metrics_from_folder(
    folder: str | os.PathLike,
    *,
    dataset: str,
    resolution: int | None = None,
    extractor: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """``compute_metrics`` on the PNG samples in ``folder``; their size must match the dataset's.

    Every other keyword (``metrics``, ``n_expected``, ``device``, ``cache_dir``, ...) is
    ``compute_metrics``'s.
    """
    from ddim.data import dataset_info

    if extractor is not None and extractor not in EXTRACTORS:  # refuse before reading thousands of files
        raise DDIMError(f"unknown extractor {extractor!r}; choose one of {', '.join(EXTRACTORS)}")
    check_expected_count(kwargs.get("n_expected"), "-n")  # the metrics command's option
    samples = read_png_folder(folder)
    info = dataset_info(dataset, resolution=resolution)
    want = (info.channels, info.resolution, info.resolution)
    if tuple(samples.shape[1:]) != want:
        raise DDIMError(
            f"samples in {str(folder)!r} are {tuple(samples.shape[1:])} (C, H, W) but {dataset} is {want}; "
            f"pass the matching --dataset/--resolution (nothing is resized)"
        )
    return compute_metrics(samples, dataset=dataset, resolution=resolution, extractor=extractor, **kwargs)


def score_folder(folder: str | os.PathLike, *, dataset: str, download: bool = False, **kwargs: Any) -> dict[str, Any]:
    """``ddimbench metrics``: fetch what is missing when ``download`` (the reference images, the Inception
    weights), then ``compute_metrics_from_folder``; KID shown ×10³ as everywhere else (``Scores.shown``)."""
    from bench.store.record import Scores
    from ddim.data import fetch_dataset

    if download:
        fetch_dataset(dataset, kwargs.get("data_root", "data"))
        if (kwargs.get("extractor") or default_extractor(dataset)) == "inception":
            resolve_inception_weights(kwargs.get("inception_weights"), download=True)
    scores, rest = Scores.split(compute_metrics_from_folder(folder, dataset=dataset, **kwargs))
    return {**rest, **{k: v for k, v in scores.shown().items() if v is not None}}


def result_lines(result: dict[str, Any]) -> list[str]:
    """The terminal lines of a ``score_folder`` result."""
    from bench.store.record import Scores

    lines = [f"{k:13s} {result[k]:.6g}" for k in Scores().shown() if result.get(k) is not None]
    return [*lines, f"{'n':13s} {result.get('n')}", f"{'extractor':13s} {result.get('extractor')}"]
