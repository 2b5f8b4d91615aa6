"""Where and under which names our W&B runs and artifacts go (no wandb import: cheap to use anywhere).

The layout: project ``--wandb-project`` > ``WANDB_PROJECT`` > ``ddimbench``; entity ``--wandb-entity`` >
``WANDB_ENTITY`` > W&B's default; tags ``WANDB_TAGS`` plus ``--wandb-tags``; mode ``--wandb`` > ``WANDB_MODE``
> online when a key is configured, else offline; offline runs under ``WANDB_DIR`` when set, else beside the
outputs. Sweep-cell, sweep-summary and report runs have ids derived from the project, the sweep and the
run's kind, so a rerun updates the same run (``resume="allow"``) instead of adding one; a training run's id
is kept in its run directory so ``train --resume`` continues it.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.console import WANDB_HELP
from bench.store.untrusted import safe_url
from bench.tracking.reach import MODES

ARTIFACT_MODES = ("auto", "upload", "reference")
UPLOAD_LIMIT_BYTES = 100 * 2**20  # auto: upload a checkpoint below 100 MiB, log a file:// reference above
DEFAULT_PROJECT = "ddimbench"
RUN_ID_FILE = "wandb-run-id"  # in a training run directory: the W&B run that --resume continues
_RUN_ID = re.compile(r"[a-z0-9]{8,64}")  # what we write; anything else in the file is ignored
_MODE_ALIASES = {"dryrun": "offline", "run": "online", "shared": "online"}  # wandb's older names


def _opt(default: object, help: str) -> object:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class WandbOptions:
    """The W&B options of ``train``, ``sweep`` and ``report`` (the CLI's ``--wandb*`` flags are these fields)."""

    wandb: Literal[MODES] | None = _opt(None, WANDB_HELP + " Default also: $WANDB_MODE.")
    wandb_project: str | None = _opt(None, "W&B project (default: $WANDB_PROJECT, else ddimbench).")
    wandb_entity: str | None = _opt(None, "W&B entity (default: $WANDB_ENTITY, else W&B's default).")
    wandb_tags: str | None = _opt(None, 'Comma-separated W&B run tags, added to $WANDB_TAGS, e.g. "paper,cpu".')
    wandb_artifacts: Literal[ARTIFACT_MODES] = _opt(
        "auto", "Checkpoints as W&B model artifacts: upload, reference (file://), auto (upload below 100 MiB)."
    )

    @property
    def mode(self) -> str | None:
        """``--wandb``, else a valid ``WANDB_MODE`` (wandb's own aliases mapped), else None (decided by key)."""
        if self.wandb is not None:
            return str(self.wandb).strip().lower()
        env = (os.environ.get("WANDB_MODE") or "").strip().lower()
        env = _MODE_ALIASES.get(env, env)
        return env if env in MODES else None

    @property
    def project(self) -> str:
        return self.wandb_project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT

    @property
    def entity(self) -> str | None:
        return self.wandb_entity or os.environ.get("WANDB_ENTITY") or None

    @property
    def tags(self) -> list[str] | None:
        """W&B's ``WANDB_TAGS`` then ours (``init(tags=)`` replaces the variable's, so both are passed)."""
        given = [*(os.environ.get("WANDB_TAGS") or "").split(","), *(self.wandb_tags or "").split(",")]
        tags = list(dict.fromkeys(t.strip() for t in given if t.strip()))
        return tags or None

    def offline_dir(self, default: str | Path) -> Path:
        """Where runs are written: ``WANDB_DIR`` when set, else ``default`` (W&B adds ``wandb/``)."""
        return Path(os.environ.get("WANDB_DIR") or default)


def wandb_options(value: str | WandbOptions | None) -> WandbOptions:
    """A mode string (the library API's ``wandb=``), None or ready options, as ``WandbOptions``."""
    return value if isinstance(value, WandbOptions) else WandbOptions(wandb=value)


def run_id(project: str, entity: str | None, *parts: str) -> str:
    """A deterministic run id for a sweep cell, a sweep summary or a report: a rerun finds the same run."""
    text = "\0".join([entity or "", project, *parts])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def new_run_id() -> str:
    return secrets.token_hex(8)


def read_run_id(run_dir: str | Path, warn: Callable[[str], None] | None = None) -> str | None:
    """The training run's W&B id kept in ``run_dir``, or None when absent or not an id we wrote
    (the file is untrusted: only ``[a-z0-9]{8,64}`` is used; another content is one line through ``warn``)."""
    path = Path(run_dir) / RUN_ID_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        text = f"unreadable: {exc.strerror or exc}"
    if _RUN_ID.fullmatch(text):
        return text
    if warn is not None:
        warn(f"W&B: the run id stored in {path} is unusable ({text[:80]!r}); a new W&B run starts")
    return None


def write_run_id(run_dir: str | Path, value: str) -> None:
    from ddim.files import atomic_write_text

    atomic_write_text(Path(run_dir) / RUN_ID_FILE, value + "\n")


def model_artifact(checkpoint: str | Path) -> str:
    """The ``model`` artifact of a checkpoint ``<run dir>/checkpoints/step-N.pt``: ``model-<run dir name>``."""
    path = Path(checkpoint)
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return _fit(f"model-{run.name}")


MAX_ARTIFACT_NAME = 128  # W&B's limit on an artifact name


_NOT_IN_ARTIFACT_NAME = re.compile(r"[^A-Za-z0-9_.-]")  # W&B allows only these (ASCII) characters in a name


def _fit(name: str) -> str:
    """``name`` if W&B accepts it, else its start with each character W&B rejects (a space, ``é``, ``/``) as ``_``
    and a hash of the whole: too long or holding such characters, distinct names stay distinct."""
    if len(name) <= MAX_ARTIFACT_NAME and not _NOT_IN_ARTIFACT_NAME.search(name):
        return name
    clean = _NOT_IN_ARTIFACT_NAME.sub("_", name)
    return f"{clean[: MAX_ARTIFACT_NAME - 17]}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:16]}"


def reference_artifact(dataset: str, extractor: str) -> str:
    """The ``reference-stats`` artifact a cell scored against: ``reference-<dataset>-<extractor>``."""
    return _fit(f"reference-{dataset}-{extractor}")


def samples_artifact(sweep: str, slug: str) -> str:
    """A cell's sample grid: ``samples-<sweep>-<cell slug>``."""
    return _fit(f"samples-{sweep}-{slug}")


def report_artifact(sweeps: list[str]) -> str:
    """The report folder's artifact: ``report-<name>``, a combined report's names joined by ``__`` (W&B allows
    only letters, digits, ``-``, ``_`` and ``.`` in an artifact name: not the folder's ``+``)."""
    return _fit("report-" + "__".join(sweeps))


def upload(path: str | Path, how: str) -> bool:
    """Whether ``how`` (an ``ARTIFACT_MODES`` value) uploads ``path`` rather than logging a file:// reference."""
    if how == "auto":
        try:
            return Path(path).stat().st_size < UPLOAD_LIMIT_BYTES
        except OSError:
            return False
    return how == "upload"


def plain(value: Any) -> Any:
    """JSON-friendly copy: numpy/torch values to Python numbers and lists, dataclasses to dicts,
    anything else (Paths, dtypes) to str; every string with its URL passwords masked (``safe_url``)."""
    if isinstance(value, dict):
        return {safe_url(str(k)): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value  # a str falls through to the masked str() below
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return plain(value.item())  # a numpy str_ is masked too
    if hasattr(value, "tolist"):  # numpy arrays, tensors
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        return plain({f: getattr(value, f) for f in value.__dataclass_fields__})
    return safe_url(str(value))
