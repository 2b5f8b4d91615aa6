"""torch-fidelity's Inception-v3 weights (the paper's FID extractor): where they go, and fetching them.

torch-fidelity downloads ``weights-inception-2015-12-05-6726825d.pth`` from its own release URL
(``URL_INCEPTION_V3``) into torch hub's cache (``$TORCH_HOME/hub/checkpoints/``) the first time its
extractor is built, without checking the file. We fetch the same file from the same URL into the same
place, but only when asked (``--download``), through torch hub's downloader (a temporary file renamed
into place, its sha256 prefix checked), and then check the whole file's sha256.
"""

from __future__ import annotations

from pathlib import Path

from ddim.errors import DDIMError

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"  # 95 628 359 bytes
WEIGHTS_ENV = "DDIMBENCH_INCEPTION_WEIGHTS"


def weights_url() -> str:
    """torch-fidelity's own download URL for the weights."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return URL_INCEPTION_V3


def cache_path() -> Path:
    """Where torch-fidelity looks for the weights: torch hub's checkpoint cache."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def where_to_put(path: Path) -> str:
    """The offline instructions: which file, from where, to which path (and the other ways to name it)."""
    return (
        f"put torch-fidelity's {WEIGHTS_FILE} (from {weights_url()}) at {path}, pass --download to fetch it, "
        f"or pass --inception-weights FILE (or set {WEIGHTS_ENV}=FILE)"
    )


def verified(path: Path) -> Path:
    """``path`` if it holds exactly torch-fidelity's file (by sha256), else a one-line ``DDIMError``: the
    cache location promises the paper's extractor (a file passed with --inception-weights is the user's)."""
    from ddim.files import sha256_file

    digest = sha256_file(path)
    if digest != WEIGHTS_SHA256:
        raise DDIMError(
            f"{path} is not torch-fidelity's {WEIGHTS_FILE} (sha256 {digest[:16]}…, expected {WEIGHTS_SHA256[:16]}…); "
            f"delete it, then {where_to_put(path)}"
        )
    return path


def fetch(path: Path | None = None) -> Path:
    """Download the weights to ``path`` (default ``cache_path()``) and verify their sha256; a one-line
    ``DDIMError`` when the network fails or the file is not the expected one (nothing is left behind)."""
    import torch

    path = cache_path() if path is None else Path(path)
    url = weights_url()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), hash_prefix=WEIGHTS_SHA256[:8], progress=False)
    except Exception as exc:  # URLError, HTTPError, OSError, RuntimeError (hash prefix)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = where_to_put(path)
        raise DDIMError(f"downloading the Inception weights from {url} failed ({reason}); {where}") from None
    try:
        return verified(path)
    except DDIMError:
        path.unlink(missing_ok=True)
        raise DDIMError(f"the Inception weights downloaded from {url} are not the expected file (sha256 differs); "
                        f"deleted them. {where_to_put(path)}") from None  # fmt: skip
