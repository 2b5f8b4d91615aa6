"""Datasets scaled to [-1, 1]: every item is ``(image, label)``, image float32 (C, H, W) = uint8 / 127.5 - 1.

Small datasets (digits, mnist, cifar10) are held in memory and expose ``.images`` (N, C, H, W) and
``.labels`` (N,) so a trainer can index batches directly; celeba and folder decode one file per item.
Random horizontal flips are left to the trainer (``dataset.info.hflip`` says whether to use them).
"""

from __future__ import annotations

import codecs
import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ddim.errors import DDIMError
from ddim.images import from_uint8
from ddim.names import DATASETS, canonical_dataset

__all__ = ["DATASETS", "DatasetInfo", "dataset_info", "fetch_dataset", "load_dataset"]

# name -> (channels, default resolution, hflip recommended, valid splits)
_SPECS: dict[str, tuple[int, int, bool, tuple[str, ...]]] = {
    "digits": (1, 16, False, ("train", "test", "all")),
    "mnist": (1, 32, False, ("train", "test")),
    "cifar10": (3, 32, True, ("train", "test")),
    "celeba": (3, 64, True, ("train", "valid", "test", "all")),
    "folder": (3, 64, True, ("train", "all")),
}
_DIGITS_TEST_FRACTION, _DIGITS_SEED = 0.2, 0
# Official DDIM CelebA crop: 128x128 centred at (x=89, y=121) of the 178x218 aligned image.
CELEBA_CROP_BOX = (89 - 64, 121 - 64, 89 + 64, 121 + 64)  # PIL (left, upper, right, lower) = (25, 57, 153, 185)
_CELEBA_SPLIT_CODES = {"train": "0", "valid": "1", "test": "2"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: image shape and whether flips suit it."""

    name: str
    channels: int
    resolution: int
    hflip: bool  # random horizontal flip recommended during training (not for digits)

    def mismatch(self, channels: int, resolution: int) -> str | None:
        """Why a model taking and making ``channels`` × ``resolution``² images is not one of this
        dataset's (None when it is): the one rule the checkpoint loader and ``sweep`` apply."""
        if (channels, resolution) == (self.channels, self.resolution):
            return None
        mine, theirs = f"{channels}x{resolution}px", f"{self.channels}x{self.resolution}px"
        return f"the model makes {mine} images but {self.name} is {theirs}"


def dataset_info(name: str, resolution: int | None = None) -> DatasetInfo:
    """Channels, resolution (``resolution`` or the dataset's default) and flip policy of ``name``
    (case-insensitive: ``MNIST`` and ``CelebA`` work too)."""
    name = canonical_dataset(name)
    if name not in _SPECS:
        raise DDIMError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    channels, default_res, hflip, _ = _SPECS[name]
    res = default_res if resolution is None else resolution
    if not isinstance(res, int) or isinstance(res, bool) or res < 1:
        raise DDIMError(f"resolution must be a positive integer, got {resolution!r}")
    return DatasetInfo(name, channels, res, hflip)


def load_dataset(
    name: str,
    root: str | Path = "data",
    split: str = "train",
    resolution: int | None = None,
    download: bool = False,
) -> Dataset:
    """The ``split`` of dataset ``name`` under ``root``, resized to ``resolution``, scaled to [-1, 1].

    ``folder`` treats ``root`` itself as a (recursive) image folder. ``download`` fetches MNIST /
    CIFAR-10 through torchvision when their files are missing.
    """
    name = canonical_dataset(name)
    info = dataset_info(name, resolution)
    splits = _SPECS[name][3]
    if split not in splits:
        raise DDIMError(f"unknown split {split!r} for dataset {name!r}; choose one of {', '.join(splits)}")
    root = Path(root)
    if name == "digits":
        return _load_digits(split, info)
    if name == "mnist":
        return _load_mnist(root, split, info, download)
    if name == "cifar10":
        return _load_cifar10(root, split, info, download)
    if name == "celeba":
        return _load_celeba(root, split, info)
    return _load_folder(root, info)


def fetch_dataset(name: str, root: str | Path = "data") -> None:
    """Download what is missing of a dataset torchvision can fetch (MNIST, CIFAR-10) into ``root``;
    other datasets are left alone (their loaders say where the files go)."""
    name = canonical_dataset(name)
    if name in ("mnist", "cifar10"):
        load_dataset(name, root, "train", download=True)  # torchvision fetches both splits


class InMemoryDataset(Dataset):
    """Images already decoded, resized and scaled: ``images`` (N, C, H, W) float32, ``labels`` (N,) long."""

    def __init__(self, images: Tensor, labels: Tensor, info: DatasetInfo) -> None:
        self.images, self.labels, self.info = images, labels, info

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])


class ImageFileDataset(Dataset):
    """Decodes one image file per item: RGB, crop (``box``, or the centre square), resize, scale."""

    def __init__(self, paths: list[Path], info: DatasetInfo, box: tuple[int, int, int, int] | None = None) -> None:
        self.paths, self.info, self.box = paths, info, box

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image

        path = self.paths[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except OSError as err:  # PIL's UnidentifiedImageError and truncated files are OSErrors
            raise DDIMError(f"cannot read image {path} ({err}); delete or replace the file") from err
        box = self.box if self.box is not None else _centre_square(img.width, img.height)
        res = self.info.resolution
        # PIL's bilinear resize antialiases when shrinking, like torchvision's Resize on PIL images.
        img = img.crop(box).resize((res, res), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)  # (C, H, W)
        return from_uint8(pixels), -1


def _centre_square(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return (left, top, left + side, top + side)


def _resize_pixels(pixels: Tensor, resolution: int) -> Tensor:
    """(N, C, h, w) pixel values (0..255, any dtype) -> (N, C, res, res) uint8, bilinear with antialias."""
    if pixels.shape[-2:] == (resolution, resolution) and pixels.dtype == torch.uint8:
        return pixels
    chunks = []
    for chunk in pixels.split(10_000):  # bounds peak memory for the float copy
        out = F.interpolate(chunk.float(), size=(resolution, resolution), mode="bilinear", antialias=True)
        # Requantise so training data lives on the same uint8 grid as saved samples.
        chunks.append(out.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(chunks)


def _in_memory(pixels: Tensor, labels: Tensor, info: DatasetInfo) -> InMemoryDataset:
    images = from_uint8(_resize_pixels(pixels, info.resolution))
    return InMemoryDataset(images, labels.long(), info)


def _load_digits(split: str, info: DatasetInfo) -> InMemoryDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = torch.from_numpy(bunch.images.astype(np.float32) * (255.0 / 16.0))[:, None]  # (N, 1, 8, 8), 0..255
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    # Stratified, seeded split: the same ~20% of each class is "test" on every machine.
    rng = np.random.default_rng(_DIGITS_SEED)
    test = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        members = np.flatnonzero(bunch.target == digit)
        test[rng.permutation(members)[: round(_DIGITS_TEST_FRACTION * len(members))]] = True
    keep = {"train": ~test, "test": test, "all": np.ones_like(test)}[split]
    index = torch.from_numpy(np.flatnonzero(keep))
    return _in_memory(pixels[index], labels[index], info)


def _missing(paths: list[Path]) -> Path | None:
    return next((p for p in paths if not p.is_file()), None)


def _download_failed(what: str, err: Exception, where: Path) -> DDIMError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return DDIMError(f"{what} download failed ({reason}); check the network or put the files in {where}")


def _load_mnist(root: Path, split: str, info: DatasetInfo, download: bool) -> InMemoryDataset:
    raw = root / "MNIST" / "raw"
    files = [raw / f for f in _MNIST_FILES]  # torchvision wants all four, whichever split is asked for
    if download and _missing(files) is not None:
        from torchvision.datasets import MNIST

        try:
            MNIST(str(root), download=True)
        except Exception as err:  # torchvision raises RuntimeError / URLError / OSError
            raise _download_failed("MNIST", err, raw) from err
    missing = _missing(files)
    if missing is not None:
        raise DDIMError(f"MNIST not found: expected {missing}; put the files there or pass --download")
    from torchvision.datasets import MNIST

    try:
        mnist = MNIST(str(root), train=split == "train")
    except Exception as err:
        raise DDIMError(f"MNIST files in {raw} are unreadable ({err}); delete them and pass --download") from err
    return _in_memory(mnist.data[:, None], mnist.targets, info)  # data: (N, 28, 28) uint8


class _CifarUnpickler(pickle.Unpickler):
    """Reads a CIFAR-10 python batch: dicts, lists, strings/bytes and numpy arrays, nothing else.

    The batches are pickles by format, and a plain ``pickle.load`` calls whatever a doctored file
    names. Only numpy's array reconstruction, ``ndarray`` and ``dtype`` (under the names numpy 1 and 2
    pickle them with) and ``_codecs.encode`` (how protocol-2 pickles spell bytes) may be looked up.
    """

    def find_class(self, module: str, name: str) -> Any:
        reconstruct = np.zeros(1).__reduce__()[0]  # numpy's own, whatever module it lives in
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): codecs.encode,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-10 batch never holds: refused")
        return allowed[module, name]


def _load_cifar10(root: Path, split: str, info: DatasetInfo, download: bool) -> InMemoryDataset:
    folder = root / "cifar-10-batches-py"
    files = [folder / n for n in (*_CIFAR_TRAIN, "test_batch")]
    if download and _missing(files) is not None:
        from torchvision.datasets import CIFAR10

        try:
            CIFAR10(str(root), download=True)
        except Exception as err:
            raise _download_failed("CIFAR-10", err, folder) from err
    wanted = [folder / n for n in (_CIFAR_TRAIN if split == "train" else ("test_batch",))]
    missing = _missing(wanted)
    if missing is not None:
        raise DDIMError(f"CIFAR-10 not found: expected {missing}; put the files there or pass --download")
    # Read the pickles ourselves: torchvision md5-checks them, which rejects anything but the originals.
    pixels, labels = [], []
    for path in wanted:
        try:
            with open(path, "rb") as f:
                batch = _CifarUnpickler(f, encoding="latin1").load()
            pixels.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))  # (n, C, H, W)
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
        except Exception as err:
            raise DDIMError(f"CIFAR-10 batch {path} is unreadable ({err}); replace it or pass --download") from err
    return _in_memory(torch.from_numpy(np.concatenate(pixels)), torch.from_numpy(np.concatenate(labels)), info)


def _load_celeba(root: Path, split: str, info: DatasetInfo) -> ImageFileDataset:
    folder = root / "celebA" / "img_align_celeba"
    names = sorted(p.name for p in folder.glob("*.jpg")) if folder.is_dir() else []
    if not names:
        raise DDIMError(
            f"CelebA not found: expected aligned .jpg images in {folder}; put img_align_celeba there "
            "(and list_eval_partition.txt beside it: without it the train split is every image)"
        )
    partition = root / "celebA" / "list_eval_partition.txt"
    if split != "all":
        if partition.is_file():
            names = _celeba_split(partition, split, set(names), folder)
        elif split != "train":
            raise DDIMError(
                f"CelebA split {split!r} needs {partition}; put list_eval_partition.txt there or use split 'train'"
            )
    return ImageFileDataset([folder / n for n in names], info, CELEBA_CROP_BOX)


def _celeba_split(partition: Path, split: str, on_disk: set[str], folder: Path) -> list[str]:
    """File names of ``split`` in list_eval_partition.txt ("000001.jpg 0"; 0 train, 1 valid, 2 test)."""
    code, names = _CELEBA_SPLIT_CODES[split], []
    try:
        text = partition.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DDIMError(f"{partition} is not UTF-8 text (byte {exc.start}); restore the original file") from None
    for line_no, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DDIMError(f"{partition} line {line_no} is not '<file> <0|1|2>'; restore the original file")
        if parts[1] == code:
            names.append(parts[0])
    absent = [n for n in names if n not in on_disk]
    if absent:
        raise DDIMError(
            f"CelebA {split} split lists {len(absent)} images missing from {folder} (first: {absent[0]}); "
            "restore them or remove list_eval_partition.txt"
        )
    return sorted(names)


def _load_folder(root: Path, info: DatasetInfo) -> ImageFileDataset:
    if not root.is_dir():
        raise DDIMError(f"image folder {root} does not exist; pass the folder that holds your images as --data-root")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise DDIMError(
            f"no images in {root}; put .png/.jpg/.jpeg/.bmp/.webp files there (subfolders are searched too)"
        )
    return ImageFileDataset(paths, info)


def data_fingerprint(ds: Dataset) -> str:
    """What identifies a training set across machines: file-backed data by its files' relative names
    and sizes (so a moved folder matches and another one does not), in-memory data by count and shape."""
    paths = getattr(ds, "paths", None)
    if paths is None:
        return f"{len(ds)}x{tuple(ds[0][0].shape)}"
    root = os.path.commonpath([str(p) for p in paths]) if len(paths) > 1 else str(Path(paths[0]).parent)
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{os.path.relpath(p, root)}:{os.path.getsize(p)}\n".encode())
    return f"{len(paths)} files, sha256 {h.hexdigest()[:16]}"
