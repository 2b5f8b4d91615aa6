"""Files the library writes and reads: atomic writes (temp file, fsync, ``os.replace``), file hashes,
and the one-line message for a failed write. Imports nothing heavy (no torch)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ddim.errors import DDIMError

_UMASK = os.umask(0o022)  # read the process umask (only settable, so set it back at once)
os.umask(_UMASK)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable across a power loss (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write a file through ``write(fileobj)`` into a temp file beside it, fsync, then ``os.replace``.

    A crash or a failed write (disk full, permissions) leaves any previous file untouched and removes
    the temp file; the error propagates unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # mkstemp makes 0600; give the mode open() would
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_error(what: str, path: str | Path, exc: OSError, flag: str = "--run-dir", verb: str = "write") -> DDIMError:
    """One line for a failed write: what, where, the OS reason and what the user can do about it."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free space or choose another {flag}"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"fix the permissions or choose another {flag}"
    else:
        fix = f"check the disk or choose another {flag}"
    return DDIMError(f"could not {verb} {what} {path}: {reason}; {fix}")


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


_SHA256_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, memoised per (real path, size, mtime) so 100 MB weights are hashed once."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    if key not in _SHA256_MEMO:
        h = hashlib.sha256()
        with open(real, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        _SHA256_MEMO[key] = h.hexdigest()
    return _SHA256_MEMO[key]
