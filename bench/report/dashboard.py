"""``ddimbench dashboard NAME``: optuna-dashboard over a sweep's own store, for people without W&B.

The sweep's cells are native Optuna trials (``bench.store.study``): optuna-dashboard's trial table shows
each cell's ``steps``, ``eta``, ``sampler``, ``spacing`` and ``seed_block`` as params, the FID as the
trial's value and the other metrics (``isc_mean``, ``kid_mean``, ``nfe``, ``wall_s``, ...) as user
attributes, and its trial list shows each cell's sample grid from the sweep's artifact store
(``bench.store.artifacts``). The server is Python's ``wsgiref`` on one thread, as optuna-dashboard's
own ``run_server``; it runs until Ctrl-C or SIGTERM, which raise ``KeyboardInterrupt`` to the caller
after the socket is closed. It is read-only (``read_only``): nothing it serves changes the store.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from bench.console import sigterm_interrupts
from bench.store.artifacts import open_store, store_path
from bench.store.guard import readable_values
from bench.store.storage import DEFAULT_STORAGE, open_storage
from bench.store.study import load_study
from bench.store.untrusted import artifacts_root, check_name
from ddim.errors import DDIMError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080  # optuna-dashboard's own default; taken when free, else any free port


class _QuietHandler(WSGIRequestHandler):
    """No access log line per request: the terminal shows the URL and nothing else."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
        pass


def dashboard_app(name: str, storage: str | None = None) -> tuple[Callable, int, str | None]:
    """(the WSGI app, the sweep's study id, a note or None) for sweep ``name`` in ``storage``.

    An unknown sweep, an unreachable store, a stored value JSON cannot read back or a missing optuna-dashboard is a
    one-line DDIMError.
    """
    try:
        import optuna_dashboard
    except ModuleNotFoundError:
        raise DDIMError(
            "optuna-dashboard is not installed; pip install 'ddimbench[dashboard]' (or pip install optuna-dashboard)"
        ) from None
    study = load_study(check_name(name, "sweep name "), storage)  # the name may name a folder (artifacts_root)
    with readable_values(storage or DEFAULT_STORAGE):  # every value read once, before the server shows any
        study.get_trials(deepcopy=False)
        root = artifacts_root(name, study.user_attrs.get("meta") or {})
    store, note = None, None
    if store_path(root).is_dir():
        store = open_store(root)
    else:
        note = f"no artifact store at {store_path(root)}: the trials show no sample grid"
    rdb = open_storage(storage)  # the storage object load_study opened (one engine per URL and process)
    app = read_only(optuna_dashboard.wsgi(rdb, artifact_store=store))
    return app, rdb.get_study_id_from_name(name), note


READS = ("GET", "HEAD")  # what the dashboard answers; everything else would change the store


def read_only(app: Callable) -> Callable:
    """The WSGI ``app`` answering reads only: optuna-dashboard has no login, and its other requests change the
    store for whoever reaches the port (delete or rename a study, tell a trial, set its attributes and notes, upload
    or delete artifacts, migrate the database's schema); each is answered 405 before it reaches the app."""

    def guarded(environ: dict, start_response: Callable) -> Any:
        if str(environ.get("REQUEST_METHOD", "GET")).upper() in READS:
            return app(environ, start_response)
        body = b"ddimbench dashboard is read-only: it shows a sweep and changes nothing in its store\n"
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Allow", ", ".join(READS)),
                   ("Content-Length", str(len(body)))]  # fmt: skip
        start_response("405 Method Not Allowed", headers)
        return [body]

    return guarded


def _bind(host: str, port: int | None, app: Callable) -> WSGIServer:
    tries = [port] if port is not None else [DEFAULT_PORT, 0]
    for i, p in enumerate(tries):
        try:
            return make_server(host, p, app, handler_class=_QuietHandler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and i + 1 < len(tries):
                continue
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise DDIMError(
                f"cannot serve on {host}:{p} ({reason}); pass another --port (0: any free port) or --host"
            ) from None
    raise AssertionError("unreachable")


def serve(
    name: str,
    storage: str | None = None,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Serve optuna-dashboard for sweep ``name`` until interrupted; ``say`` gets the study page's URL first.

    ``port`` None takes 8080 when free, else any free port; 0 always any free port.
    """
    app, study_id, note = dashboard_app(name, storage)
    server = _bind(host, port, app)
    try:
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        if note:
            say(f"note: {note}")
        url = f"http://{shown}:{server.server_port}/dashboard/studies/{study_id}"
        say(f"optuna-dashboard for sweep {name!r}: {url}")
        say(f"table of cells (S, η, FID, metrics): {url}/smartSelection; sample grids: {url}/trials; Ctrl-C stops")
        with sigterm_interrupts():  # SIGTERM stops the server like Ctrl-C
            server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
