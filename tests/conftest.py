"""Test-wide settings: one intra-op thread (the suite runs on 2 shared cores) and offline W&B."""

import os
import sys
from pathlib import Path

import pytest
import torch

from ddim.runtime import CUBLAS_WORKSPACE

torch.set_num_threads(1)
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)  # read once per process: the deterministic test


@pytest.fixture(scope="session", autouse=True)
def wandb_scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """W&B's data, cache and artifact-staging folders inside the test's temp folder, not the user's home
    (offline tables with images stage their files there)."""
    root = tmp_path_factory.mktemp("wandb-home")
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_ARTIFACT_DIR"):
        os.environ[var] = str(root / var.lower())
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One metrics cache per session: the digits classifier and reference statistics are built once."""
    return tmp_path_factory.getbasetemp() / "ddimbench-cache"


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step digits checkpoint for the sweep tests: the weights hardly matter, the plumbing does."""
    from ddim.train_config import TrainConfig
    from ddim.training import train

    run = tmp_path_factory.mktemp("ckpt") / "run"
    cfg = TrainConfig(dataset="digits", max_steps=2, batch_size=8, run_dir=str(run), sample_every=0, save_every=2,
                      log_every=1, warmup=1, device="cpu", num_workers=0)  # fmt: skip
    train(cfg)
    return run


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sweep tests' metrics cache (classifier, reference statistics)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of its own: sweep artifacts (ddimbench-sweeps/) and reports/ land here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- the metrics tests' data (test_metrics.py, test_metrics_folder.py, test_reference.py) ---


@pytest.fixture(scope="session")
def train_u8() -> torch.Tensor:
    """The digits training split as uint8 images."""
    from bench.metrics.classifier import load_labelled_uint8

    return load_labelled_uint8("digits")[0]


@pytest.fixture(scope="session")
def test_u8() -> torch.Tensor:
    """The digits test split as uint8 images."""
    from bench.metrics.classifier import load_labelled_uint8

    return load_labelled_uint8("digits", split="test")[0]


@pytest.fixture(scope="session")
def fid_vs_train(cache_dir: Path, test_u8: torch.Tensor) -> dict:
    """FID and IS of the test split against the training split, computed once per session."""
    from bench.metrics.fidelity import compute_metrics

    return compute_metrics(test_u8, dataset="digits", cache_dir=cache_dir, metrics=("fid", "isc"))


@pytest.fixture
def feature_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy on torch-fidelity's feature extraction: the size of each input it extracts from."""
    import torch_fidelity.utils

    calls: list[int] = []
    real = torch_fidelity.utils.get_featuresdict_from_dataset

    def spy(input, *args, **kwargs):
        calls.append(len(input))
        return real(input, *args, **kwargs)

    monkeypatch.setattr(torch_fidelity.utils, "get_featuresdict_from_dataset", spy)
    return calls


# --- the W&B tests' (test_tracking.py, test_tracking_env.py) ---


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """No key anywhere W&B looks: env, ~/.netrc, settings files (global and workspace)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / ".config" / "wandb"))
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    if "wandb" in sys.modules:  # an earlier test's online run left its key in W&B's process-wide session
        from wandb.sdk.lib import wbauth

        wbauth.unauthenticate_session()
    return home


# --- the report tests' synthetic report (test_report.py, test_report_files.py) ---


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A report written once per module from helpers.report's synthetic sweep."""
    from helpers.report import make_extras, make_records
    from helpers.sweep import as_records

    from bench.report.write import write_report

    root = tmp_path_factory.mktemp("sweep")
    records, meta = make_records(root)
    extras = make_extras(root)
    out = tmp_path_factory.mktemp("reports") / "synthetic"
    written = write_report(as_records(records), meta, out, root=root, extras=extras)
    return records, meta, root, extras, out, written
