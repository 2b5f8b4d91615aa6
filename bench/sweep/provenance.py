"""What a sweep records besides its cells: provenance (library versions, git commit, protocol, meta)
and the W&B runs (one per cell, one summary per sweep).

``protocol_for`` is what must match for two runs to add cells to the same sweep; ``meta_for`` is the
report's provenance, written when the study is created (a later run adds its command, device, commit
and time beside it, and the report takes the seeds from the cells: see ``bench.store.storage``). W&B logging
goes through ``tracked``: a failure there is one warning and never stops the sweep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.store.storage import _PROTOCOL_META, TABLE_COLUMNS, table_rows


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
    if spec.search:
        d = spec.to_dict()
        out["space"] = {k: d[k] for k in ("steps", "eta", "schedule", "sampler", "seeds", "objective")}
    return out


def meta_for(spec: Any, checkpoint_sha256: str, device: str, command: str) -> dict[str, Any]:
    """The report's provenance, written when the study is created (see ``bench.report.write``); later runs of the
    sweep record their ``command``, ``device``, ``git_commit`` and ``created`` (``store.create_study``)."""
    from datetime import datetime, timezone

    return {
        "name": spec.name, "command": command, "git_commit": _git_commit(), "versions": library_versions(),
        "device": device, "dataset": spec.dataset, "T": spec.T, "checkpoint": spec.checkpoint,
        "checkpoint_sha256": checkpoint_sha256, "extractor": spec.extractor, "extractor_sha256": None,
        "ref_key": None, "ref_sha256": None, "n": spec.n, "seeds": seeds_text(spec),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "metrics": list(spec.metrics),
        "mode": spec.search or "grid", "artifacts": spec.artifacts,
    }  # fmt: skip


def tracked(mode: str | None, warn: Any, what: str, body: Any, **run: Any) -> None:
    """Run ``body(tracker)`` in a fresh W&B run; any failure is one warning, never an exception."""
    if mode == "disabled":
        return
    from bench.tracking.wandb_run import make_tracker

    try:
        with make_tracker(mode, **run) as tracker:
            body(tracker)
    except Exception as exc:
        warn(f"W&B: logging {what} failed ({type(exc).__name__}: {exc}); the sweep goes on")


def track_cell(mode: str | None, spec: Any, cell: Any, result: dict, display: Any) -> None:
    """One run per cell in the sweep's group: config = cell + protocol, summary = metrics, the grid."""
    root = Path(spec.artifacts)
    config = {**cell.fields(), "n": spec.n, "seeds": result.get("seeds"), "dataset": spec.dataset,
              "T": spec.T, "checkpoint": spec.checkpoint, "nfe": result.get("nfe")}  # fmt: skip
    config.update({k: result.get(k) for k in _PROTOCOL_META + ("extractor", "device")})
    numbers = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def body(tr: Any) -> None:
        tr.log(numbers)
        tr.summary({**numbers, **({"error": result["error"]} if result.get("error") else {})})
        if result.get("grid"):
            tr.log_image("samples", root / result["grid"], caption=cell.label)

    tracked(mode, display.warn, f"cell {cell.label}", body, name=f"{spec.name}-{cell.slug}", group=spec.name,
             job_type="sweep-cell", config=config, dir=root)  # fmt: skip


def track_summary(mode: str | None, spec: Any, records: list[dict], display: Any) -> None:
    """The sweep's summary run: every cell as a ``wandb.Table`` and the FID-vs-steps figure."""

    def body(tr: Any) -> None:
        tr.log_table("cells", list(TABLE_COLUMNS), table_rows(records))
        tr.summary({s.lower(): sum(r["state"] == s for r in records) for s in ("COMPLETE", "FAIL")})
        if any(r.get("fid") is not None for r in records):
            from bench.report.write import fid_vs_steps_png
            from ddim.runtime import atomic_write

            png = fid_vs_steps_png(records, title=f"{spec.name}: FID vs sampling steps")
            if png is not None:
                path = atomic_write(Path(spec.artifacts) / "fid_vs_steps.png", lambda f: f.write(png))
                tr.log_image("fid_vs_steps", path)

    tracked(mode, display.warn, "the sweep summary", body, name=f"{spec.name}-summary", group=spec.name,
             job_type="sweep-summary", config=spec.to_dict(), dir=Path(spec.artifacts))  # fmt: skip
