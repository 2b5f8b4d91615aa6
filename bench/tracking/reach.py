"""Whether W&B can go online: credentials configured (W&B's own lookup), a server that answers within a
few seconds, and a usable ``WANDB_MODE``.

What stays hand-written, and why:
- the reachability probe: on a dead network wandb's own init waits 90 s per run (30 s with our timeout),
  a DNS + TCP + first-answer probe says so in 3 s;
- the ``WANDB_MODE`` check: wandb validates the variable on import and then refuses every run, even one
  with an explicit mode.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from bench.console import warn as warn_line
from ddim.errors import one_line

MODES = ("online", "offline", "disabled")
REACHABILITY_TIMEOUT_S = 3.0  # budget for the DNS + TCP probe before an online init


def api_key_configured() -> bool:
    """Whether W&B would find credentials (``WANDB_API_KEY``, an identity token file, the netrc entry for
    its server, the settings files' ``api_key``): W&B's own lookup, asked not to prompt, verify or remember."""
    try:
        import wandb
        from wandb.sdk.lib import wbauth

        base_url = wandb.setup(settings=wandb.Settings(silent=True)).settings.base_url
        found = wbauth.authenticate_session(
            host=base_url, source="ddimbench", prompt=False, verify=False, update_session=False
        )
    except Exception:  # a malformed key or an unreadable netrc: W&B could not log in with it either
        return False
    return found is not None


def default_mode() -> str:
    """``"online"`` when W&B finds a key (env, netrc, settings files), else ``"offline"``."""
    return "online" if api_key_configured() else "offline"


def probe(host: str, port: int, timeout: float, tls: bool = False) -> str | None:
    """DNS, TCP connect and a first answer within ``timeout`` s in all (in a thread: DNS has no timeout); None
    if the server answers. The answer is a TLS handshake (``tls``) or any reply to a HEAD request: a server
    that accepts connections and never answers would otherwise cost wandb's whole init timeout per process."""
    import ssl

    error = [f"no answer within {timeout:g} s"]

    def connect() -> None:
        start = time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                error[0] = f"it accepts connections but sends no answer within {timeout:g} s"
                sock.settimeout(max(0.05, timeout - (time.monotonic() - start)))
                if tls:
                    ctx = ssl.create_default_context()
                    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # an answer is enough here
                    ctx.wrap_socket(sock, server_hostname=host or None).close()
                else:
                    sock.sendall(f"HEAD / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode("ascii", "replace"))
                    if not sock.recv(1):
                        raise ConnectionResetError("the server closed the connection without an answer")
            error[0] = ""
        except TimeoutError:
            pass  # the message set above says where it stopped
        except OSError as exc:
            error[0] = one_line(exc)

    thread = threading.Thread(target=connect, name="wandb-reachability", daemon=True)
    thread.start()
    thread.join(timeout)
    return error[0] or None


online_failures: dict[str, str] = {}  # base URL -> why online failed earlier in this process


def server_problem(base_url: str) -> str | None:
    """Why an online init would fail or hang, or None if a key is set and the server answers.

    A failed probe or online init is remembered for the process, so a sweep's later runs go
    offline at once instead of probing (and warning) again for every cell.
    """
    if bad_base_url:
        return f"WANDB_BASE_URL={bad_base_url[0]!r} is not a server address"
    if not api_key_configured():
        return "no W&B API key found (set WANDB_API_KEY or run `wandb login`)"
    if base_url in online_failures:
        return online_failures[base_url]
    import urllib.request

    parts = urlsplit(base_url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    tls = parts.scheme == "https"
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname or "", proxy_parts.port or 80
        tls = proxy_parts.scheme == "https"
    if error := probe(host, port, REACHABILITY_TIMEOUT_S, tls):
        online_failures[base_url] = f"cannot reach {host}:{port} ({error})"
        return online_failures[base_url]
    return None


WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")  # what wandb itself accepts
env_warned: set = set()  # WANDB_MODE values and (variable, value) pairs already warned about


def check_mode_env(warn: Callable[[str], None] = warn_line) -> None:
    """Drop a ``WANDB_MODE`` that wandb would reject (``bogus``, empty) with one warning naming it.

    wandb validates the variable on import and then refuses to start any run, so a bad value silently
    disabled tracking even with an explicit ``--wandb``. Our mode (the option, else ``default_mode()``) is
    passed to every run anyway; removing the variable from this process's environment also keeps it from
    the sweep's worker processes.
    """
    value = os.environ.get("WANDB_MODE")
    if value is None or value in WANDB_MODES:
        return
    if (clean := value.strip().lower()) in WANDB_MODES:  # wandb itself takes only the exact lowercase words
        os.environ["WANDB_MODE"] = clean
        if value not in env_warned:
            env_warned.add(value)
            warn(f"W&B: reading WANDB_MODE={value!r} as {clean!r}; set it so to silence this")
        return
    del os.environ["WANDB_MODE"]
    if value not in env_warned:
        env_warned.add(value)
        warn(f"W&B: ignoring WANDB_MODE={value!r} (not one of {', '.join(MODES)}); --wandb or the default applies")


bad_base_url: list[str] = []  # a WANDB_BASE_URL dropped as invalid: no online run (the key is for that server)
_SETTINGS_ENV = {"WANDB_PROJECT": "project", "WANDB_BASE_URL": "base_url"}  # variable -> wandb.Settings field


def rejects(field: str, value: object) -> str | None:
    """Why wandb's own ``Settings`` rejects ``value`` for ``field`` (one line), or None: the one judge."""
    import wandb

    try:
        wandb.Settings(**{field: value})
    except Exception as exc:
        try:  # pydantic's ValidationError: its first line only counts the errors, the message comes later
            return one_line(exc.errors()[0]["msg"])  # type: ignore[attr-defined]
        except Exception:
            return one_line(exc)
    return None


def _warn_env(warn: Callable[[str], None], key: tuple[str, str], line: str) -> None:
    if key not in env_warned:
        env_warned.add(key)
        warn(line)


def check_settings_env(project_flag: str | None, warn: Callable[[str], None] = warn_line) -> None:
    """Drop a ``WANDB_PROJECT`` or ``WANDB_BASE_URL`` that wandb would reject (``a/b``, 129 characters, not a
    URL) and the tags of ``WANDB_TAGS`` it would reject (over 64 characters), each with one warning naming it;
    a rejected ``WANDB_PROJECT`` is dropped silently when ``--wandb-project`` is given (the flag wins). wandb
    validates these on setup and then refuses every run: one bad variable disabled tracking despite the flags."""
    for var, field in _SETTINGS_ENV.items():
        value = os.environ.get(var)
        if value is not None and (why := rejects(field, value)):
            del os.environ[var]
            if not (var == "WANDB_PROJECT" and project_flag):  # the flag wins: nothing lost
                _warn_env(warn, (var, value), f"W&B: ignoring {var}={value!r} ({why}); fix or unset it")
            if var == "WANDB_BASE_URL":
                bad_base_url.append(value)
    tags = [t.strip() for t in os.environ.get("WANDB_TAGS", "").split(",") if t.strip()]
    kept = usable_tags(tags, warn, "WANDB_TAGS")
    if len(kept) < len(tags):
        os.environ["WANDB_TAGS"] = ",".join(kept)


def usable_tags(tags: list[str], warn: Callable[[str], None] = warn_line, source: str = "--wandb-tags") -> list[str]:
    """``tags`` without the ones W&B rejects (over 64 characters), each dropped with one warning."""
    kept = [t for t in tags if not rejects("run_tags", (t,))]
    for tag in tags:
        if tag not in kept:
            _warn_env(warn, (source, tag), f"W&B: dropping the tag {tag!r} from {source} (W&B takes 1 to 64 "
                      "characters); the other tags are kept")  # fmt: skip
    return kept
