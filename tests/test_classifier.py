"""Tests for bench.metrics.classifier: the digits classifier used as an offline FID / IS / KID feature extractor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bench.metrics.classifier as classifier
from bench.metrics.classifier import (
    EXTRACTOR_NAME,
    FEATURE_FID,
    FEATURE_ISC,
    FEATURES,
    ensure_classifier,
    feature_extractor_class,
    load_classifier,
    load_labelled_uint8,
    register_feature_extractor,
    train_classifier,
)
from ddim.errors import DDIMError
from ddim.files import sha256_file


@pytest.fixture(scope="session")
def digits_classifier(cache_dir: Path) -> tuple[Path, dict]:
    return ensure_classifier("digits", cache_dir=cache_dir)


@pytest.fixture(scope="session")
def digits_test() -> tuple[torch.Tensor, torch.Tensor]:
    return load_labelled_uint8("digits", split="test")


@pytest.fixture
def quick_training(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace training by a 3-step run (for cache-logic tests); records each call's seed."""
    calls: list[int] = []
    real = classifier.train_classifier

    def quick(images, labels, *, seed=0, device="cpu", steps=0):
        calls.append(seed)
        return real(images, labels, seed=seed, device=device, steps=3)

    monkeypatch.setattr(classifier, "train_classifier", quick)
    return calls


def test_accuracy_on_the_digits_test_split(digits_classifier, digits_test) -> None:
    path, info = digits_classifier
    assert info["accuracy"] >= 0.95, info
    assert info["test_count"] == len(digits_test[0]) > 300
    assert (info["dataset"], info["resolution"], info["channels"], info["num_classes"]) == ("digits", 16, 1, 10)
    assert info["feature_dim"] == 128
    # The JSON next to the weights is the info, and it pins the weights' hash.
    assert json.loads(path.with_suffix(".json").read_text()) == info
    assert info["sha256"] == sha256_file(path)
    # Independent re-check of the recorded accuracy from the saved weights.
    model, _ = load_classifier(path)
    images, labels = digits_test
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).double().mean().item()
    assert accuracy == pytest.approx(info["accuracy"], abs=1e-12)


def test_training_is_deterministic(digits_classifier, tmp_path: Path) -> None:
    path, info = digits_classifier
    path2, info2 = ensure_classifier("digits", cache_dir=tmp_path)
    assert path2 != path
    assert info2["sha256"] == info["sha256"]
    assert path2.read_bytes() == path.read_bytes()


def test_seed_decides_the_weights() -> None:
    images, labels = load_labelled_uint8("digits")
    a, b, c = (train_classifier(images, labels, seed=s, steps=4).state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_training_leaves_the_thread_count_alone() -> None:
    images, labels = load_labelled_uint8("digits")
    before = torch.get_num_threads()
    train_classifier(images[:64], labels[:64], steps=1)
    assert torch.get_num_threads() == before


def test_second_call_hits_the_cache(digits_classifier, cache_dir: Path, quick_training: list[int]) -> None:
    assert ensure_classifier("digits", cache_dir=cache_dir) == digits_classifier
    assert quick_training == []


def test_corrupt_cache_entry_is_retrained(digits_classifier, tmp_path: Path, quick_training: list[int]) -> None:
    path, _ = digits_classifier
    folder = tmp_path / "classifier"
    shutil.copytree(path.parent, folder)
    (folder / path.name).write_bytes(b"not a checkpoint")
    new_path, info = ensure_classifier("digits", cache_dir=tmp_path)
    assert quick_training == [0]
    assert new_path == folder / path.name
    assert info["sha256"] == sha256_file(new_path) == json.loads(new_path.with_suffix(".json").read_text())["sha256"]
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temp files


def test_cache_is_keyed_by_resolution_and_seed(tmp_path: Path, quick_training: list[int]) -> None:
    p16, i16 = ensure_classifier("digits", cache_dir=tmp_path)
    p8, i8 = ensure_classifier("digits", cache_dir=tmp_path, resolution=8)
    p16s1, _ = ensure_classifier("digits", cache_dir=tmp_path, seed=1)
    assert len({p16, p8, p16s1}) == 3
    assert (i16["resolution"], i8["resolution"]) == (16, 8)
    assert "16px" in p16.name and "8px" in p8.name and "seed1" in p16s1.name
    assert quick_training == [0, 0, 1]
    assert ensure_classifier("digits", cache_dir=tmp_path, resolution=16)[0] == p16  # None means the default 16
    assert quick_training == [0, 0, 1]


def test_unlabelled_dataset_is_refused(tmp_path: Path) -> None:
    for i in range(3):
        Image.fromarray(np.full((64, 64, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    with pytest.raises(DDIMError) as err:
        ensure_classifier("folder", data_root=tmp_path, cache_dir=tmp_path / "cache")
    assert "--extractor inception" in str(err.value) and "\n" not in str(err.value)


def test_feature_extractor_outputs(digits_classifier, digits_test) -> None:
    path, info = digits_classifier
    cls = feature_extractor_class()
    assert cls.get_provided_features_list() == FEATURES
    assert cls.get_default_feature_layer_for_metric("isc") == FEATURE_ISC == "logits_unbiased"
    assert (
        cls.get_default_feature_layer_for_metric("fid")
        == cls.get_default_feature_layer_for_metric("kid")
        == FEATURE_FID
    )
    assert cls.can_be_compiled() is False
    # Features come back in the requested order, from the uint8 input as given (1 channel).
    extractor = cls(EXTRACTOR_NAME, [FEATURE_ISC, FEATURE_FID], feature_extractor_weights_path=str(path), cuda=False)
    images = digits_test[0][:50]
    with torch.no_grad():
        logits, penult = extractor(images)
        model, _ = load_classifier(path)
        want_penult, want_logits = model.penult_and_logits(images)
    assert penult.shape == (50, info["feature_dim"]) and logits.shape == (50, 10)
    assert torch.equal(penult, want_penult) and torch.equal(logits, want_logits)
    with pytest.raises(ValueError, match="uint8"):
        extractor(images.float())
    with pytest.raises(ValueError, match="uint8"):
        extractor(images.repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match="feature_extractor_weights_path"):
        cls(EXTRACTOR_NAME, [FEATURE_FID])


def test_registering_twice_is_harmless() -> None:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    assert register_feature_extractor() == register_feature_extractor() == EXTRACTOR_NAME
    assert FEATURE_EXTRACTORS_REGISTRY[EXTRACTOR_NAME] is feature_extractor_class()


def _doctored(blob: dict, how: str) -> dict:
    """A classifier file's contents edited ``how`` (what a damaged or foreign file can hold)."""
    cfg, state = dict(blob["config"]), dict(blob["state_dict"])
    if how == "format only":
        return {"format": blob["format"]}
    if how == "huge head":  # would allocate 128 × 10⁹ floats if built
        cfg["num_classes"] = 10**9
    elif how == "missing weight":
        del state["head.weight"]
    elif how == "wrong shape":
        state["head.weight"] = torch.zeros(3, 3)
    elif how == "nan weights":
        state["head.weight"] = torch.full_like(state["head.weight"], float("nan"))
    elif how == "not tensors":
        state["head.weight"] = [1.0]
    elif how == "other width":
        cfg["width"] = 64
    return {**blob, "config": cfg, "state_dict": state}


DOCTORED = ["format only", "huge head", "missing weight", "wrong shape", "nan weights", "not tensors", "other width"]


def test_load_classifier_rejects_other_files(digits_classifier, tmp_path: Path) -> None:
    junk, other = tmp_path / "junk.pt", tmp_path / "other.pt"
    junk.write_bytes(b"junk")
    torch.save({"format": "something else"}, other)
    blob = torch.load(digits_classifier[0], weights_only=True)
    doctored = []
    for how in DOCTORED:
        doctored.append(tmp_path / f"{how}.pt")
        torch.save(_doctored(blob, how), doctored[-1])
    for path in (junk, other, tmp_path / "missing.pt", *doctored):
        with pytest.raises(DDIMError) as err:  # not a KeyError, a shape error or a huge allocation
            load_classifier(path)
        assert "delete it so it is retrained" in str(err.value) and "\n" not in str(err.value), (path, err.value)


@pytest.mark.parametrize("meta", ["[]", '"text"', "null", '{"sha256": 5}'])
def test_a_cached_json_that_is_not_the_classifier_info_is_retrained(
    meta: str, digits_classifier, tmp_path: Path, quick_training: list[int], capsys: pytest.CaptureFixture
) -> None:
    from helpers.cli import run

    path, _ = digits_classifier
    shutil.copytree(path.parent, tmp_path / "classifier")
    meta_path = (tmp_path / "classifier" / path.name).with_suffix(".json")
    meta_path.write_text(meta)
    code, out, err = run(["classifier", "--cache-dir", tmp_path], capsys)
    assert code == 0 and "Traceback" not in err, err  # was: AttributeError, 'list' object has no attribute 'get'
    assert quick_training == [0]
    info = json.loads(meta_path.read_text())
    assert info["sha256"] == sha256_file(meta_path.with_suffix(".pt")) and info["sha256"][:12] in out + err


def _vouched_for(digits_classifier, cache: Path, how: str) -> Path:
    """A copy of the cached classifier under ``cache``, doctored ``how``, whose JSON records its sha256."""
    path, info = digits_classifier
    shutil.copytree(path.parent, cache / "classifier")
    cached = cache / "classifier" / path.name
    torch.save(_doctored(torch.load(path, weights_only=True), how), cached)
    cached.with_suffix(".json").write_text(json.dumps({**info, "sha256": sha256_file(cached)}))
    return cached


@pytest.mark.parametrize("how", DOCTORED)
def test_cached_weights_that_do_not_load_are_retrained_even_when_the_json_vouches_for_them(
    how: str, digits_classifier, tmp_path: Path, quick_training: list[int], capsys: pytest.CaptureFixture
) -> None:
    """A weights file whose sha256 the JSON records but that is no classifier: retrained, as a damaged one is,
    before ``classifier`` reports it (was: success, printing the JSON's accuracy)."""
    from helpers.cli import run

    cached = _vouched_for(digits_classifier, tmp_path, how)
    code, out, err = run(["classifier", "--cache-dir", tmp_path], capsys)
    assert code == 0 and quick_training == [0], err
    info = digits_classifier[1]
    assert load_classifier(cached)[1] == {k: info[k] for k in ("channels", "num_classes", "width")}


def test_metrics_retrains_cached_weights_that_do_not_load(
    digits_classifier, digits_test, tmp_path: Path, quick_training: list[int], capsys: pytest.CaptureFixture
) -> None:
    """``metrics`` meets the same cache (was: KeyError 'config' from inside torch-fidelity)."""
    from helpers.cli import run
    from helpers.metrics import write_pngs

    _vouched_for(digits_classifier, tmp_path / "cache", "format only")
    write_pngs(tmp_path / "s", digits_test[0][:12])
    argv = ["metrics", tmp_path / "s", "--dataset", "digits", "--metric", "fid", "--device", "cpu"]
    code, out, err = run([*argv, "--cache-dir", tmp_path / "cache"], capsys)
    assert code == 0 and quick_training == [0] and "fid" in out, err


def test_the_classifier_command_trains_on_the_cpu_whatever_device_is_asked(
    digits_classifier, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The cache key names no device: training anywhere but the CPU would make the extractor depend on the card."""
    from helpers.cli import run

    monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: pytest.fail("the cached one is used"))
    code, out, err = run(["classifier", "--cache-dir", cache_dir, "--device", "cuda:3"], capsys)
    assert code == 0, err  # no CUDA here: the option is ignored, not refused
    assert "--device is ignored" in err and str(digits_classifier[0]) in out + err


@pytest.mark.parametrize("dataset", ["celeba", "folder", "CelebA"])
def test_a_dataset_without_labels_is_refused_before_any_file_is_read(
    dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from helpers.cli import run

    from ddim.errors import DDIMError

    with pytest.raises(DDIMError, match=r"needs a dataset with class labels .*--extractor inception"):
        classifier.load_labelled_uint8(dataset, data_root=tmp_path / "nothing-here")  # not "CelebA not found"
    code, _, err = run(["classifier", "--dataset", dataset, "--data-root", tmp_path], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "digits, mnist, cifar10" in err, err


def test_a_cached_classifier_not_known_to_be_cpu_trained_is_retrained_on_the_cpu(
    digits_classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Earlier releases trained it on the sweep's device (a GPU's kernels: other weights, another FID)."""
    path, _ = digits_classifier
    folder = tmp_path / "classifier"
    shutil.copytree(path.parent, folder)
    meta_path = (folder / path.name).with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    assert meta.pop("trained_on") == "cpu"
    meta_path.write_text(json.dumps(meta))
    devices, real = [], classifier.train_classifier

    def spy(images, labels, *, seed=0, device="unset", steps=0):
        devices.append(device)
        return real(images, labels, seed=seed, device=device, steps=3)

    monkeypatch.setattr(classifier, "train_classifier", spy)
    _, info = ensure_classifier("digits", cache_dir=tmp_path)
    assert devices == ["cpu"] and info["trained_on"] == "cpu"
    assert ensure_classifier("digits", cache_dir=tmp_path)[1] == info and devices == ["cpu"]  # now it is cached
