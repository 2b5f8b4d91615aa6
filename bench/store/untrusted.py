"""What crosses a trust boundary: credentials on the way out, names, numbers and paths from a sweep store on the way in.

- Credentials never leave the process: a storage URL such as ``postgresql://user:PASSWORD@host/db``
  reaches the study's provenance (the command line), the report, W&B and the terminal; ``safe_url``
  masks its password wherever it sits in a string, and ``redact`` applies it to every string of a
  JSON-like structure.
- A sweep store is untrusted input (anyone with access to the database can write to it): a sweep
  name must pass ``check_name`` (it names folders), a number is read only as an int or float that it is
  (``stored_int``, ``stored_float``: ``10**400`` is no float), a file the store names is read only as a PNG
  inside the sweep's artifacts folder (``artifact_file``), and that folder only when it holds the
  sweep's ``sweep.json`` (``artifacts_root``).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ddim.errors import DDIMError

MASK = "***"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# scheme://user:PASSWORD@host: the password runs to the last "@" before the host, so a raw "@" in it
# (``u:p@ss@host``, which many URL parsers accept) is masked whole; a URL without a password is untouched.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)(.*?)@(?=[^@\s]*(?:\s|$))")
# ?password=... / &password=... query parameters (libpq and SQLAlchemy accept them).
_QUERY = re.compile(r"([?&](?:password|passwd|pwd|sslpassword|secret|token|api_key|apikey)=)[^&#\s'\"]*", re.I)


def safe_url(text: str) -> str:
    """``text`` (a URL, or a command line or message holding URLs) with every password masked."""
    text = _USERINFO.sub(lambda m: f"{m[1]}{MASK}@" if m[2] else m[0], text)
    return _QUERY.sub(lambda m: f"{m[1]}{MASK}", text)


def masked(text: str) -> bool:
    """Whether ``text`` (a command read back from a store) holds a password ``safe_url`` masked."""
    return any(m[2] == MASK for m in _USERINFO.finditer(text)) or any(
        m[0][len(m[1]) :] == MASK for m in _QUERY.finditer(text)
    )


def url_password(url: str) -> str | None:
    """The password ``safe_url`` masks in ``url`` (up to the last "@" before the host), or None."""
    found = _USERINFO.search(url)
    return found[2] if found and found[2] else None


def redact(value: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings, numbers) with ``safe_url`` applied to every
    string, keys included: what goes into a report, a study or a W&B run."""
    if isinstance(value, str):
        return safe_url(value)
    if isinstance(value, dict):
        return {redact(k): redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value] if isinstance(value, list) else tuple(redact(v) for v in value)
    return value


# --- names, numbers and paths read from a sweep store ----------------------------------------------


def stored_float(v: Any) -> float | None:
    """A number read from the store as a float (an int too: JSON keeps 3 an int), or None for anything else: a bool,
    a string, an int beyond a float's range (``10**400``). NaN and ±inf stay (a metric that came out NaN)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    try:
        return float(v)
    except OverflowError:
        return None


def stored_int(v: Any) -> int | None:
    """A number read from the store as an int: an int (not a bool), or a float without a fraction (``10.0``: JSON
    writers may store 10 so); None for anything else (a fraction, NaN, ±inf, a string). Never a float conversion
    of an int, which overflows beyond a float's range."""
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return int(v)
    f = stored_float(v)
    return int(f) if f is not None and math.isfinite(f) and f.is_integer() else None


def check_name(name: object, what: str = "name=") -> str:
    """A sweep name: it names folders (``reports/<name>``, ``ddimbench-sweeps/<name>``), so no path
    separators, no leading dot, at most 100 characters; anything else is a one-line DDIMError."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise DDIMError(
            f"{what}{name!r} must be letters, digits, '.', '_' or '-' (it names folders); e.g. name=my-grid"
        )
    return name


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def artifact_file(root: str | Path, rel: Any) -> Path | None:
    """The PNG file that a path read from the store names inside the sweep's artifacts folder ``root``, or None.

    The store is untrusted: an absolute path, one that leaves ``root`` (``..``, a symbolic link out), a missing
    file or one that is not a PNG image is never read.
    """
    if not isinstance(rel, str) or not rel or "\x00" in rel or Path(rel).is_absolute():
        return None
    try:
        base, path = Path(root).resolve(), (Path(root) / rel).resolve()
        if not path.is_relative_to(base) or not path.is_file():
            return None
        with open(path, "rb") as f:
            return path if f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE else None
    except (OSError, RuntimeError):  # unreadable, a symbolic link loop
        return None


def artifacts_root(name: str, meta: Mapping[str, Any]) -> Path:
    """The sweep's artifacts folder: the one its study names when that folder holds a ``sweep.json`` (so a
    store cannot point the report at an arbitrary folder), else ``ddimbench-sweeps/<name>``."""
    default = Path("ddimbench-sweeps") / name
    named = meta.get("artifacts")
    if not isinstance(named, str) or not named or "\x00" in named:
        return default
    try:
        return Path(named) if (Path(named) / "sweep.json").is_file() else default
    except OSError:  # a name too long for the file system, ...
        return default


def command_line() -> str:
    """The command as typed, with any password in a URL argument masked (it is stored and reported)."""
    import shlex
    import sys

    return shlex.join(["ddimbench", *(safe_url(a) for a in sys.argv[1:])])
