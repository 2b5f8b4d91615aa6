"""Tests for bench.metrics.reference and the reference cache: its key covers every input, a second call hits
it, file-backed references are hashed once, and a damaged cache file is recomputed, not a traceback.
Offline, on the bundled digits with the classifier extractor."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.metrics import one_line_error, write_pngs
from PIL import Image

import ddim.data
from bench.metrics.classifier import EXTRACTOR_NAME, FEATURE_FID
from bench.metrics.fidelity import compute_metrics, reference_key, tensor_sha256
from bench.metrics.reference import REFERENCE_CACHE_VERSION, load_plain, reference_stats
from ddim.files import sha256_file
from ddim.images import to_uint8

# ---- the reference cache ----

KEY_INPUTS = dict(
    dataset="digits", split="train", resolution=16, extractor="classifier",
    weights_sha256="a" * 64, count=1000, content_sha256="b" * 64,
)  # fmt: skip


def test_reference_key_covers_every_input() -> None:
    base = KEY_INPUTS
    changes = dict(
        dataset="mnist", split="test", resolution=8, extractor="inception",
        weights_sha256="c" * 64, count=999, content_sha256="d" * 64,
    )  # fmt: skip
    keys = {reference_key(**base)} | {reference_key(**{**base, k: v}) for k, v in changes.items()}
    assert len(keys) == 1 + len(changes)
    assert os.sep not in reference_key(**{**base, "dataset": "a/b"})


def test_reference_key_carries_the_cache_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys that differ only in REFERENCE_CACHE_VERSION differ: bumping it retires every cache written before."""
    key = reference_key(**KEY_INPUTS)
    assert key.startswith(f"v{REFERENCE_CACHE_VERSION}-"), key
    monkeypatch.setattr("bench.metrics.reference.REFERENCE_CACHE_VERSION", REFERENCE_CACHE_VERSION + 1)
    assert reference_key(**KEY_INPUTS) != key


def test_cache_key_changes_with_count_resolution_and_content(
    cache_dir: Path, test_u8: torch.Tensor, fid_vs_train: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = compute_metrics(test_u8, dataset="digits", cache_dir=cache_dir, metrics=("fid",), ref_count=600)
    b = compute_metrics(test_u8, dataset="digits", cache_dir=cache_dir, metrics=("fid",), ref_count=601)
    assert a["ref_count"] == 600 and b["ref_count"] == 601
    assert len({a["ref_key"], b["ref_key"], fid_vs_train["ref_key"]}) == 3
    assert len({a["ref_sha256"], b["ref_sha256"], fid_vs_train["ref_sha256"]}) == 3
    # Another resolution: another classifier and another key.
    small = to_uint8(torch.nn.functional.interpolate(test_u8.float() / 127.5 - 1, size=(8, 8), mode="area"))
    c = compute_metrics(small, dataset="digits", cache_dir=cache_dir, metrics=("fid",), resolution=8)
    assert "-8px-" in c["ref_key"] and c["extractor_sha256"] != fid_vs_train["extractor_sha256"]
    # The same count but one changed pixel in the real images: a new key, never the stale entry.
    real_load = ddim.data.load_dataset

    def altered(*args, **kwargs):
        ds = real_load(*args, **kwargs)
        ds.images = ds.images.clone()
        ds.images[0, 0, 0, 0] = -ds.images[0, 0, 0, 0] - 0.5
        return ds

    monkeypatch.setattr(ddim.data, "load_dataset", altered)
    d = compute_metrics(test_u8, dataset="digits", cache_dir=cache_dir, metrics=("fid",))
    assert d["ref_count"] == fid_vs_train["ref_count"] and d["ref_key"] != fid_vs_train["ref_key"]


def test_second_call_hits_the_cache(cache_dir: Path, test_u8: torch.Tensor, feature_calls: list[int]) -> None:
    kwargs = dict(dataset="digits", cache_dir=cache_dir, metrics=("fid", "isc"), ref_count=777)
    first = compute_metrics(test_u8, **kwargs)
    assert sorted(feature_calls) == sorted([len(test_u8), 777])  # samples and reference
    files = sorted((cache_dir / "reference").glob(f"{first['ref_key']}-*"))
    stamps = [p.stat().st_mtime_ns for p in files]
    feature_calls.clear()
    second = compute_metrics(test_u8, **kwargs)
    assert feature_calls == [len(test_u8)]  # only the samples: the reference came from the cache
    assert second == first
    assert [p.stat().st_mtime_ns for p in files] == stamps
    # FID alone reads the cached statistics without building the reference's features either.
    feature_calls.clear()
    third = compute_metrics(test_u8, **{**kwargs, "metrics": ("fid",)})
    assert feature_calls == [len(test_u8)] and third["fid"] == pytest.approx(first["fid"], rel=1e-9)


def test_file_backed_reference_is_hashed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    decoded: list[int] = []
    real_getitem = ddim.data.ImageFileDataset.__getitem__

    def counting_getitem(self, index):
        decoded.append(index)
        return real_getitem(self, index)

    monkeypatch.setattr(ddim.data.ImageFileDataset, "__getitem__", counting_getitem)
    kwargs = dict(data_root=folder, split="train", resolution=8, ref_count=None, memo_dir=tmp_path / "memo", rgb=False)
    images, n, shape, content = reference_stats("folder", **kwargs)
    assert (n, shape, len(decoded)) == (6, (3, 8, 8), 6)
    # The streamed hash is tensor_sha256 of the stacked uint8 reference.
    assert content == tensor_sha256(torch.stack([images[i] for i in range(n)]))
    decoded.clear()
    assert reference_stats("folder", **kwargs)[3] == content and decoded == []  # memoised: nothing decoded
    os.utime(folder / "0.png", ns=(10**9, 10**9))  # a touched file invalidates the memo
    assert reference_stats("folder", **kwargs)[3] == content and len(decoded) == 6
    subset = reference_stats("folder", **{**kwargs, "ref_count": 4})
    assert subset[1] == 4 and subset[3] != content
    # A damaged memo (a power loss mid-write) is hashed again and rewritten, never taken as the content hash.
    memos = [p for p in (tmp_path / "memo").glob("content-*.txt") if p.read_text().strip() == content]
    memo = max(memos, key=lambda p: p.stat().st_mtime_ns)  # the current files' (the touched file made a new one)
    for damaged in (content[:7] + "\n", "", "\x00" * 65):
        memo.write_text(damaged)
        decoded.clear()
        assert reference_stats("folder", **kwargs)[3] == content and len(decoded) == 6
        assert memo.read_text().strip() == content


def _damage(path: Path, how: str) -> None:
    """What a power loss can leave of a file torch-fidelity renamed into place without an fsync."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else b"")


def _reference_files(cache_dir: Path, ref_key: str) -> tuple[Path, Path]:
    """The cached FID statistics and reference features (torch-fidelity's names under our key)."""
    stem = cache_dir / "reference" / f"{ref_key}-{EXTRACTOR_NAME}"
    return Path(f"{stem}-stat-fid-{FEATURE_FID}.pt"), Path(f"{stem}-features-{FEATURE_FID}.pt")


@pytest.mark.parametrize("how", ["truncated", "empty"])
@pytest.mark.parametrize("kind", ["stat-fid", "features"])
def test_a_damaged_reference_cache_is_recomputed(
    cache_dir: Path, test_u8: torch.Tensor, capsys: pytest.CaptureFixture, kind: str, how: str
) -> None:
    kwargs = dict(dataset="digits", cache_dir=cache_dir, metrics=("fid", "kid"), ref_count=555)
    first = compute_metrics(test_u8, **kwargs)
    stat_file, features_file = _reference_files(cache_dir, first["ref_key"])
    stat, features = (load_plain(p) for p in (stat_file, features_file))
    damaged = stat_file if kind == "stat-fid" else features_file
    _damage(damaged, how)
    capsys.readouterr()
    second = compute_metrics(test_u8, **kwargs)  # no exception: the damaged file is recomputed
    assert second["fid"] == first["fid"]  # the same statistics of the same features, exactly
    assert second["kid_mean"] == pytest.approx(first["kid_mean"], rel=1e-6, abs=1e-9)
    same = ("extractor", "extractor_sha256", "ref_key", "ref_count", "n")
    assert {k: second[k] for k in same} == {k: first[k] for k in same}
    assert second["ref_sha256"] == sha256_file(stat_file)
    # The damaged file is rewritten with what it held.
    rewritten = load_plain(damaged)
    if kind == "stat-fid":
        assert np.array_equal(rewritten["mu"], stat["mu"]) and np.array_equal(rewritten["sigma"], stat["sigma"])
    else:
        assert rewritten.shape == features.shape == (555, features.shape[1])
        assert torch.allclose(rewritten, features, rtol=1e-5, atol=1e-6)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning:") and damaged.name in lines[0], lines
    # Healed: the next call reads the cache silently.
    assert compute_metrics(test_u8, **kwargs)["fid"] == first["fid"]
    assert capsys.readouterr().err == ""


def test_a_cache_under_the_unversioned_key_of_earlier_releases_is_not_reused(
    cache_dir: Path, test_u8: torch.Tensor, feature_calls: list[int]
) -> None:
    """Earlier releases keyed the cache without a version (and extracted features on a GPU with TF32 on): what
    they wrote for this reference is never read; its statistics are computed again, once."""
    kwargs = dict(dataset="digits", cache_dir=cache_dir, metrics=("fid",), ref_count=558)
    first = compute_metrics(test_u8, **kwargs)
    files = _reference_files(cache_dir, first["ref_key"])
    stats = load_plain(files[0])
    for path in files:  # nothing cached under this release's key...
        path.unlink(missing_ok=True)
    # ...but other statistics of the same reference under the key an earlier release gave it.
    content = first["ref_key"].rsplit("-c", 1)[1]
    old_key = f"digits-train-16px-classifier-w{first['extractor_sha256'][:12]}-n558-c{content}"
    old_stat = _reference_files(cache_dir, old_key)[0]
    torch.save({"mu": stats["mu"] + 1.0, "sigma": stats["sigma"]}, old_stat)
    feature_calls.clear()
    second = compute_metrics(test_u8, **kwargs)
    assert sorted(feature_calls) == sorted([len(test_u8), 558])  # the reference's features were extracted
    assert second["ref_key"] == first["ref_key"] != old_key and second["fid"] == first["fid"]
    assert np.array_equal(load_plain(old_stat)["mu"], stats["mu"] + 1.0)  # left as it was, unread


def test_a_damaged_cache_file_that_cannot_be_removed_is_one_line(
    cache_dir: Path, test_u8: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    kwargs = dict(dataset="digits", cache_dir=cache_dir, metrics=("fid",), ref_count=556)
    first = compute_metrics(test_u8, **kwargs)
    stat_file = _reference_files(cache_dir, first["ref_key"])[0]
    _damage(stat_file, "empty")
    real_unlink = Path.unlink

    def refuse(self: Path, *args, **kwargs) -> None:
        if self == stat_file:
            raise PermissionError(13, "Permission denied")
        real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", refuse)
    one_line_error(lambda: compute_metrics(test_u8, **kwargs), str(stat_file), "Permission denied", "delete it")
    monkeypatch.undo()
    assert compute_metrics(test_u8, **kwargs)["fid"] == first["fid"]  # heals once it can


def test_cli_metrics_heals_a_damaged_reference_cache(
    cache_dir: Path, test_u8: torch.Tensor, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from bench.cli import main

    write_pngs(tmp_path / "s", test_u8[:60])
    argv = ["metrics", str(tmp_path / "s"), "--dataset", "digits", "--metric", "fid", "--metric", "kid"]
    argv += ["--json", "--device", "cpu", "--cache-dir", str(cache_dir)]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    stat_file, features_file = _reference_files(cache_dir, first["ref_key"])
    _damage(stat_file, "truncated")  # was: a RuntimeError traceback, exit 1
    _damage(features_file, "empty")  # was: EOFError -> "interrupted; rerun...", exit 130
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    second = json.loads(out)
    assert second["fid"] == pytest.approx(first["fid"], rel=1e-6)
    assert "kid_mean" not in second  # KID is shown ×10³ (kid_mean_x1e3) here as in every other output
    assert second["kid_mean_x1e3"] == pytest.approx(first["kid_mean_x1e3"], rel=1e-6, abs=1e-6)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning:") and "Traceback" not in err, err
    assert stat_file.name in lines[0] and features_file.name in lines[0]


# Cached reference files of the right form that torch-fidelity cannot compare with the samples' features (an
# assertion, a LinAlgError) or that would give a NaN: (file kind, what it holds, a word of the warning).
DOCTORED = [
    ("stat-fid", lambda d: {"mu": np.zeros(3, np.float32), "sigma": np.zeros((3, 3))}, "not the extractor's"),
    ("stat-fid", lambda d: {"mu": np.zeros(d, np.float32), "sigma": np.zeros((d, d - 1))}, "sigma is"),
    ("stat-fid", lambda d: {"mu": np.full(d, np.nan, np.float32), "sigma": np.full((d, d), np.nan)}, "NaN"),
    ("stat-fid", lambda d: {"mu": np.full(d, np.inf, np.float32), "sigma": np.eye(d)}, "infinite"),
    ("stat-fid", lambda d: {"mu": np.zeros(d), "sigma": np.eye(d)}, "dtypes"),
    ("features", lambda d: torch.full((359, d), float("nan")), "NaN"),
    ("features", lambda d: torch.zeros(359, 3), "not the extractor's"),
    ("features", lambda d: torch.zeros(359, d, dtype=torch.long), "features tensor"),
]


def test_cli_metrics_recomputes_cached_reference_files_of_other_dimensions_or_values(
    cache_dir: Path, fid_vs_train: dict, test_u8: torch.Tensor, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from helpers.cli import run

    from bench.metrics.classifier import FEATURE_DIM

    write_pngs(tmp_path / "s", test_u8[:60])
    cache = tmp_path / "cache"
    (cache / "reference").mkdir(parents=True)
    os.symlink(cache_dir / "classifier", cache / "classifier")  # the session's classifier (fid_vs_train built it)
    argv = ["metrics", tmp_path / "s", "--dataset", "digits", "--split", "test", "--metric", "fid", "--metric", "kid"]
    argv += ["--json", "--device", "cpu", "--cache-dir", cache]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    first = json.loads(out)
    stat_file, features_file = _reference_files(cache, first["ref_key"])
    for kind, content, word in DOCTORED:
        damaged = stat_file if kind == "stat-fid" else features_file
        torch.save(content(FEATURE_DIM), damaged)
        code, out, err = run(argv, capsys)
        assert code == 0 and "Traceback" not in err, (kind, word, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("warning: removed unusable cached reference files"), lines
        assert damaged.name in lines[0] and word in lines[0], (word, lines[0])
        second = json.loads(out)
        assert second["fid"] == pytest.approx(first["fid"], rel=1e-6), (kind, word)
        assert second["kid_mean_x1e3"] == pytest.approx(first["kid_mean_x1e3"], rel=1e-6, abs=1e-6), (kind, word)
