"""FID / IS / KID under a written protocol (the paper's Table 1 measure), on top of torch-fidelity.

Protocol:

- Samples are converted to uint8 with the ONE rule ``to_uint8`` before anything is measured, and
  are handed to torch-fidelity in memory (no PNG round trip). A short sample count is refused.
- The reference (input2) is the dataset's real images of ``split``, converted with the same rule
  (``bench.metrics.reference``). Its statistics are computed once and cached under a key made of dataset,
  split, resolution, extractor, the extractor weights' sha256, the reference count and a content
  hash of the reference images, so a stale entry can never be reused (torch-fidelity's own cache
  name ignores all of these except the name we give it).
- Two extractors: ``classifier`` (a small CNN trained on the dataset, see ``bench.metrics.classifier``;
  works offline, the default for digits / MNIST) and ``inception`` (torch-fidelity's
  ``inception-v3-compat``, the paper's; its weights must be available locally).
- Every result records the extractor, its weights' sha256, the reference key and the sha256 of
  the cached reference file, the reference count and N.

torch-fidelity is imported lazily: importing this module only needs torch, numpy and scipy.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bench.metrics import EXTRACTORS, METRICS, inception
from bench.metrics.inception import WEIGHTS_ENV as INCEPTION_WEIGHTS_ENV
from bench.metrics.inception import WEIGHTS_FILE as INCEPTION_WEIGHTS_FILE
from bench.metrics.reference import (
    REF_SUBSET_SEED,
    UInt8Images,
    heal_reference_cache,
    load_plain,
    load_problem,
    reference_key,
    reference_stats,
    tensor_sha256,
    weights_only_loads,
)
from ddim.errors import DDIMError
from ddim.files import sha256_file

__all__ = [
    "EXTRACTORS",
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_FILE",
    "METRICS",
    "REF_SUBSET_SEED",
    "check_expected_count",
    "compute_metrics",
    "default_extractor",
    "frechet_distance",
    "reference_key",
    "resolve_inception_weights",
    "tensor_sha256",
]

INCEPTION_NAME = "inception-v3-compat"  # torch-fidelity's registry name
INCEPTION_FEATURE_DIM = 2048  # the size of its pool features (FID / KID)
INCEPTION_LAYER_FID = str(INCEPTION_FEATURE_DIM)  # torch-fidelity's default FID/KID layer for it, named by that size
KID_SUBSET_SIZE = 1000  # torch-fidelity's default, lowered to fit small N
ISC_SPLITS = 10  # torch-fidelity's default; IS needs at least this many samples
_BATCH_SIZE = {"classifier": 256, "inception": 64}
# Memory per scored sample: its features as float32 plus the float64 copies FID's covariance and KID make
# (Inception: 2048 pool features + 1008 logits; the classifier: 128 + 10), rounded up.
FEATURE_BYTES = {"classifier": 4 * 1024, "inception": 48 * 1024}
_FIDELITY_KEYS = {
    "frechet_inception_distance": "fid",
    "inception_score_mean": "isc_mean",
    "inception_score_std": "isc_std",
    "kernel_inception_distance_mean": "kid_mean",
    "kernel_inception_distance_std": "kid_std",
}


# --- the pure Fréchet distance -------------------------------------------------------------------


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017).

    d² = ‖mu1 − mu2‖² + Tr(sigma1) + Tr(sigma2) − 2 Tr((sigma1 sigma2)^½)

    Pure numpy / scipy. As is standard (TTUR, pytorch-fid): when the product is near-singular and
    its square root is not finite, ``eps`` is added to both diagonals; a numerically complex root
    with a negligible imaginary part is replaced by its real part.
    """
    import scipy.linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"mean vectors must be 1-D of equal length, got {mu1.shape} and {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"covariances must be {mu1.size}x{mu1.size}, got {sigma1.shape} and {sigma2.shape}")

    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(mu1.size) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrt of sigma1 @ sigma2 has a large imaginary part {np.abs(covmean.imag).max():g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def default_extractor(dataset: str) -> str:
    """The domain classifier for digits / MNIST (Inception means little on 16-32 px digits)."""
    return "classifier" if dataset in ("digits", "mnist") else "inception"


# --- the extractor weights and the checks before measuring ---------------------------------------

_CHECKED_INCEPTION: set[str] = set()


def _check_inception_weights(path: Path, sha256: str) -> None:
    """Load the file once (per content), tensors only as torch-fidelity will: a bad file is one line."""
    if sha256 in _CHECKED_INCEPTION:
        return
    fix = f"pass --inception-weights FILE with torch-fidelity's {INCEPTION_WEIGHTS_FILE}"
    try:
        state = load_plain(path)
    except Exception as e:
        raise DDIMError(f"cannot read Inception weights {str(path)!r} ({load_problem(e)}); {fix}") from None
    fc = state.get("fc.weight") if isinstance(state, dict) else None
    if not isinstance(fc, Tensor) or tuple(fc.shape) != (1008, INCEPTION_FEATURE_DIM):
        raise DDIMError(
            f"{str(path)!r} is not torch-fidelity's Inception-v3 state dict "
            f"(no 1008x{INCEPTION_FEATURE_DIM} fc.weight); {fix}"
        )
    _CHECKED_INCEPTION.add(sha256)


def resolve_inception_weights(inception_weights: str | os.PathLike | None = None, download: bool = False) -> Path:
    """A local Inception weights file: the argument, $DDIMBENCH_INCEPTION_WEIGHTS or the torch hub cache.

    Downloads only with ``download`` (into the hub cache, sha256-checked: ``bench.metrics.inception``);
    otherwise torch-fidelity would fetch the file itself, unchecked, and fail (or hang) offline.
    """
    given = inception_weights or os.environ.get(INCEPTION_WEIGHTS_ENV) or None
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_file():
            raise DDIMError(
                f"Inception weights file {str(path)!r} not found; pass an existing --inception-weights FILE "
                f"(or {INCEPTION_WEIGHTS_ENV})"
            )
        return path
    path = inception.cache_path()
    if path.is_file():
        return inception.verified(path)
    if download:
        return inception.fetch(path)
    raise DDIMError(f"Inception weights not found; {inception.where_to_put(path)}")


def _device_context(device: str) -> contextlib.AbstractContextManager:
    """torch-fidelity calls ``.cuda()``: select the requested CUDA device around it, with float32 kernels free of
    TF32 (on by default for cuDNN convolutions) and no cuDNN autotuning, so a score depends on neither the card's
    flags nor a timing race. CUDA's presence is checked now; the settings apply only inside the ``with``."""
    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    if not torch.cuda.is_available():
        raise DDIMError(f"device {device!r} requested but CUDA is not available; pass --device cpu")
    return _on_device(torch.device(device))


@contextlib.contextmanager
def _on_device(device: torch.device) -> Iterator[None]:
    from ddim.runtime import numerics

    with torch.cuda.device(device), numerics(device, tf32=False):
        torch.backends.cudnn.benchmark = False  # numerics restores the caller's setting on exit
        yield


def check_expected_count(n_expected: int | None, option: str = "n_expected") -> None:
    """Refuse an expected sample count below 1 (``option``: its name where the caller took it from)."""
    if n_expected is not None and n_expected < 1:
        raise DDIMError(
            f"{option} must be ≥ 1 (the exact sample count to score), got {n_expected}; "
            f"pass the number of samples or leave {option} out"
        )


def _check_sample_count(metrics: Sequence[str], n: int) -> None:
    """Refuse metrics that cannot be computed from this many samples."""
    if "isc" in metrics and n < ISC_SPLITS:
        raise DDIMError(f"IS needs at least {ISC_SPLITS} samples (its split count), got {n}; generate more samples")
    if ("fid" in metrics or "kid" in metrics) and n < 2:
        raise DDIMError(f"FID and KID need at least 2 samples, got {n}; generate more samples")


def _kid_subset_size(n: int, ref_n: int, kid_subset_size: int | None) -> int:
    """KID's subset size: min(1000, N, reference count) unless given; it must fit both sets."""
    limit = min(n, ref_n)
    size = min(KID_SUBSET_SIZE, limit) if kid_subset_size is None else kid_subset_size
    if not 2 <= size <= limit:
        raise DDIMError(
            f"KID subset size {size} needs 2 <= size <= min(samples, reference) = {limit}; "
            f"generate more samples or pass a smaller --kid-subset-size"
        )
    return size


# --- the measurement -------------------------------------------------------------------------------


def compute_metrics(
    samples: Tensor,
    *,
    dataset: str,
    data_root: str | os.PathLike = "data",
    split: str = "train",
    resolution: int | None = None,
    extractor: str | None = None,
    metrics: Sequence[str] = METRICS,
    n_expected: int | None = None,
    device: str = "cpu",
    cache_dir: str | os.PathLike = ".cache/ddimbench",
    inception_weights: str | os.PathLike | None = None,
    kid_subset_size: int | None = None,
    ref_count: int | None = None,
) -> dict[str, Any]:
    """FID / IS / KID of uint8 samples (N, C, H, W) against the dataset's real ``split`` images.

    Returns the requested metrics as floats (``fid``, ``isc_mean``, ``isc_std``, ``kid_mean``,
    ``kid_std``) and the protocol: ``extractor``, ``extractor_sha256``, ``ref_key``, ``ref_sha256``
    (of the cached FID statistics file, or of the reference features file when FID is not
    asked), ``ref_count`` and ``n``. IS alone needs no reference: the ``ref_*`` fields are None.
    ``ref_count`` limits the reference to a fixed-seed random subset of the split. ``device``:
    ``cuda[:i]`` runs torch-fidelity on that GPU, anything else on the CPU.
    """
    metrics = tuple(dict.fromkeys([metrics] if isinstance(metrics, str) else metrics))
    if not metrics or any(m not in METRICS for m in metrics):
        raise DDIMError(f"metrics {list(metrics)} must be a non-empty subset of {list(METRICS)}")
    extractor = extractor or default_extractor(dataset)
    if extractor not in EXTRACTORS:
        raise DDIMError(f"unknown extractor {extractor!r}; choose one of {', '.join(EXTRACTORS)}")
    if not isinstance(samples, Tensor) or samples.dtype != torch.uint8 or samples.dim() != 4:
        got = f"{samples.dtype} {tuple(samples.shape)}" if isinstance(samples, Tensor) else type(samples).__name__
        raise DDIMError(f"samples must be a uint8 (N, C, H, W) tensor, got {got}; convert with ddim.images.to_uint8")
    samples = samples.detach().cpu()
    n = len(samples)
    check_expected_count(n_expected)
    if n_expected is not None and n != n_expected:
        raise DDIMError(
            f"got {n} samples but {n_expected} were asked; refusing a metric on another count, "
            f"generate exactly {n_expected}"
        )
    _check_sample_count(metrics, n)
    device_ctx = _device_context(device)
    cache_dir = Path(cache_dir)

    # 1. The feature extractor and the sha256 of its weights (first: a missing file fails fast).
    if extractor == "classifier":
        from bench.metrics.classifier import FEATURE_DIM, FEATURE_FID, ensure_classifier, register_feature_extractor

        weights, cinfo = ensure_classifier(dataset, data_root=data_root, cache_dir=cache_dir, resolution=resolution)
        if cinfo["channels"] != samples.shape[1] or cinfo["resolution"] != samples.shape[-1]:
            raise DDIMError(
                f"samples are {tuple(samples.shape[1:])} but the {dataset} classifier takes "
                f"{cinfo['channels']}x{cinfo['resolution']}px; pass the samples' --resolution"
            )
        fe_name, fe_layer, weights_sha = register_feature_extractor(), FEATURE_FID, cinfo["sha256"]
        fe_dim = FEATURE_DIM
    else:
        weights = resolve_inception_weights(inception_weights)
        fe_name, fe_layer, weights_sha = INCEPTION_NAME, INCEPTION_LAYER_FID, sha256_file(weights)
        fe_dim = INCEPTION_FEATURE_DIM
        _check_inception_weights(weights, weights_sha)

    # 2. The reference: real images of the split under the same uint8 rule (binary metrics only).
    rgb = extractor == "inception"
    ref_root = cache_dir / "reference"
    ref_key, kwargs = None, {}
    if "fid" in metrics or "kid" in metrics:
        input2, ref_n, ref_shape, content = reference_stats(
            dataset, data_root=data_root, split=split, resolution=resolution, ref_count=ref_count,
            memo_dir=ref_root, rgb=rgb,
        )  # fmt: skip
        if ref_shape != tuple(samples.shape[1:]):
            raise DDIMError(
                f"samples are {tuple(samples.shape[1:])} (C, H, W) but {dataset} {split} images are "
                f"{ref_shape}; generate at the dataset's resolution/channels or pass --resolution"
            )
        # 3. The cache key goes into torch-fidelity's cache name for input2.
        ref_key = reference_key(
            dataset=dataset,
            split=split,
            resolution=ref_shape[-1],
            extractor=extractor,
            weights_sha256=weights_sha,
            count=ref_n,
            content_sha256=content,
        )
        kwargs.update(input2=input2, input2_cache_name=ref_key)
        if "kid" in metrics:
            kwargs["kid_subset_size"] = _kid_subset_size(n, ref_n, kid_subset_size)
        heal_reference_cache(ref_root, f"{ref_key}-{fe_name}-", ref_n, {fe_layer: fe_dim})  # damaged: recomputed

    # 4. One torch-fidelity call; samples are never cached (input1 has no cache name).
    import torch_fidelity

    with device_ctx, weights_only_loads():  # its torch.load calls ask for weights_only=False
        raw = torch_fidelity.calculate_metrics(
            input1=UInt8Images(samples, rgb=rgb),
            fid="fid" in metrics,
            isc="isc" in metrics,
            kid="kid" in metrics,
            feature_extractor=fe_name,
            feature_extractor_weights_path=str(weights),
            cuda=device.startswith("cuda"),
            batch_size=_BATCH_SIZE[extractor],
            isc_splits=ISC_SPLITS,
            cache=True,
            cache_root=str(ref_root),
            save_cpu_ram=True,  # its only effect here: DataLoader num_workers=0 for in-memory tensors
            verbose=False,
            **kwargs,
        )

    out: dict[str, Any] = {ours: float(raw[theirs]) for theirs, ours in _FIDELITY_KEYS.items() if theirs in raw}
    ref_sha = None
    if ref_key is not None:
        # torch-fidelity's file names: <cache_name>-<extractor>-stat-fid-<layer> / -features-<layer>
        kind = "stat-fid" if "fid" in metrics else "features"
        ref_sha = sha256_file(ref_root / f"{ref_key}-{fe_name}-{kind}-{fe_layer}.pt")
    out.update(
        extractor=extractor,
        extractor_sha256=weights_sha,
        ref_key=ref_key,
        ref_sha256=ref_sha,
        ref_count=None if ref_key is None else ref_n,
        n=n,
    )
    return out
