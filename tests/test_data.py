"""Tests for ddim.data on the bundled digits and on synthetic MNIST / CIFAR-10 / CelebA / folder files."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.data import make_mnist
from PIL import Image

from ddim.data import CELEBA_CROP_BOX, DATASETS, DatasetInfo, dataset_info, load_dataset
from ddim.errors import DDIMError


def assert_unit_range(images: torch.Tensor) -> None:
    assert images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0


def assert_one_line_error(call, *needles: str) -> None:
    with pytest.raises(DDIMError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)


# ---- dataset_info ----


def test_dataset_info() -> None:
    assert dataset_info("digits") == DatasetInfo("digits", 1, 16, False)
    assert dataset_info("mnist") == DatasetInfo("mnist", 1, 32, False)
    assert dataset_info("cifar10") == DatasetInfo("cifar10", 3, 32, True)
    assert dataset_info("celeba") == DatasetInfo("celeba", 3, 64, True)
    assert dataset_info("folder", 128) == DatasetInfo("folder", 3, 128, True)
    assert set(DATASETS) == {"digits", "mnist", "cifar10", "celeba", "folder"}
    assert_one_line_error(lambda: dataset_info("imagenet"), "imagenet", "cifar10")
    assert_one_line_error(lambda: dataset_info("digits", 0), "resolution")


def test_unknown_split() -> None:
    assert_one_line_error(lambda: load_dataset("digits", split="valid"), "valid", "train")


# ---- digits (real data bundled with scikit-learn) ----


def test_digits() -> None:
    train, test, all_ = (load_dataset("digits", split=s) for s in ("train", "test", "all"))
    assert len(all_) == 1797 and len(train) + len(test) == 1797
    assert 0.18 < len(test) / 1797 < 0.22
    assert train.images.shape == (len(train), 1, 16, 16) and train.info == dataset_info("digits")
    assert_unit_range(all_.images)
    assert all_.images.min() == -1.0 and all_.images.max() == 1.0  # 0 and 16 map to the ends
    assert set(train.labels.tolist()) == set(range(10)) == set(test.labels.tolist())
    image, label = train[0]
    assert image.shape == (1, 16, 16) and isinstance(label, int) and 0 <= label <= 9
    # On the uint8 grid: (x + 1) * 127.5 is an integer.
    pixels = (all_.images + 1) * 127.5
    torch.testing.assert_close(pixels, pixels.round(), atol=1e-4, rtol=0)


def test_digits_split_is_disjoint_and_deterministic() -> None:
    train, test, all_ = (load_dataset("digits", split=s) for s in ("train", "test", "all"))
    rows = {tuple(r.tolist()) for r in all_.images.flatten(1)}
    train_rows = {tuple(r.tolist()) for r in train.images.flatten(1)}
    test_rows = {tuple(r.tolist()) for r in test.images.flatten(1)}
    assert train_rows | test_rows <= rows
    # A few digits occur twice in the data; nearly all test images must be unseen in train.
    assert len(test_rows & train_rows) <= 5
    again = load_dataset("digits", split="test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


def test_digits_resolution() -> None:
    ds = load_dataset("digits", split="test", resolution=8)
    assert ds.images.shape[1:] == (1, 8, 8)


# ---- MNIST (synthetic idx files read by torchvision) ----


def test_mnist(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    train = load_dataset("mnist", root=tmp_path)
    test = load_dataset("mnist", root=tmp_path, split="test", resolution=28)
    assert train.images.shape == (6, 1, 32, 32) and len(test) == 4
    assert test.images.shape == (4, 1, 28, 28)
    assert train.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert_unit_range(train.images)
    assert torch.all(train.images[0] == -1.0)  # black image
    assert test.images[1, 0, 14, 14] == 1.0 and test.images[1, 0, 0, 0] == -1.0  # no resize at 28


def test_mnist_missing(tmp_path: Path) -> None:
    expected = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    assert_one_line_error(lambda: load_dataset("mnist", root=tmp_path), "MNIST not found", str(expected), "--download")
    make_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    assert_one_line_error(lambda: load_dataset("mnist", root=tmp_path), "t10k-labels-idx1-ubyte")


# ---- CIFAR-10 (synthetic pickle batches) ----


def make_cifar(root: Path, per_batch: int = 3) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = np.zeros((per_batch, 3, 32, 32), dtype=np.uint8)
        data[:, 0] = 255  # red
        data[:, :, 0, 0] = i  # batch index in the top-left pixel
        batch = {"data": data.reshape(per_batch, 3072), "labels": [i] * per_batch}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar10(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    train = load_dataset("cifar10", root=tmp_path)
    test = load_dataset("cifar10", root=tmp_path, split="test")
    assert train.images.shape == (15, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    assert train.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3 + [4] * 3
    assert test.labels.tolist() == [5, 5, 5]
    assert_unit_range(train.images)
    # Channel order (C, H, W): red plane is 1, green and blue -1.
    assert torch.all(train.images[:, 0, 1:, 1:] == 1.0) and torch.all(train.images[:, 1:, 1:, 1:] == -1.0)
    torch.testing.assert_close(test.images[0, 1, 0, 0], torch.tensor(5 / 127.5 - 1))
    image, label = train[4]
    assert image.shape == (3, 32, 32) and label == 1


def test_cifar10_missing(tmp_path: Path) -> None:
    expected = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    assert_one_line_error(lambda: load_dataset("cifar10", root=tmp_path), "CIFAR-10", str(expected), "--download")
    make_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    assert len(load_dataset("cifar10", root=tmp_path)) == 15  # train does not need the test batch
    assert_one_line_error(lambda: load_dataset("cifar10", root=tmp_path, split="test"), "test_batch")


# ---- CelebA (synthetic 178x218 aligned jpgs) ----

# The official crop (DDIM/DDPM CelebA pipeline): 128x128 centred at x = 89, y = 121: rows 121 ± 64, cols 89 ± 64.
# Written out here rather than imported, so a wrong box in ddim.data cannot also move the test's marker.
CROP_ROWS, CROP_COLS = slice(57, 185), slice(25, 153)


def make_celeba(root: Path, n: int = 3, partition: str | None = None) -> Path:
    folder = root / "celebA" / "img_align_celeba"
    folder.mkdir(parents=True)
    for i in range(n):
        pixels = np.zeros((218, 178, 3), dtype=np.uint8)  # (H, W, C)
        pixels[CROP_ROWS, CROP_COLS] = 40 * (i + 1)  # the crop region, grey level per image
        # A white block in the crop's top-left 32x32 corner -> the top-left 16x16 of the 64x64 output.
        pixels[57 : 57 + 32, 25 : 25 + 32] = 255
        Image.fromarray(pixels).save(folder / f"{i + 1:06d}.jpg", quality=95)
    if partition is not None:
        (root / "celebA" / "list_eval_partition.txt").write_text(partition)
    return folder


def test_celeba_crop(tmp_path: Path) -> None:
    make_celeba(tmp_path)
    ds = load_dataset("celeba", root=tmp_path)
    assert len(ds) == 3 and not hasattr(ds, "images") and ds.info == dataset_info("celeba")
    image, label = ds[1]
    assert image.shape == (3, 64, 64) and label == -1
    assert_unit_range(image)
    pixels = (image + 1) * 127.5  # back to 0..255, (C, H, W)
    # Everything outside the crop is black and cropped away: the output is grey (80) plus the white block.
    assert pixels[:, 2:14, 2:14].min() > 240
    assert (pixels[:, 20:, 20:] - 80).abs().max() < 8
    assert (pixels[:, :14, 20:] - 80).abs().max() < 8 and (pixels[:, 20:, :14] - 80).abs().max() < 8
    # No black border: a crop box off by even one pixel pulls an edge row or column down to ~46.
    assert pixels.min() > 70


def test_celeba_crop_box_is_the_official_one() -> None:
    assert CELEBA_CROP_BOX == (25, 57, 153, 185)  # PIL's (left, upper, right, lower)


def test_celeba_matches_the_official_torchvision_pipeline(tmp_path: Path) -> None:
    """The official code's transforms on a random texture: F.crop(img, top 57, left 25, 128, 128), then Resize(64)."""
    from torchvision.transforms import functional as TF

    folder = tmp_path / "celebA" / "img_align_celeba"
    folder.mkdir(parents=True)
    texture = np.random.default_rng(0).integers(0, 256, (218, 178, 3), dtype=np.uint8)  # off by 1 px shows
    Image.fromarray(texture).save(folder / "000001.jpg", quality=95)
    with Image.open(folder / "000001.jpg") as img:
        expected = TF.resize(TF.crop(img.convert("RGB"), 57, 25, 128, 128), [64, 64])
    expected = torch.from_numpy(np.asarray(expected).copy()).permute(2, 0, 1) / 127.5 - 1  # (C, H, W)
    torch.testing.assert_close(load_dataset("celeba", root=tmp_path)[0][0], expected, atol=1e-6, rtol=0)


def test_celeba_resolution_and_order(tmp_path: Path) -> None:
    make_celeba(tmp_path)
    ds = load_dataset("celeba", root=tmp_path, resolution=32)
    assert ds[0][0].shape == (3, 32, 32)
    assert [p.name for p in ds.paths] == ["000001.jpg", "000002.jpg", "000003.jpg"]


def test_celeba_partition(tmp_path: Path) -> None:
    make_celeba(tmp_path, n=4, partition="000001.jpg 0\n000002.jpg 0\n000003.jpg 1\n000004.jpg 2\n")
    sizes = {s: len(load_dataset("celeba", root=tmp_path, split=s)) for s in ("train", "valid", "test", "all")}
    assert sizes == {"train": 2, "valid": 1, "test": 1, "all": 4}
    grey = (load_dataset("celeba", root=tmp_path, split="test")[0][0] + 1) * 127.5
    assert abs(grey[:, 40, 40].mean().item() - 160) < 8  # it is image 4


def test_celeba_errors(tmp_path: Path) -> None:
    folder = tmp_path / "celebA" / "img_align_celeba"
    assert_one_line_error(lambda: load_dataset("celeba", root=tmp_path), "CelebA not found", str(folder))
    make_celeba(tmp_path, n=2)
    partition = tmp_path / "celebA" / "list_eval_partition.txt"
    assert_one_line_error(lambda: load_dataset("celeba", root=tmp_path, split="test"), str(partition))
    partition.write_text("000001.jpg 0\n000009.jpg 0\n")
    assert_one_line_error(lambda: load_dataset("celeba", root=tmp_path), "000009.jpg", str(folder))
    partition.write_bytes(b"000001.jpg 0\n\xff\xfe bad 0\n")  # not UTF-8: one line, not a UnicodeDecodeError
    assert_one_line_error(lambda: load_dataset("celeba", root=tmp_path), str(partition), "not UTF-8", "restore")


# ---- image folder ----


def test_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    wide = np.zeros((20, 40, 3), dtype=np.uint8)  # (H, W, C)
    wide[:, 10:30] = (255, 0, 0)  # the centre square is red, the sides black
    Image.fromarray(wide).save(tmp_path / "a.png")
    Image.fromarray(np.full((30, 30), 128, dtype=np.uint8), mode="L").save(tmp_path / "sub" / "b.PNG")
    Image.fromarray(np.zeros((8, 8, 4), dtype=np.uint8), mode="RGBA").save(tmp_path / "c.webp")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_dataset("folder", root=tmp_path, resolution=16)
    assert len(ds) == 3 and ds.info == DatasetInfo("folder", 3, 16, True)
    red, label = ds[0]
    assert red.shape == (3, 16, 16) and label == -1
    assert torch.all(red[0] == 1.0) and torch.all(red[1:] == -1.0)  # centre crop kept only the red square
    assert [p.name for p in ds.paths] == ["a.png", "c.webp", "b.PNG"]  # sorted by path, recursive
    assert torch.all(ds[1][0] == -1.0)  # transparent black RGBA -> black RGB
    grey = ds[2][0]  # grey-scale file converted to RGB
    assert grey.shape == (3, 16, 16) and torch.allclose(grey, torch.full_like(grey, 128 / 127.5 - 1), atol=1e-6)
    assert load_dataset("folder", root=tmp_path)[0][0].shape == (3, 64, 64)


def test_folder_errors(tmp_path: Path) -> None:
    assert_one_line_error(lambda: load_dataset("folder", root=tmp_path), "no images", str(tmp_path))
    missing = tmp_path / "nowhere"
    assert_one_line_error(lambda: load_dataset("folder", root=missing), "does not exist", str(missing))
    assert_one_line_error(lambda: load_dataset("folder", root=tmp_path, split="test"), "split")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    broken = load_dataset("folder", root=tmp_path)
    assert_one_line_error(lambda: broken[0], "cannot read image", str(tmp_path / "broken.png"))
