"""What a sweep records besides its cells: provenance (library versions, git commit, protocol, meta).

``protocol_for`` is what must match for two runs to add cells to the same sweep; ``meta_for`` is the
report's provenance, written when the study is created (a later run adds its command, device, commit
and time beside it, and the report takes the seeds from the cells: see ``bench.store.study``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.store.record import BF16
from bench.store.untrusted import safe_url


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries a result depends on (read from package metadata: nothing imported)."""
    import platform
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("torch", "optuna", "torch-fidelity", "wandb", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _git_commit() -> str | None:
    import subprocess

    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def seeds_text(spec: Any) -> str:
    """The seeds a sweep uses, e.g. ``0-999`` or ``0-999, 1000-1999`` for two seed blocks."""
    return ", ".join("{}-{}".format(*spec.seed_range(b)) for b in spec.seeds)


def protocol_for(spec: Any, checkpoint_sha256: str) -> dict[str, Any]:
    """What must be equal for two runs to add cells to the same sweep."""
    out = {"mode": spec.search or "grid", "checkpoint_sha256": checkpoint_sha256, "n": spec.n,
           "seed_base": spec.seed_base, "dataset": spec.dataset, "extractor": spec.extractor,
           "metrics": sorted(spec.metrics), "T": spec.T}  # fmt: skip
    if spec.bf16:  # only when set: stores written before the key existed are float32 sweeps
        out["precision"] = BF16
    if spec.search:
        d = spec.to_dict()
        out["space"] = {k: d[k] for k in ("steps", "eta", "spacing", "sampler", "seeds", "objective")}
    return out


def meta_for(spec: Any, checkpoint_sha256: str, device: str, command: str) -> dict[str, Any]:
    """The report's provenance, written when the study is created (see ``bench.report.write``); later runs of the
    sweep record their ``command``, ``device``, ``git_commit`` and ``created`` (``store.create_study``)."""
    from datetime import datetime, timezone

    return {
        "name": spec.name, "command": safe_url(command), "git_commit": _git_commit(), "versions": library_versions(),
        "device": device, "dataset": spec.dataset, "T": spec.T, "checkpoint": spec.checkpoint,
        "checkpoint_sha256": checkpoint_sha256, "extractor": spec.extractor, "extractor_sha256": None,
        "ref_key": None, "ref_sha256": None, "n": spec.n, "seeds": seeds_text(spec),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "metrics": list(spec.metrics),
        "mode": spec.search or "grid", "artifacts": spec.artifacts, **({"precision": BF16} if spec.bf16 else {}),
        **({"objective": spec.objective} if spec.search else {}),
    }  # fmt: skip


def check_rerun(spec: Any, storage: str | None) -> bool:
    """What the run would check when it opens the store, without writing anything (``sweep --dry-run``): a sweep
    of this name stored under another protocol is refused in one line. True when such a sweep exists (the run
    adds its missing cells), False when the run would create it."""
    from bench.store.same_sweep import check_same_sweep
    from bench.store.study import stored_protocol
    from ddim.files import sha256_file

    stored = stored_protocol(spec.name, storage)
    if stored is None:
        return False
    protocol, first_checkpoint = stored
    check_same_sweep(spec.name, protocol, first_checkpoint, protocol_for(spec, sha256_file(spec.checkpoint)),
                     spec.checkpoint)  # fmt: skip
    return True
