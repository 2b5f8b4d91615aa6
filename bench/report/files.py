"""How a report folder is written: every file atomically (temp file + fsync + ``os.replace``), the text
files' sha256 recorded for the manifest, and what the previous report in the folder wrote and this one
did not removed at the end (``ReportWriter``); ``jsonable`` for the manifest. No torch, no optuna.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
from collections.abc import Mapping
from pathlib import Path

from bench.report.tables import TEXT_FILES
from ddim.errors import DDIMError
from ddim.files import atomic_write

OPTIONAL_FILES = ("inversion.md", "inversion.tex", "fid_vs_steps.png", "fid_vs_time.png", "consistency.png",
                  "interpolation.png", "pareto_front.png")  # fmt: skip
HASHED = frozenset((*TEXT_FILES, "README.md"))  # files whose sha256 the manifest and README list
_REPORT_FILES = frozenset((*TEXT_FILES, *OPTIONAL_FILES, "README.md"))  # top-level names a report may leave stale


def write_file(path: Path, data: bytes | str) -> Path:
    """Write atomically (``ddim.files.atomic_write``: temp file, fsync, ``os.replace``)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    return atomic_write(path, lambda f: f.write(payload))


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def jsonable(v):
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if v is None or isinstance(v, bool | str):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v) if math.isfinite(v) else None
    return str(v)


def _our_manifest(out: Path) -> dict | None:
    """``out``'s manifest.json when a report wrote it (its keys and their types say so), else None."""
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None
    return manifest if isinstance(manifest.get("cells"), list) else None


def _claim(out: Path) -> None:
    """Make ``out`` a report's folder, or refuse (before anything is written) when it holds files of the names a
    report writes that no report wrote, e.g. a project's README.md for ``--out .``: they would be replaced.

    A folder is a report's once it holds a report manifest; a first report writes a stub one before anything
    else, so a report killed half-way can be rerun into the same folder.
    """
    if _our_manifest(out) is not None:
        return
    names = sorted({*_REPORT_FILES, "manifest.json", "index.html"})
    foreign = [n for n in names if (out / n).exists() or (out / n).is_symlink()]
    grids = out / "grids"
    if (grids.is_dir() and any(grids.iterdir())) or (grids.exists() and not grids.is_dir()):
        foreign.append("grids/")
    if foreign:
        listed = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
        raise DDIMError(
            f"{out} holds files a report would replace that no report wrote ({listed}); "
            "choose another --out or move them away"
        )
    stub = {"cells": [], "files": {}, "images": [], "complete": False}
    write_file(out / "manifest.json", json.dumps(stub, sort_keys=True, indent=2) + "\n")


def _previous_outputs(out: Path) -> dict[str, str | None]:
    """{relative name: sha256 or None} of the files the previous report in ``out`` wrote, from its manifest.json.

    Only names a report writes are taken (a top-level report file or ``grids/<file>``), so a missing, unreadable
    or hand-edited manifest can never name anything else; without a manifest nothing is known and nothing is.
    """
    manifest = _our_manifest(out)
    if manifest is None:
        return {}
    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    images = manifest.get("images") if isinstance(manifest.get("images"), list) else []
    cells = manifest.get("cells") if isinstance(manifest.get("cells"), list) else []
    grids = [c.get("grid") for c in cells if isinstance(c, dict)]  # a grid may be saved as another format than PNG
    names: dict[str, str | None] = {n: None for n in (*images, *grids) if isinstance(n, str)}
    names.update({n: h if isinstance(h, str) else None for n, h in files.items()})
    return {n: h for n, h in names.items() if _report_name(n)}


def _report_name(name: str) -> bool:
    parts = name.split("/")
    if len(parts) == 1:
        return name in _REPORT_FILES
    leaf = parts[-1]
    return len(parts) == 2 and parts[0] == "grids" and bool(leaf) and not leaf.startswith(".") and "\\" not in leaf


def _remove_stale(out: Path, previous: Mapping[str, str | None], written: Mapping[str, Path]) -> None:
    """Delete what the previous report wrote and this one did not (e.g. the grid of a cell that is gone, the
    inversion table of a sweep that no longer has one): left, it would contradict the rest. A file with a
    recorded hash is deleted only while it still holds what the report wrote; nothing else is ever touched."""
    for name, digest in sorted(previous.items()):
        path = out / name
        if name in written or path.is_symlink() or not path.is_file():
            continue
        if digest is not None and sha(path.read_bytes()) != digest:
            continue  # replaced since (by someone else): not ours to delete
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class ReportWriter:
    """One report folder being written: ``put`` each file, then ``finish`` (removes the previous report's
    leftovers, returns {relative name: path} of every file written). Refused, before anything is written, in a
    folder holding files of the names a report writes that no report wrote."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.previous = _previous_outputs(out)  # read before anything is overwritten
        _claim(out)  # refuses a folder holding files of our names that no report wrote
        self.written: dict[str, Path] = {}
        self.hashes: dict[str, str] = {}

    def put(self, name: str, data: bytes | str) -> None:
        self.written[name] = write_file(self.out / name, data)
        if name in HASHED:
            self.hashes[name] = sha(data)

    def finish(self) -> dict[str, Path]:
        _remove_stale(self.out, self.previous, self.written)
        return dict(sorted(self.written.items()))
