"""The domain feature extractor: a small CNN classifier, so FID / IS / KID work offline on digits / MNIST.

Inception-v3 was trained on 299 px ImageNet photos; on 16-32 px digits its features say little, and
its weights need a download. Instead we train a small CNN on the dataset's TRAIN split once
(seeded, deterministic), cache it in ``cache_dir`` keyed by dataset, resolution and seed, record its
test-split accuracy in a JSON next to it, and register it with torch-fidelity as a custom feature
extractor:

- ``penult``: the 128-d global-average-pooled features before the last layer (FID and KID),
- ``logits_unbiased``: the class logits (IS reads this name as logits).

Its input is uint8 (N, C, H, W) exactly as given (the dataset's channel count, no RGB repeat),
scaled inside the network with the same map as the data pipeline (x / 127.5 − 1).
torch-fidelity is imported lazily, inside ``feature_extractor_class``.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.metrics.reference import first_line
from ddim.errors import DDIMError
from ddim.files import atomic_write, sha256_file
from ddim.images import from_uint8, to_uint8

__all__ = [
    "EXTRACTOR_NAME",
    "FEATURES",
    "FEATURE_DIM",
    "FEATURE_FID",
    "FEATURE_ISC",
    "DigitClassifier",
    "ensure_classifier",
    "feature_extractor_class",
    "load_classifier",
    "load_labelled_uint8",
    "register_feature_extractor",
    "train_classifier",
]

EXTRACTOR_NAME = "ddimbench-classifier"  # torch-fidelity registry name
FEATURE_FID = "penult"
FEATURE_ISC = "logits_unbiased"
FEATURES = (FEATURE_FID, FEATURE_ISC)
FORMAT = "ddimbench-classifier-v1"  # bump when the architecture or training changes
WIDTH = 32
FEATURE_DIM = 4 * WIDTH  # the size of the ``penult`` features (FID / KID)
TRAIN_STEPS = 400
BATCH_SIZE = 64
LR = 5e-3


class DigitClassifier(nn.Module):
    """[conv-BN-ReLU(w), pool, conv-BN-ReLU(2w), pool, conv-BN-ReLU(4w)] → global avg pool (``penult``) → linear."""

    def __init__(self, in_channels: int, num_classes: int, width: int = WIDTH) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

        w = width
        self.features = nn.Sequential(
            *block(in_channels, w), nn.MaxPool2d(2),
            *block(w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(4 * w, num_classes)
        self.in_channels = in_channels

    def penult_and_logits(self, x_uint8: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 (N, C, H, W) -> (penult (N, 4w), logits (N, classes))."""
        x = from_uint8(x_uint8)
        penult = self.features(x)
        return penult, self.head(penult)

    def forward(self, x_uint8: Tensor) -> Tensor:
        return self.penult_and_logits(x_uint8)[1]


def load_labelled_uint8(
    dataset: str, *, data_root: str | os.PathLike = "data", split: str = "train", resolution: int | None = None
) -> tuple[Tensor, Tensor]:
    """A labelled in-memory split as uint8 images (N, C, H, W) (``to_uint8``) and long labels (N,)."""
    from ddim.data import load_dataset
    from ddim.names import LABELLED_DATASETS, canonical_dataset

    if canonical_dataset(dataset) not in LABELLED_DATASETS:  # refused before any file is read
        raise DDIMError(
            f"the classifier extractor needs a dataset with class labels ({', '.join(LABELLED_DATASETS)}), "
            f"not {dataset!r}; score {dataset} with Inception features (--extractor inception, extractor=inception "
            "in a sweep)"
        )
    ds = load_dataset(dataset, root=str(data_root), split=split, resolution=resolution, download=False)
    labels = getattr(ds, "labels", None)
    if not hasattr(ds, "images") or labels is None or len(labels) == 0 or int(labels.min()) < 0:
        raise DDIMError(
            f"the classifier extractor needs a labelled dataset (digits, mnist, cifar10), not {dataset!r} {split!r}; "
            f"use --extractor inception"
        )
    return to_uint8(ds.images), labels.long()


def _init_weights(model: nn.Module, gen: torch.Generator) -> None:
    """PyTorch's default conv / linear init, drawn from ``gen`` instead of the global RNG."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, a=5**0.5, generator=gen)
            bound = 1 / m.weight[0].numel() ** 0.5
            nn.init.uniform_(m.bias, -bound, bound, generator=gen)


def _accuracy(model: DigitClassifier, images: Tensor, labels: Tensor, device: str) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), 512):
            logits = model(images[i : i + 512].to(device))
            correct += int((logits.argmax(1).cpu() == labels[i : i + 512]).sum())
    return correct / len(images)


def train_classifier(
    images: Tensor, labels: Tensor, *, seed: int = 0, device: str = "cpu", steps: int = TRAIN_STEPS
) -> DigitClassifier:
    """Train on uint8 images (N, C, H, W): Adam, cosine LR, one seeded generator for init and batches.

    On the CPU this runs single-threaded: the result then does not depend on the core count
    (float reductions differ with the thread count), and a tiny model loses little speed while
    staying fast on a loaded machine (spinning OpenMP threads degrade badly under contention).
    """
    if device.startswith("cuda"):
        return _train(images, labels, seed=seed, device=device, steps=steps)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(images, labels, seed=seed, device=device, steps=steps)
    finally:
        torch.set_num_threads(threads)


def _train(images: Tensor, labels: Tensor, *, seed: int, device: str, steps: int) -> DigitClassifier:
    num_classes = int(labels.max()) + 1
    gen = torch.Generator().manual_seed(seed)
    model = DigitClassifier(images.shape[1], num_classes)
    _init_weights(model, gen)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    order, pos = torch.randperm(len(images), generator=gen), 0
    for _ in range(steps):
        if pos + BATCH_SIZE > len(order):  # new epoch: reshuffle
            order, pos = torch.randperm(len(images), generator=gen), 0
        idx = order[pos : pos + BATCH_SIZE]
        pos += BATCH_SIZE
        loss = F.cross_entropy(model(images[idx].to(device)), labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval().cpu()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _weights_problem(blob: dict[str, Any]) -> str | None:
    """Why a ``FORMAT`` file's config and weights cannot make this architecture's classifier, or None.

    Checked before any layer is built, so a doctored config cannot ask for a huge one: the architecture is
    ``FORMAT``'s (``WIDTH``), the input 1 or 3 channels, the class count the head's; every weight a finite tensor.
    """
    cfg, state = blob.get("config"), blob.get("state_dict")
    if not isinstance(cfg, dict) or not isinstance(state, dict):
        return "no config and state_dict"
    if not all(isinstance(v, Tensor) for v in state.values()):
        return "its state_dict holds more than tensors"
    head = state.get("head.bias")
    channels, classes = cfg.get("channels"), cfg.get("num_classes")
    if cfg.get("width") != WIDTH or channels not in (1, 3) or not _is_int(channels) or not _is_int(classes):
        return f"config {cfg} is not this architecture's (width {WIDTH}, 1 or 3 channels)"
    if head is None or tuple(head.shape) != (classes,) or classes < 2:
        return f"its head does not have the config's {classes} classes"
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        return "its weights hold NaN or infinite values"
    return None


def load_classifier(path: str | os.PathLike, device: str = "cpu") -> tuple[DigitClassifier, dict[str, Any]]:
    """A trained classifier and its config from a file written by ``ensure_classifier``.

    The file is untrusted: tensors only (weights-only load), and a config or weights that do not make this
    architecture's classifier are a ``DDIMError`` saying to delete it, never a ``KeyError`` or a shape error.
    """
    fix = "delete it so it is retrained"
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # OSError, a corrupt zip (RuntimeError), a non-torch file (UnpicklingError)
        raise DDIMError(f"cannot read classifier {str(path)!r} ({first_line(e)}); {fix}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise DDIMError(f"{str(path)!r} is not a {FORMAT} file; {fix}")
    problem = _weights_problem(blob)
    if problem is None:
        cfg = blob["config"]
        model = DigitClassifier(cfg["channels"], cfg["num_classes"], cfg["width"])
        try:
            model.load_state_dict(blob["state_dict"])  # strict: every name, every shape
        except RuntimeError as e:  # torch lists each missing or extra name and differing shape on a line of its own
            details = [line.strip().rstrip(".") for line in str(e).splitlines()[1:] if line.strip()]
            problem = details[0][:160] if details else first_line(e)
    if problem is not None:
        raise DDIMError(f"classifier {str(path)!r} is damaged ({problem}); {fix}")
    return model.to(device).eval().requires_grad_(False), cfg


def _cached_info(path: Path, meta_path: Path, expected: dict[str, Any]) -> dict[str, Any] | None:
    """The info of a cached classifier that is whole and is the one ``expected`` describes, else None.

    Whole: the JSON is an object whose ``sha256`` is the weights file's, and the weights load
    (``load_classifier``) into the config the JSON records; its accuracy is a fraction or None.
    """
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    # Earlier releases trained on the sweep's device; a classifier not known to be CPU-trained is retrained.
    if not isinstance(meta, dict) or meta.get("trained_on") != "cpu" or meta.get("sha256") != sha256_file(path):
        return None
    try:
        _, cfg = load_classifier(path)
    except DDIMError:
        return None
    accuracy = meta.get("accuracy")
    if accuracy is not None and not (isinstance(accuracy, (int, float)) and 0 <= accuracy <= 1):
        return None
    return meta if all(meta.get(k) == v for k, v in {**expected, **cfg}.items()) else None


def ensure_classifier(
    dataset: str,
    *,
    data_root: str | os.PathLike = "data",
    cache_dir: str | os.PathLike = ".cache/ddimbench",
    resolution: int | None = None,
    seed: int = 0,
) -> tuple[Path, dict[str, Any]]:
    """The cached classifier for (dataset, resolution, seed), trained on the train split if missing.

    Always trained on the CPU, single-threaded (400 small steps: under a minute): the cache key names no device, so
    every machine of one CPU kind gets the same extractor, whichever device its first sweep or score ran on
    (GPU kernels would make the weights, and so every FID, depend on the card).

    Returns the weights path and its info (``accuracy`` on the test split, ``sha256`` of the
    weights file, ``channels``, ``resolution``, ``num_classes``, ...), also stored as JSON next to it.
    The cache heals: a cached classifier that is not whole (its sha256 does not match its JSON, the JSON is
    damaged or another program's, the weights do not load into the recorded config) is retrained.
    """
    from ddim.data import dataset_info

    res = int(dataset_info(dataset, resolution=resolution).resolution)
    folder = Path(cache_dir) / "classifier"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{FORMAT}-{dataset}-{res}px-seed{seed}.pt"
    meta_path = path.with_suffix(".json")
    expected = {"format": FORMAT, "dataset": dataset, "resolution": res, "seed": seed, "feature_dim": FEATURE_DIM}
    if path.is_file() and meta_path.is_file():
        meta = _cached_info(path, meta_path, expected)
        if meta is not None:
            return path, meta

    # 1. Train on the train split (as uint8, exactly what the extractor will see).
    train_x, train_y = load_labelled_uint8(dataset, data_root=data_root, split="train", resolution=resolution)
    if train_x.shape[-1] != res:
        raise DDIMError(f"{dataset} train images are {train_x.shape[-1]}px, not {res}px; pass --resolution {res}")
    if int(train_y.unique().numel()) < 2:
        raise DDIMError(f"the classifier extractor needs class labels, {dataset} has none; use the inception "
                        "extractor (--extractor inception, extractor=inception in a sweep)")  # fmt: skip
    start = time.perf_counter()
    model = train_classifier(train_x, train_y, seed=seed, device="cpu")
    seconds = time.perf_counter() - start

    # 2. Test-split accuracy, recorded with the weights' hash.
    try:
        test_x, test_y = load_labelled_uint8(dataset, data_root=data_root, split="test", resolution=resolution)
        accuracy = _accuracy(model, test_x, test_y, "cpu")
        test_count = len(test_x)
    except DDIMError:
        accuracy, test_count = None, 0
    cfg = {"channels": int(train_x.shape[1]), "num_classes": int(train_y.max()) + 1, "width": WIDTH}
    blob = {"format": FORMAT, "config": cfg, "state_dict": model.state_dict()}
    atomic_write(path, lambda f: torch.save(blob, f))
    meta = {
        **expected,
        **cfg,
        "steps": TRAIN_STEPS,
        "train_count": len(train_x),
        "test_count": test_count,
        "accuracy": accuracy,
        "train_seconds": round(seconds, 2),
        "trained_on": "cpu",
        "torch": torch.__version__,
        "sha256": sha256_file(path),
    }
    atomic_write(meta_path, lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode()))
    return path, meta


@functools.cache
def feature_extractor_class() -> type:
    """The torch-fidelity ``FeatureExtractorBase`` subclass (built on first use: lazy import)."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class ClassifierFeatureExtractor(FeatureExtractorBase):
        """``penult`` / ``logits_unbiased`` of a ``DigitClassifier`` loaded from
        ``feature_extractor_weights_path`` (torch-fidelity passes every calculate_metrics kwarg)."""

        def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise ValueError(f"{EXTRACTOR_NAME} needs feature_extractor_weights_path (see ensure_classifier)")
            self.net, self.config = load_classifier(feature_extractor_weights_path)
            self.requires_grad_(False)
            self.eval()

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return FEATURES

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return FEATURE_ISC if metric == "isc" else FEATURE_FID

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> Tensor:
            return torch.zeros(1, 1, 16, 16, dtype=torch.uint8)

        def forward(self, x: Tensor) -> tuple[Tensor, ...]:
            if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != self.net.in_channels:
                raise ValueError(
                    f"{EXTRACTOR_NAME} expects uint8 (N, {self.net.in_channels}, H, W), got {x.dtype} {tuple(x.shape)}"
                )
            penult, logits = self.net.penult_and_logits(x)
            by_name = {FEATURE_FID: penult, FEATURE_ISC: logits}
            return tuple(by_name[name] for name in self.features_list)

    return ClassifierFeatureExtractor


def register_feature_extractor() -> str:
    """Register the classifier with torch-fidelity once per process; returns its registry name."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.registry import register_feature_extractor as register

    cls = feature_extractor_class()
    current = FEATURE_EXTRACTORS_REGISTRY.get(EXTRACTOR_NAME)
    if current is None:
        register(EXTRACTOR_NAME, cls)
    elif current is not cls:  # this module was reloaded: registering again would raise
        FEATURE_EXTRACTORS_REGISTRY[EXTRACTOR_NAME] = cls
    return EXTRACTOR_NAME


def summary_line(path: Any, info: dict[str, Any]) -> str:
    """What ``ddimbench classifier`` prints: the file, its hash and its test accuracy."""
    acc = info.get("accuracy")
    accuracy = "n/a" if acc is None else f"{100 * acc:.2f}%"
    return f"classifier {path} (sha256 {info['sha256'][:12]}…), test accuracy {accuracy}"
