"""What FID compares against: the uint8 rule, content hashes, and the real-image reference with its cache key.

Protocol (FID as in Table 1 of the paper, measured by ``bench.metrics.fidelity``):

- ``ddim.images.to_uint8`` is the ONE conversion rule from [-1, 1] to 0..255, for samples and references.
- The reference (torch-fidelity's input2) is the dataset's real images of ``split`` under that rule,
  or a fixed-seed random subset of ``ref_count`` of them (``REF_SUBSET_SEED``).
- Its identity is a content hash of those uint8 images (``tensor_sha256``); file-backed datasets are
  decoded and hashed once, memoised by a fingerprint of their files, PIL and ``ddim.data``'s source.
- ``reference_key`` names the cached statistics by the version of how they are computed
  (``REFERENCE_CACHE_VERSION``), dataset, split, resolution, extractor, the extractor weights' sha256,
  the reference count and that content hash, so a stale entry can never be reused.
- ``heal_reference_cache`` removes a cached entry torch-fidelity could not load (truncated, empty) or that is
  not what it would compute (other dimensions than the extractor's features, NaN or infinite values), so
  it is recomputed from the reference images instead of failing every later measurement or giving a NaN.
- Files are untrusted: ``load_plain`` reads tensors and numpy arrays only (``torch.load`` with
  ``weights_only=True``), and ``weights_only_loads`` makes torch-fidelity's own loads (it asks for
  ``weights_only=False``) do the same, so a doctored cache or weights file never runs code.

Importing this module needs only torch and numpy (``import bench.metrics.fidelity`` stays cheap).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import os
import pickle
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from bench.console import warn
from ddim.errors import DDIMError
from ddim.files import atomic_write_text, sha256_file
from ddim.images import to_uint8
from ddim.runtime import environ

__all__ = ["REFERENCE_CACHE_VERSION", "REF_SUBSET_SEED", "reference_key", "tensor_sha256"]

REF_SUBSET_SEED = 0  # fixed: a reference subset (ref_count) is part of the protocol

# How cached reference statistics are computed, beyond the inputs reference_key names: bump it when the same
# images, extractor and weights would give other statistics (the numerics of feature extraction, its batching,
# the layer or the statistics kept), so every cache written before is recomputed once instead of reused.
# 1 (keys without a version): earlier releases, which extracted features on a GPU with TF32 on.
# 2: features on CUDA with TF32 off (bench.metrics.fidelity's device settings).
REFERENCE_CACHE_VERSION = 2


# --- content hashes -----------------------------------------------------------


def tensor_sha256(x: Tensor) -> str:
    """Content hash of a tensor: dtype, shape and bytes."""
    x = x.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{x.dtype}{tuple(x.shape)}".encode())
    digest.update(x.view(torch.uint8).numpy().tobytes() if x.numel() else b"")
    return digest.hexdigest()


def _subset_index(n: int, ref_count: int | None) -> Tensor | None:
    """None for the whole split, else a fixed-seed random subset of ``ref_count`` indices (sorted)."""
    if ref_count is None or ref_count == n:
        return None
    if not 2 <= ref_count <= n:
        raise DDIMError(f"ref_count {ref_count} is outside 2..{n} (the split's size); lower --ref-count")
    gen = torch.Generator().manual_seed(REF_SUBSET_SEED)
    return torch.randperm(n, generator=gen)[:ref_count].sort().values


# --- the reference images ------------------------------------------------------------------------


class UInt8Images(Dataset):
    """In-memory uint8 images for torch-fidelity; ``rgb`` repeats 1 channel to 3 (for Inception)."""

    def __init__(self, images: Tensor, rgb: bool = False) -> None:
        self.images = images
        self.rgb = rgb and images.shape[1] == 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        img = self.images[i]  # (C, H, W) uint8
        return img.repeat(3, 1, 1) if self.rgb else img


class _DecodedUInt8(Dataset):
    """A file-backed dataset's images, decoded only when torch-fidelity asks (a cache miss)."""

    def __init__(self, ds: Dataset, index: list[int], shape: tuple[int, int, int], rgb: bool = False) -> None:
        self.ds, self.index, self.shape = ds, index, shape
        self.rgb = rgb and shape[0] == 1

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Tensor:
        img = to_uint8(self.ds[self.index[i]][0])  # (C, H, W) uint8
        if tuple(img.shape) != self.shape:
            raise DDIMError(f"reference image {self.index[i]} is {tuple(img.shape)}, not {self.shape}; check the data")
        return img.repeat(3, 1, 1) if self.rgb else img


def reference_stats(
    dataset: str,
    *,
    data_root: Any,
    split: str,
    resolution: int | None,
    ref_count: int | None,
    memo_dir: Path,
    rgb: bool,
) -> tuple[Dataset, int, tuple[int, ...], str]:
    """input2 for torch-fidelity, its count, image shape (C, H, W) and content hash.

    The content hash is ``tensor_sha256`` of the uint8 reference tensor. In-memory datasets are
    hashed directly. File-backed ones (CelebA, folder) are decoded and hashed once, memoised by a
    fingerprint of their files (path, size, mtime), PIL and ``ddim.data``'s source, so a cache hit
    decodes nothing.
    """
    from ddim.data import load_dataset

    ds = load_dataset(dataset, root=str(data_root), split=split, resolution=resolution, download=False)
    index = _subset_index(len(ds), ref_count)
    if hasattr(ds, "images"):
        images = to_uint8(ds.images if index is None else ds.images[index])
        return UInt8Images(images, rgb=rgb), len(images), tuple(images.shape[1:]), tensor_sha256(images)

    chosen = list(range(len(ds))) if index is None else index.tolist()
    if not chosen:
        raise DDIMError(f"dataset {dataset!r} split {split!r} is empty; check --data-root {data_root}")
    shape = (ds.info.channels, ds.info.resolution, ds.info.resolution)
    decoded = _DecodedUInt8(ds, chosen, shape, rgb=rgb)
    paths = getattr(ds, "paths", None)
    memo = None if paths is None else memo_dir / f"content-{_files_fingerprint(paths, chosen, shape)[:32]}.txt"
    if memo is not None and memo.is_file():
        with contextlib.suppress(OSError, UnicodeDecodeError):
            known = memo.read_text().strip()
            if re.fullmatch(r"[0-9a-f]{64}", known):  # else damaged (e.g. a power loss): hashed again below
                return decoded, len(chosen), shape, known
    # Stream the bytes tensor_sha256 would hash for the stacked (N, C, H, W) tensor.
    plain = _DecodedUInt8(ds, chosen, shape)
    digest = hashlib.sha256(f"{torch.uint8}{(len(chosen), *shape)}".encode())
    for i in range(len(plain)):
        digest.update(plain[i].contiguous().numpy().tobytes())
    content = digest.hexdigest()
    if memo is not None:
        atomic_write_text(memo, content + "\n")
    return decoded, len(chosen), shape, content


def _files_fingerprint(paths: Sequence[Any], chosen: list[int], shape: tuple[int, ...]) -> str:
    """What decides a file-backed reference's pixels: each file's (path, size, mtime), the image
    shape, PIL's version and ``ddim.data``'s source (its crop / resize code)."""
    import PIL

    import ddim.data

    files = []
    for i in chosen:
        st = os.stat(paths[i])
        files.append((str(paths[i]), st.st_size, st.st_mtime_ns))
    parts = [shape, PIL.__version__, sha256_file(ddim.data.__file__), files]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def reference_key(
    *, dataset: str, split: str, resolution: int, extractor: str, weights_sha256: str, count: int, content_sha256: str
) -> str:
    """The reference-statistics cache key: every input that changes the statistics is in it, led by
    ``REFERENCE_CACHE_VERSION`` (how they are computed)."""
    dataset, split = (re.sub(r"[^A-Za-z0-9_.]+", "_", part) for part in (dataset, split))
    inputs = f"{dataset}-{split}-{resolution}px-{extractor}-w{weights_sha256[:12]}-n{count}-c{content_sha256[:12]}"
    return f"v{REFERENCE_CACHE_VERSION}-{inputs}"


# --- untrusted files: tensors and numpy arrays only, never pickled code --------------------------


def numpy_array_globals() -> list[Any]:
    """What a pickled numpy array names (torch-fidelity keeps FID statistics as numpy arrays): its
    reconstruction function, ``ndarray``, ``dtype`` and the dtype classes whose state it sets. Nothing
    in them calls arbitrary code: an array's data is raw bytes, or (object arrays) items unpickled
    under the same restrictions."""
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy's own, whatever module it lives in this version
    dtypes = {type(np.dtype(t)) for t in set(np.sctypeDict.values())} - {np.dtype}
    return [reconstruct, np.ndarray, np.dtype, *sorted(dtypes, key=str)]


def load_plain(path: str | os.PathLike, *, mmap: bool = False) -> Any:
    """A torch file holding tensors, numpy arrays, numbers, strings and containers only.

    ``weights_only=True``: a pickle naming anything else raises ``pickle.UnpicklingError`` and
    nothing in it runs.
    """
    with warnings.catch_warnings(), torch.serialization.safe_globals(numpy_array_globals()):
        warnings.simplefilter("ignore")  # a foreign pickle's protocol warning is noise: it is refused
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def load_problem(exc: BaseException) -> str:
    """Why ``load_plain`` failed, in one line; a refused pickle is named by the object it would have looked up
    or built (e.g. ``builtins.exec``): it holds code, not only tensors and arrays."""
    found = None
    if isinstance(exc, KeyError):  # torch's weights-only unpickler meeting a byte that is no pickle opcode
        return "not a PyTorch file: its bytes are not a pickle torch can read"
    if isinstance(exc, pickle.UnpicklingError):
        detail = str(exc).split("WeightsUnpickler error:")[-1]
        found = re.search(r"GLOBAL ([\w.]+)|unrecognized function ([\w.]+)|but got <class '([\w.]+)'>", detail)
    if found:
        return (
            f"it names {next(g for g in found.groups() if g)}, not only tensors and arrays: pickled code that "
            "could run, refused unloaded"
        )
    return first_line(exc)


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside is weights-only with numpy arrays allowed, including torch-fidelity's
    (it loads its cache and the Inception weights with ``weights_only=False``): what we checked with
    ``load_plain`` is then also what it reads, even if a file changed in between."""
    with environ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1"), torch.serialization.safe_globals(numpy_array_globals()):
        yield


# --- the reference cache: a damaged file is recomputed, not a traceback ----------------------------

_GOOD_CACHE_FILES: set[tuple[str, int, int]] = set()


def first_line(exc: BaseException, limit: int = 100) -> str:
    """The exception's first line, up to its first sentence and ``limit`` characters (torch's are long)."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:  # torch's weights-only refusal: its reason follows a long preamble
        text = text.split("WeightsUnpickler error:")[-1].strip()
    line = text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


@functools.cache
def _fid_statistics_dtypes() -> tuple[np.dtype, np.dtype]:
    """The dtypes of the (mu, sigma) torch-fidelity computes from float32 features (it asserts that both inputs'
    statistics share them): asked of torch-fidelity itself."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    stats = fid_features_to_statistics(torch.zeros(2, 1))
    return stats["mu"].dtype, stats["sigma"].dtype


def _all_finite(features: Tensor, rows: int = 4096) -> bool:
    """No NaN or infinity in a (memory-mapped) features tensor, read a block of rows at a time."""
    return all(bool(torch.isfinite(block).all()) for block in features.split(rows))


def _stat_problem(item: Any, dim: int | None) -> str | None:
    """Why ``item`` is not FID statistics torch-fidelity can compare with the samples', or None."""
    mu, sigma = (item.get(k) if isinstance(item, dict) else None for k in ("mu", "sigma"))
    if not (isinstance(mu, np.ndarray) and isinstance(sigma, np.ndarray) and mu.ndim == 1):
        return "not FID statistics {mu, sigma}"
    if sigma.shape != (mu.size, mu.size):
        return f"not FID statistics: sigma is {sigma.shape}, not ({mu.size}, {mu.size}) for mu {mu.shape}"
    if dim is not None and mu.size != dim:
        return f"FID statistics of {mu.size} features, not the extractor's {dim}"
    if (mu.dtype, sigma.dtype) != _fid_statistics_dtypes():
        return f"FID statistics of dtypes {mu.dtype}/{sigma.dtype}, not {'/'.join(map(str, _fid_statistics_dtypes()))}"
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        return "FID statistics holding NaN or infinite values"
    return None


def _features_problem(item: Any, ref_n: int, dim: int | None) -> str | None:
    """Why ``item`` is not the reference's features torch-fidelity would compute, or None."""
    width = "D" if dim is None else dim
    if not isinstance(item, Tensor) or item.dim() != 2 or len(item) != ref_n or not item.is_floating_point():
        return f"not a ({ref_n}, {width}) features tensor"
    if dim is not None and item.shape[1] != dim:
        return f"features of size {item.shape[1]}, not the extractor's {dim}"
    if not _all_finite(item):
        return "features holding NaN or infinite values"
    return None


def _cache_file_problem(path: Path, ref_n: int, dims: dict[str, int]) -> str | None:
    """Why torch-fidelity could not use this cached reference file, or None when it can.

    Loads it as torch-fidelity will (weights-only, see ``weights_only_loads``), and checks what it holds:
    FID statistics are ``{"mu": (D,), "sigma": (D, D)}`` numpy arrays of torch-fidelity's dtypes, features a
    ``(ref_n, D)`` float tensor, all finite; D is ``dims[layer]`` for the layers named there (torch-fidelity
    ends each file name with its layer). A file that passed is memoised by (path, size, mtime) so a sweep loads
    it once per process.
    """
    try:
        st = path.stat()
        memo = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
        if memo in _GOOD_CACHE_FILES:
            return None
        # Memory-mapped: a zip cut short fails at once, and a 50k × 2048 features file is not read into memory
        # just to be checked.
        item = load_plain(path, mmap=True)
    except Exception as e:  # a truncated zip, an empty file (EOFError), a folder, no permission, a doctored file
        return load_problem(e)
    dim = next((d for layer, d in dims.items() if path.name.endswith(f"-{layer}.pt")), None)
    if "-stat-fid-" in path.name:
        problem = _stat_problem(item, dim)
    else:
        problem = _features_problem(item, ref_n, dim)
    if problem is not None:
        return problem
    _GOOD_CACHE_FILES.add(memo)
    return None


def heal_reference_cache(ref_root: Path, prefix: str, ref_n: int, dims: dict[str, int]) -> None:
    """Remove the cached reference files named ``prefix*.pt`` that cannot be used, so torch-fidelity
    recomputes them from the reference images (torch-fidelity renames its cache files into place
    without an fsync: a power loss can leave them truncated or empty). ``dims``: the feature size of each
    layer whose size is known (the extractor's FID / KID layer), checked against its files.

    One warning line on stderr when something was removed; a file that cannot be removed is a
    ``DDIMError`` naming it.
    """
    removed = []
    for path in sorted(ref_root.glob(f"{glob.escape(prefix)}*.pt")):
        reason = _cache_file_problem(path, ref_n, dims)
        if reason is None:
            continue
        try:
            path.unlink()
        except FileNotFoundError:  # another process healed it first
            pass
        except OSError as e:
            raise DDIMError(
                f"cached reference file {str(path)!r} is unusable ({reason}) and cannot be removed "
                f"({e.strerror or type(e).__name__}); delete it and rerun"
            ) from None
        removed.append(f"{path.name} ({reason})")
    if removed:
        warn(
            f"removed unusable cached reference files from {ref_root} and recomputing them from the "
            f"reference images: {'; '.join(removed)}"
        )
