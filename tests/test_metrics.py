"""Tests for bench.metrics.fidelity: the uint8 rule, the pure Fréchet distance and the torch-fidelity wrapper
(metrics of a PNG folder: test_metrics_folder.py).

Everything runs offline on the bundled digits with the classifier extractor; Inception runs on a
randomly initialised weights file (its numbers mean nothing, the plumbing is what is checked).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.metrics import one_line_error

import bench.metrics.fidelity as metrics
import ddim.data
from bench.metrics.classifier import EXTRACTOR_NAME, FEATURE_FID, feature_extractor_class, load_labelled_uint8
from bench.metrics.fidelity import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILE,
    compute_metrics,
    default_extractor,
    frechet_distance,
    resolve_inception_weights,
    tensor_sha256,
)
from bench.metrics.reference import load_plain
from ddim.files import sha256_file
from ddim.images import to_uint8


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights file in torch-fidelity's Inception format, randomly initialised (no download)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    folder = tmp_path_factory.mktemp("inception")
    empty, path = folder / "empty.pth", folder / "random-inception.pth"
    torch.save({}, empty)
    patch = pytest.MonkeyPatch()
    patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty)
            )
    finally:
        patch.undo()
    torch.save(net.state_dict(), path)
    return path


# ---- the uint8 rule and frechet_distance ----


def test_to_uint8_rule() -> None:
    x = torch.tensor([-3.0, -1.0, -1 + 1 / 127.5, 0.0, 0.5, 1.0, 7.0])
    assert to_uint8(x).tolist() == [0, 0, 1, 128, 191, 255, 255]
    assert to_uint8(x).dtype == torch.uint8
    pixels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(pixels.float() / 127.5 - 1), pixels)  # inverse of ddim.data's scaling


def test_frechet_distance_diagonal_gaussians_closed_form() -> None:
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
    # Diagonal covariances: d² = ‖μ1 − μ2‖² + Σ (√a_i − √b_i)².
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-10)
    # The same in a rotated basis (the covariances still commute).
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    got = frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(want, rel=1e-8)
    assert frechet_distance([0.0], [[1.0]], [0.0], [[4.0]]) == pytest.approx(1.0)  # N(0,1) vs N(0,4)


def test_frechet_distance_properties_and_torch_fidelity_agreement() -> None:
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    rng = np.random.default_rng(1)
    f1, f2 = rng.normal(size=(200, 16)), rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) + 0.5
    s1 = (f1.mean(0), np.cov(f1, rowvar=False))
    s2 = (f2.mean(0), np.cov(f2, rowvar=False))
    d12, d21 = frechet_distance(*s1, *s2), frechet_distance(*s2, *s1)
    assert d12 > 1 and d12 == pytest.approx(d21, rel=1e-9)
    assert abs(frechet_distance(*s1, *s1)) < 1e-9
    theirs = fid_statistics_to_metric({"mu": s1[0], "sigma": s1[1]}, {"mu": s2[0], "sigma": s2[1]}, False)
    assert d12 == pytest.approx(theirs["frechet_inception_distance"], rel=1e-9)


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr √(S1^½ S2 S1^½) for symmetric PSD S1, S2, by eigendecompositions only."""
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S1^½
    m = root @ s2 @ root
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def unbiased_mmd2_poly(x: np.ndarray, y: np.ndarray) -> float:
    """KID's quantity over the full sets: the unbiased MMD² with k(a, b) = (a·b / d + 1)³."""
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    m, n = len(x), len(y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * kxy.mean())


def test_frechet_distance_singular_covariances() -> None:
    rng = np.random.default_rng(2)
    f1, f2 = rng.normal(size=(5, 20)), rng.normal(size=(5, 20))  # rank 4 covariances in 20-d
    (mu1, s1), (mu2, s2) = (f1.mean(0), np.cov(f1, rowvar=False)), (f2.mean(0), np.cov(f2, rowvar=False))
    got = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(got) and got > 0
    # Independent symmetric form: Tr((S1 S2)^½) = Tr((S1^½ S2 S1^½)^½), the root of a PSD matrix.
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2)
    assert got == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_default_extractor() -> None:
    assert [default_extractor(d) for d in ddim.data.DATASETS] == [
        "classifier", "classifier", "inception", "inception", "inception",
    ]  # fmt: skip


# ---- compute_metrics with the classifier extractor ----


def test_fid_of_the_train_set_against_itself_is_zero(cache_dir: Path, train_u8: torch.Tensor) -> None:
    out = compute_metrics(train_u8, dataset="digits", cache_dir=cache_dir, n_expected=len(train_u8))
    assert abs(out["fid"]) < 1e-6
    assert out["isc_mean"] > 8  # 10 balanced, confidently classified classes
    assert out["n"] == out["ref_count"] == len(train_u8)
    assert out["extractor"] == "classifier"
    assert set(out) == {"fid", "isc_mean", "isc_std", "kid_mean", "kid_std", "extractor", "extractor_sha256"} | {
        "ref_key", "ref_sha256", "ref_count", "n",
    }  # fmt: skip


def test_kid_of_two_disjoint_halves_of_the_train_set_is_zero(cache_dir: Path, train_u8: torch.Tensor) -> None:
    # The reference is a fixed-seed random half of the train split (ref_count); the samples are the other half.
    ref_count = len(train_u8) // 2
    index = torch.randperm(len(train_u8), generator=torch.Generator().manual_seed(metrics.REF_SUBSET_SEED))
    in_ref = torch.zeros(len(train_u8), dtype=torch.bool)
    in_ref[index[:ref_count]] = True
    samples = train_u8[~in_ref]
    out = compute_metrics(
        samples, dataset="digits", cache_dir=cache_dir, metrics=("kid",), ref_count=ref_count, kid_subset_size=200
    )
    assert out["ref_count"] == ref_count and out["n"] == len(train_u8) - ref_count
    assert out["ref_key"].endswith(f"-c{tensor_sha256(train_u8[in_ref])[:12]}")  # the reference is that half
    # One distribution: KID's unbiased estimate is 0 up to its spread over subsets (of 200 of 719: kid_std > 0),
    # a bound tighter than the fixed 0.05 this test used to allow.
    assert 0 < 3 * out["kid_std"] < 0.05 and abs(out["kid_mean"]) < 3 * out["kid_std"]


def test_fid_of_noise_is_large(cache_dir: Path, fid_vs_train: dict) -> None:
    noise = torch.randint(0, 256, (300, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = compute_metrics(noise, dataset="digits", cache_dir=cache_dir, metrics=("fid", "isc"))
    assert fid_vs_train["fid"] < 5  # held-out real digits are close to the train set
    assert out["fid"] > 100 * fid_vs_train["fid"] and out["fid"] > 50
    assert out["isc_mean"] < fid_vs_train["isc_mean"]


def test_fid_equals_frechet_distance_of_our_own_features(
    cache_dir: Path, train_u8: torch.Tensor, test_u8: torch.Tensor, fid_vs_train: dict
) -> None:
    from bench.metrics.classifier import ensure_classifier

    path, info = ensure_classifier("digits", cache_dir=cache_dir)
    assert fid_vs_train["extractor_sha256"] == info["sha256"]
    extractor = feature_extractor_class()(EXTRACTOR_NAME, [FEATURE_FID], feature_extractor_weights_path=str(path))
    with torch.no_grad():
        (f_test,), (f_train,) = extractor(test_u8), extractor(train_u8)
    f_test, f_train = f_test.double().numpy(), f_train.double().numpy()
    assert f_train.shape == (len(train_u8), info["feature_dim"])
    want = frechet_distance(
        f_test.mean(0), np.cov(f_test, rowvar=False), f_train.mean(0), np.cov(f_train, rowvar=False)
    )
    assert fid_vs_train["fid"] == pytest.approx(want, rel=1e-4, abs=1e-6)
    # The cached reference statistics are those of the train features.
    stats_file = cache_dir / "reference" / f"{fid_vs_train['ref_key']}-{EXTRACTOR_NAME}-stat-fid-{FEATURE_FID}.pt"
    assert sha256_file(stats_file) == fid_vs_train["ref_sha256"]
    stats = load_plain(stats_file)
    assert np.allclose(stats["mu"], f_train.mean(0), rtol=1e-4, atol=1e-5)
    assert np.allclose(stats["sigma"], np.cov(f_train, rowvar=False), rtol=1e-3, atol=1e-5)


def test_custom_extractor_is_used_end_to_end(
    cache_dir: Path, test_u8: torch.Tensor, fid_vs_train: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch_fidelity.metric_isc import isc_features_to_metric

    from bench.metrics.classifier import ensure_classifier

    seen: list[tuple] = []
    cls = feature_extractor_class()
    real_forward = cls.forward

    def spy(self, x):
        out = real_forward(self, x)
        seen.append((x.dtype, tuple(x.shape[1:]), tuple(self.features_list), [tuple(o.shape[1:]) for o in out]))
        return out

    monkeypatch.setattr(cls, "forward", spy)
    out = compute_metrics(test_u8, dataset="digits", cache_dir=cache_dir, metrics=("isc", "kid"), ref_count=400)
    # Our extractor saw uint8 1-channel digits and returned 128-d features and 10 logits.
    assert seen and all(dtype == torch.uint8 and shape == (1, 16, 16) for dtype, shape, _, _ in seen)
    names, dims = seen[0][2], seen[0][3]
    assert dict(zip(names, dims)) == {"penult": (128,), "logits_unbiased": (10,)}
    # IS is torch-fidelity's IS of our classifier's logits (bounded by its 10 classes).
    path, _ = ensure_classifier("digits", cache_dir=cache_dir)
    extractor = cls(EXTRACTOR_NAME, ["logits_unbiased"], feature_extractor_weights_path=str(path))
    with torch.no_grad():
        (logits,) = real_forward(extractor, test_u8)
    want = isc_features_to_metric(logits, splits=10, shuffle=True, rng_seed=2020)
    assert out["isc_mean"] == pytest.approx(want["inception_score_mean"], rel=1e-6)
    assert out["isc_mean"] == pytest.approx(fid_vs_train["isc_mean"], rel=1e-6)
    assert 1 < out["isc_mean"] <= 10
    # With no FID asked, ref_sha256 is the hash of the cached reference features.
    features_file = cache_dir / "reference" / f"{out['ref_key']}-{EXTRACTOR_NAME}-features-{FEATURE_FID}.pt"
    assert sha256_file(features_file) == out["ref_sha256"]
    ref_features = load_plain(features_file)
    assert ref_features.shape == (400, 128)
    # KID is the unbiased MMD² (cubic polynomial kernel) of our own penult features of the samples and of the
    # reference subset (the fixed-seed random 400 train images), up to torch-fidelity's averaging over subsets.
    # Held-out digits give KID ≈ 0 whatever the kernel; mirrored digits (KID ≈ 0.18) tell kernels apart.
    train = load_labelled_uint8("digits")[0]
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(metrics.REF_SUBSET_SEED))[:400]
    ref = train[pick.sort().values]
    penult = cls(EXTRACTOR_NAME, [FEATURE_FID], feature_extractor_weights_path=str(path))
    with torch.no_grad():
        (f_ref,) = real_forward(penult, ref)
    assert torch.allclose(f_ref, ref_features, rtol=1e-4, atol=1e-5)  # the same reference subset
    mirrored = test_u8.flip(-1)
    kid_mirrored = compute_metrics(mirrored, dataset="digits", cache_dir=cache_dir, metrics=("kid",), ref_count=400)
    for samples, got in ((test_u8, out), (mirrored, kid_mirrored)):
        with torch.no_grad():
            (f_samples,) = real_forward(penult, samples)
        want = unbiased_mmd2_poly(f_samples.double().numpy(), f_ref.double().numpy())
        assert got["kid_std"] > 0 and abs(got["kid_mean"] - want) < 3 * got["kid_std"]
    assert kid_mirrored["kid_mean"] > 10 * kid_mirrored["kid_std"]  # far from 0: a discriminating comparison


# ---- refusals ----


@pytest.mark.parametrize("asked", [101, 99], ids=["fewer", "more"])
def test_a_count_other_than_asked_is_refused(test_u8: torch.Tensor, tmp_path: Path, asked: int) -> None:
    call = lambda: compute_metrics(test_u8[:100], dataset="digits", n_expected=asked, cache_dir=tmp_path / "c")  # noqa: E731
    one_line_error(call, "100 samples", f"{asked} were asked")
    assert not (tmp_path / "c").exists()  # refused before any work


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        (dict(metrics=("fid", "ppl")), ["metrics"]),
        (dict(extractor="vgg"), ["extractor", "inception"]),
        (dict(metrics=("isc",), n=5), ["IS needs at least 10"]),
        (dict(metrics=("kid",), kid_subset_size=51, n=50), ["--kid-subset-size"]),
        (dict(metrics=("kid",), kid_subset_size=1, n=50), ["--kid-subset-size"]),
        (dict(metrics=("fid",), ref_count=10**6), ["--ref-count"]),
        (dict(metrics=("fid",), device="cuda:0"), ["--device cpu"]),
    ],
)
def test_bad_requests_are_refused(cache_dir: Path, test_u8: torch.Tensor, kwargs: dict, needles: list[str]) -> None:
    if kwargs.get("device", "").startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available")
    samples = test_u8[: kwargs.pop("n", len(test_u8))]
    one_line_error(lambda: compute_metrics(samples, dataset="digits", cache_dir=cache_dir, **kwargs), *needles)


def test_samples_must_be_uint8_of_the_dataset_shape(cache_dir: Path, test_u8: torch.Tensor) -> None:
    one_line_error(lambda: compute_metrics(test_u8.float(), dataset="digits", cache_dir=cache_dir), "uint8", "to_uint8")
    rgb = test_u8.repeat(1, 3, 1, 1)
    one_line_error(lambda: compute_metrics(rgb, dataset="digits", cache_dir=cache_dir, metrics=("fid",)), "(3, 16, 16)")


def test_missing_inception_weights_offline(
    tmp_path: Path, test_u8: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("attempted a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    call = lambda: compute_metrics(test_u8, dataset="digits", extractor="inception", cache_dir=tmp_path / "c")  # noqa: E731
    one_line_error(call, "--inception-weights FILE", INCEPTION_WEIGHTS_ENV, INCEPTION_WEIGHTS_FILE, "hub/checkpoints")
    # A named file that does not exist is refused too, from the argument or the environment.
    one_line_error(lambda: resolve_inception_weights(tmp_path / "nope.pth"), "nope.pth", "--inception-weights")
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(tmp_path / "nope2.pth"))
    one_line_error(lambda: resolve_inception_weights(), "nope2.pth")
    # A file in $TORCH_HOME/hub/checkpoints/ must be torch-fidelity's (sha256); a named file that is not
    # Inception's weights is refused when loaded.
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV)
    hub = tmp_path / "empty-torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / INCEPTION_WEIGHTS_FILE).write_bytes(b"not a checkpoint")
    one_line_error(lambda: resolve_inception_weights(), "is not torch-fidelity's", "delete it")
    named = tmp_path / "weights.pth"
    named.write_bytes(b"not a checkpoint")
    call = lambda: compute_metrics(  # noqa: E731
        test_u8, dataset="digits", extractor="inception", cache_dir=tmp_path / "c", inception_weights=named
    )
    one_line_error(call, "cannot read Inception weights", "--inception-weights FILE")
    torch.save({"fc.weight": torch.zeros(10, 2048)}, named)
    one_line_error(call, "not torch-fidelity's Inception-v3", "--inception-weights FILE")


def test_inception_end_to_end_with_local_weights(
    cache_dir: Path, test_u8: torch.Tensor, random_inception_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    seen: list[tuple] = []
    real_forward = FeatureExtractorInceptionV3.forward

    def spy(self, x):
        seen.append((x.dtype, tuple(x.shape[1:])))
        return real_forward(self, x)

    monkeypatch.setattr(FeatureExtractorInceptionV3, "forward", spy)
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(random_inception_weights))  # picked up from the environment
    samples = test_u8[:10]  # Inception is slow on a CPU: the fewest that IS (10 splits) accepts
    # No FID here: its 2048x2048 eigendecomposition costs seconds on a CPU (the path is the classifier's).
    kwargs = dict(dataset="digits", cache_dir=cache_dir, metrics=("isc", "kid"), ref_count=10)
    out = compute_metrics(samples, extractor="inception", **kwargs)
    assert seen and all(s == (torch.uint8, (3, 16, 16)) for s in seen)  # 1 channel repeated to 3
    assert out["extractor"] == "inception" and out["extractor_sha256"] == sha256_file(random_inception_weights)
    assert "-inception-" in out["ref_key"] and out["ref_count"] == 10 and out["n"] == 10
    assert all(np.isfinite(out[k]) for k in ("isc_mean", "kid_mean"))
    # Same count, other extractor: another key.
    other = compute_metrics(samples, extractor="classifier", **kwargs)
    assert other["ref_key"].replace("-classifier-", "-inception-").split("-w")[0] == out["ref_key"].split("-w")[0]
    assert other["ref_key"] != out["ref_key"]
    assert other["ref_key"].rsplit("-c", 1)[1] == out["ref_key"].rsplit("-c", 1)[1]  # same reference images


# ---- hygiene ----


def test_tensor_sha256_sees_content_shape_and_dtype() -> None:
    x = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    y = x.clone()
    y[1, 0, 3, 3] = 1
    assert len({tensor_sha256(x), tensor_sha256(y), tensor_sha256(x.view(1, 2, 4, 4)), tensor_sha256(x.float())}) == 4
    assert tensor_sha256(x) == tensor_sha256(x.clone())


def test_importing_bench_metrics_is_cheap() -> None:
    code = (
        "import sys, bench.metrics.fidelity, bench.metrics.classifier; "
        "bad = [m for m in ('torch_fidelity', 'typer', 'wandb', 'optuna') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
