"""Credentials never leave the process: every URL we store, print or log goes through ``safe_url``.

A storage URL such as ``postgresql://user:PASSWORD@host/db`` reaches the study's provenance (the
command line), the report, W&B and the terminal; ``safe_url`` masks its password wherever it sits
in a string, and ``redact`` applies it to every string of a JSON-like structure.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
# scheme://user:PASSWORD@host: the password runs to the last "@" before the host, so a raw "@" in it
# (``u:p@ss@host``, which many URL parsers accept) is masked whole; a URL without a password is untouched.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)(.*?)@(?=[^@\s]*(?:\s|$))")
# ?password=... / &password=... query parameters (libpq and SQLAlchemy accept them).
_QUERY = re.compile(r"([?&](?:password|passwd|pwd|sslpassword|secret|token|api_key|apikey)=)[^&#\s'\"]*", re.I)


def safe_url(text: str) -> str:
    """``text`` (a URL, or a command line or message holding URLs) with every password masked."""
    text = _USERINFO.sub(lambda m: f"{m[1]}{MASK}@" if m[2] else m[0], text)
    return _QUERY.sub(lambda m: f"{m[1]}{MASK}", text)


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
