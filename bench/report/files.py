"""How a report folder is written: into a temporary folder beside it, swapped into place when complete
(``ReportWriter``), every file's sha256 recorded for the manifest; ``jsonable`` for the manifest. No torch,
no optuna.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import math
import numbers
import os
import shutil
import stat
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

from bench.report.tables import TEXT_FILES
from bench.store.guard import process_alive
from ddim.errors import DDIMError
from ddim.files import atomic_write

OPTIONAL_FILES = ("inversion.md", "inversion.tex", "fid_vs_steps.png", "fid_vs_time.png", "consistency.png",
                  "interpolation.png", "pareto_front.png")  # fmt: skip
HASHED = frozenset((*TEXT_FILES, "README.md"))  # files whose sha256 the README lists (the manifest: every file)
_REPORT_FILES = frozenset((*TEXT_FILES, *OPTIONAL_FILES, "README.md"))  # top-level names a report may leave stale
_NEW, _OLD = "report", "previous"  # the temporary folders beside ``out``: .<name>.report-<pid>-<id>, .<name>.previous-…


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
    """Refuse (before anything is written) a folder that holds files of the names a report writes that no report
    wrote, e.g. a project's README.md for ``--out .``: the report would replace them. A folder is a report's once
    it holds a report manifest."""
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


def _stale(path: Path, digest: str | None) -> bool:
    """True for a file the previous report wrote and nobody changed since (recorded hash, when there is one)."""
    if path.is_symlink() or not path.is_file():
        return False
    return digest is None or sha(path.read_bytes()) == digest


def _carry(out: Path, new: Path, previous: Mapping[str, str | None], written: Mapping[str, Path]) -> None:
    """Put into ``new`` (hard links, else copies) every file of ``out`` that this report does not write and the
    previous report did not write (e.g. the user's notes, a report file edited by hand since); what the previous
    report wrote and this one does not (the grid of a cell that is gone, the inversion table of a sweep that no
    longer has one) is left behind: kept, it would contradict the rest."""
    for here, dirs, files in os.walk(out):
        rel_dir = Path(here).relative_to(out)
        for d in dirs:
            if (Path(here) / d).is_symlink():
                files.append(d)  # a link to a folder is carried as the link (os.walk does not follow it)
            else:
                (new / rel_dir / d).mkdir(exist_ok=True)
        for f in files:
            rel, src = (rel_dir / f).as_posix(), Path(here) / f
            if rel in written or (rel in previous and _stale(src, previous[rel])):
                continue
            dst = new / rel_dir / f
            if src.is_symlink():
                os.symlink(os.readlink(src), dst)
                continue
            try:
                os.link(src, dst)
            except OSError:  # a filesystem without hard links
                shutil.copy2(src, dst)


def _temp_folders(out: Path, kind: str) -> list[Path]:
    return sorted(out.parent.glob(f".{glob.escape(out.name)}.{kind}-*"))


def _alive(folder: Path) -> bool:
    """Whether the process that made a temporary folder (its pid is in the name) still runs on this machine."""
    try:
        return process_alive(int(folder.name.rsplit("-", 2)[-2]))
    except (ValueError, IndexError):
        return False


def _recover(out: Path) -> None:
    """Tidy what a report killed while swapping (or writing) left beside ``out``: a previous report moved aside
    goes back when ``out`` is missing, else away; a dead process's unfinished folder goes."""
    for old in _temp_folders(out, _OLD):
        if not out.exists() and not out.is_symlink():
            os.rename(old, out)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for new in _temp_folders(out, _NEW):
        if not _alive(new):
            shutil.rmtree(new, ignore_errors=True)


def _swap(new: Path, out: Path) -> None:
    """Put the complete folder ``new`` at ``out``: two renames on one filesystem, then the previous one removed.
    Killed between the renames, ``out`` is missing and the previous report sits beside it (``_recover``)."""
    if not out.exists():
        os.rename(new, out)
        return
    os.chmod(new, stat.S_IMODE(out.stat().st_mode))
    old = new.with_name(new.name.replace(f".{_NEW}-", f".{_OLD}-", 1))
    os.rename(out, old)
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _named(out: Path) -> Iterator[None]:
    """An OS error while making the report folder ``out`` as one line that names ``out`` as the user gave it (never
    the temporary folder beside it), the reason and the fix."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        for above in out.parents:  # the nearest existing folder above: a file there is the reason, not "File exists"
            if above.exists() or above.is_symlink():
                if not above.is_dir():
                    reason = f"{above} is a file, not a folder"
                elif exc.errno == errno.ENOENT:  # a filesystem that takes no new entries (/proc)
                    reason = f"no folder can be created in {above}"
                break
        fix = (
            "free space or choose another --out"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT)
            else "choose another --out"
        )
        raise DDIMError(f"cannot write the report folder {out} ({reason}); {fix}") from None


class ReportWriter:
    """One report being written, as a context manager: ``put`` each file into a temporary folder beside ``out``
    (the same filesystem), then ``finish`` swaps it into place and returns {relative name: path} of every file
    written. Until then ``out`` is untouched: a report that fails or is killed leaves the previous one whole and
    no half-written folder (leaving the block without ``finish`` removes the temporary folder). Files in ``out``
    that no report wrote are carried over (``_carry``). Refused, before anything is written, in a folder holding
    files of the names a report writes that no report wrote, and for the working directory or a mount point (which
    cannot or should not be swapped)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        with _named(out):
            self._start(Path(os.path.realpath(out)))  # a link to a folder: the report replaces the one it names

    def _start(self, real: Path) -> None:
        out = self.out
        _recover(real)
        if real.exists() and not real.is_dir():
            raise DDIMError(f"{out} is a file, not a folder; choose another --out")
        here = Path.cwd().resolve()
        if real == here or real in here.parents or os.path.ismount(real):
            raise DDIMError(f"{out} is the working directory, holds it or is a mount point, and a report replaces its "
                            "folder as a whole; choose a folder of its own for --out, e.g. reports/NAME")  # fmt: skip
        _claim(real)
        self.real, self.previous = real, _previous_outputs(real)
        real.parent.mkdir(parents=True, exist_ok=True)
        self.folder = real.parent / f".{real.name}.{_NEW}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.folder.mkdir()  # the mode open() gives (mkdtemp's would be 0700)
        self.written: dict[str, Path] = {}
        self.hashes: dict[str, str] = {}

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.folder.exists():  # not finished: nothing of it stays
            shutil.rmtree(self.folder, ignore_errors=True)

    def put(self, name: str, data: bytes | str) -> None:
        with _named(self.out):
            write_file(self.folder / name, data)
        self.written[name] = self.out / name
        self.hashes[name] = sha(data)

    def text_hashes(self) -> list[tuple[str, str]]:
        """(name, sha256) of the text files written so far (``HASHED``), by name: the README's list."""
        return sorted((n, h) for n, h in self.hashes.items() if n in HASHED)

    def finish(self) -> dict[str, Path]:
        with _named(self.out):
            if self.real.is_dir():
                _carry(self.real, self.folder, self.previous, self.written)
            _swap(self.folder, self.real)
        return dict(sorted(self.written.items()))
