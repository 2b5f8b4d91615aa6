"""Experiment tracking with W&B: ``make_tracker`` and the W&B tracker (the interface and the no-op
trackers are in ``bench.tracking.tracker``), ``tracked`` (a run whose failures are one warning), and a run-log
reader.

wandb is imported inside functions only (here, in ``reach`` and ``wandb_report``): importing
this costs nothing. Modes fall back online -> offline -> disabled with one warning line, and every call on a
tracker is guarded: a W&B failure becomes a single warning and the tracker turns into a no-op, so
tracking never crashes the caller. Offline runs land in ``<WANDB_DIR or dir>/wandb/offline-run-*`` and
can be uploaded later with ``wandb sync``. ``read_offline_run`` decodes a run's binary ``.wandb`` log.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.console import warn as _warn_stderr
from bench.tracking import artifacts, reach
from bench.tracking import offline_log as tracking_log
from bench.tracking.conventions import WandbOptions, new_run_id, plain, run_id, wandb_options
from bench.tracking.reach import MODES
from bench.tracking.tracker import NullTracker, Tracker
from ddim.errors import DDIMError, one_line, printable

if TYPE_CHECKING:
    from bench.tracking.tracker import ImageLike

ONLINE_INIT_TIMEOUT_S = 30.0  # wandb's own default (90 s) is too long to wait on a dead network
FINISH_FLUSH_TIMEOUT_S = 10.0  # bound on waiting for wandb-core to write the end of the run log


class WandbTracker(Tracker):
    """A live W&B run (online or offline). Built by ``make_tracker``; wraps every call in a guard."""

    def __init__(self, run: Any, mode: str, warn: Callable[[str], None]) -> None:
        self._run = run
        self._warn = warn
        self._lock = threading.Lock()
        self._warned: set[str] = set()  # warning categories already shown
        self._active = True  # False after finish() or after the first failure
        self._last_step = -1
        _live.add(self)
        self.mode = mode
        self.run_dir = Path(run.settings.sync_dir)
        self._background = artifacts.Background(
            lambda exc: self._warn_once("artifact", f"W&B: logging an artifact failed ({one_line(exc)})")
        )

    def _warn_once(self, category: str, message: str) -> None:
        with self._lock:
            if category in self._warned:
                return
            self._warned.add(category)
        self._warn(message)

    def _check_step(self, step: int | None) -> None:
        if step is None or not self._active:
            return
        if step < self._last_step:
            self._warn_once("step", f"W&B: step {step} < previous step {self._last_step}; W&B drops out-of-order steps")
        self._last_step = max(self._last_step, step)

    def _guarded(self, what: str, call: Callable[[], object]) -> None:
        if not self._active:
            return
        try:
            call()
        except Exception as exc:
            self._active = False
            self._warn_once("failure", f"W&B: {what} failed ({one_line(exc)}); tracking off for this run")

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._check_step(step)
        self._guarded("log", lambda: self._run.log(metrics, step=step))

    def log_image(self, key: str, image: ImageLike, step: int | None = None, caption: str | None = None) -> None:
        import wandb  # already loaded: a WandbTracker exists

        data = str(image) if isinstance(image, Path) else image
        self._check_step(step)
        self._guarded("log_image", lambda: self._run.log({key: wandb.Image(data, caption=caption)}, step=step))

    def log_table(self, key: str, columns: list[str], rows: list[list], images: Sequence[str] = (),
                  charts: Sequence[Any] = ()) -> None:  # fmt: skip
        import wandb

        def call() -> None:  # an unreadable image fails the guarded call, like any other W&B failure
            pics = {columns.index(c) for c in images}
            data = [[wandb.Image(str(v)) if i in pics and v is not None else plain(v) for i, v in enumerate(row)]
                    for row in rows]  # fmt: skip
            table = wandb.Table(columns=list(columns), data=data)
            lines = {c.key: wandb.plot.line(table, c.x, c.y, stroke=c.stroke, title=c.title) for c in charts}
            self._run.log({key: table, **lines})

        self._guarded("log_table", call)

    def summary(self, values: dict) -> None:
        self._guarded("summary", lambda: self._run.summary.update(plain(values)))

    def log_artifact(self, name: str, kind: str, paths: list[Path], upload: bool, aliases: Iterable[str] = ()
                     ) -> None:  # fmt: skip
        import wandb

        run, aliases = self._run, list(aliases)
        if self._active and run is not None:
            self._background.submit(lambda: run.log_artifact(artifacts.build(wandb, name, kind, paths, upload),
                                                             aliases=aliases))  # fmt: skip

    def use_artifact(self, name: str, kind: str, paths: list[Path], upload: bool = False) -> None:
        import wandb

        if not self._active:
            return
        try:  # a missing file costs the lineage link, not the run: one warning, logging goes on
            artifacts.use(self._run, artifacts.build(wandb, name, kind, paths, upload), self.mode == "offline")
        except Exception as exc:
            self._warn_once("artifact", f"W&B: using artifact {name} failed ({one_line(exc)})")

    def finish(self) -> None:
        self._end(exit_code=0)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._end(exit_code=0 if exc_type is None else 1)

    def _end(self, exit_code: int) -> None:
        if self._run is None:
            return
        self._background.join()  # the artifacts logged so far belong to this run
        run, self._run, was_active = self._run, None, self._active
        self._active = False
        _live.discard(self)
        try:
            # Also after a failure: finishing flushes what was logged before it.
            run.finish(exit_code=exit_code)
            if self.mode != "offline":
                return
            # Offline, finish() returns before wandb-core has written the log's tail; wait for
            # it so the run directory is complete (readable, syncable) when we return.
            log = self.run_dir / f"run-{run.id}.wandb"
            deadline = time.monotonic() + FINISH_FLUSH_TIMEOUT_S
            while not _log_has_exit(log):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{log} incomplete after {FINISH_FLUSH_TIMEOUT_S:g} s")
                time.sleep(0.005)
        except Exception as exc:
            if was_active:
                self._warn_once("failure", f"W&B: finish failed ({one_line(exc)})")


# -- building a tracker ---------------------------------------------------------------------------


def _quiet_wandb() -> Any:
    """Import wandb with its terminal output silenced (process-wide settings; cheap to repeat)."""
    import wandb

    wandb.setup(settings=wandb.Settings(silent=True))
    # wandb's usage telemetry logs "Failed to export ... batch code: 401" on stderr at exit after a rejected key
    logging.getLogger("opentelemetry.exporter.otlp").setLevel(logging.CRITICAL)
    return wandb


def make_tracker(
    mode: str | WandbOptions | None,
    *,
    project: str | None = None,
    name: str | None = None,
    group: str | None = None,
    job_type: str | None = None,
    config: dict | None = None,
    dir: str | Path = ".",
    tags: Iterable[str] | None = None,
    run_id: str | None = None,
    metrics: dict[str, str] | None = None,
    warn: Callable[[str], None] = _warn_stderr,
    note: Callable[[str], None] | None = None,
) -> Tracker:
    """Start a run in ``mode`` (``WandbOptions`` or a mode; None: ``WANDB_MODE``, else ``reach.default_mode()``),
    falling back online -> offline -> disabled.

    A fallback costs one line through ``warn`` (once per process for the same reason); nothing
    raises except an unknown mode (``DDIMError``). Online is tried only when a key is configured
    and the server gives a first answer to a short probe (``reach.probe``), then with a bounded
    ``init_timeout``; a failure is
    remembered, so a dead network costs seconds once, not minutes per run. Runs are written under
    ``<WANDB_DIR or dir>/wandb/``, and the first offline run there says so once through ``note`` (default:
    stderr) with the ``wandb sync`` command. Project, entity and tags come from the options
    (``bench.tracking.conventions``) unless ``project``/``tags`` are given. ``run_id``: continue (or create)
    that run (``resume="allow"``). ``metrics``: ``{key: "min" | "max"}`` summaries (``define_metric``).
    """
    opts = wandb_options(mode)
    reach.check_mode_env(warn)  # before anything imports wandb
    reach.check_settings_env(project or opts.wandb_project, warn)  # before wandb reads them
    by_key = opts.mode is None
    requested = reach.default_mode() if by_key else opts.mode
    if requested not in MODES:
        raise DDIMError(f"unknown tracking mode {mode!r}; choose one of {', '.join(MODES)}")
    if requested == "disabled":
        return NullTracker()

    reasons: list[str] = []
    try:
        wandb = _quiet_wandb()
    except Exception as exc:
        warn(f"W&B: cannot load wandb ({one_line(exc)}); tracking disabled")
        return NullTracker()

    given = [tags] if isinstance(tags, str) else list(tags or [])
    init_args = dict(
        project=project or opts.project,
        entity=opts.entity,
        name=name,
        group=group,
        job_type=job_type,
        config=plain(config or {}),
        tags=reach.usable_tags(list(dict.fromkeys([*(opts.tags or []), *given])), warn) or None,
        # An id chosen here: an offline run after a failed online init continues under the same one.
        **({"id": run_id, "resume": "allow"} if run_id else {"id": new_run_id()}),
    )
    where = opts.offline_dir(dir)
    for attempt in ("online", "offline") if requested == "online" else ("offline",):
        base_url, before = "", _run_folders(where)
        try:
            if attempt == "online":
                base_url = _wandb_base_url(wandb)
                if problem := reach.server_problem(base_url):
                    reasons.append(f"online mode unavailable: {problem}")
                    continue
            run = _init_run(wandb, attempt, where, init_args)
            for key, summary in (metrics or {}).items():
                run.define_metric(key, summary=summary)
            tracker = WandbTracker(run, attempt, warn)
        except Exception as exc:
            reasons.append(f"{attempt} init failed: {one_line(exc)}")
            if attempt == "online" and base_url:
                reach.online_failures[base_url] = f"online init failed earlier ({one_line(exc)})"
                wandb = _release_failed_online(wandb, where, before, init_args)
            continue
        runs = tracker.run_dir.parent
        sync = f"upload later with `wandb sync {runs / 'offline-run-*'}`"
        if reasons:
            _offline_said.add(runs)
            if not _parent_notes:  # a sweep worker: the parent's summary run meets the same and says it once
                _warn_fallback(warn, reasons, f"logging offline to {tracker.run_dir} ({sync})")
        elif attempt == "offline" and runs not in _offline_said and not _parent_notes:
            _offline_said.add(runs)
            why = "no W&B API key found (set WANDB_API_KEY or run `wandb login`); " if by_key else ""
            (note or _note_stderr)(f"W&B: {why}offline runs go to {runs}; {sync}")
        return tracker
    _warn_fallback(warn, reasons, "tracking disabled")
    return NullTracker()


def tracked(mode: str | WandbOptions | None, warn: Callable[[str], None], what: str, body: Callable[[Tracker], None],
            key: tuple[str, ...] = (), **run: Any) -> None:  # fmt: skip
    """Run ``body(tracker)`` in a W&B run started with ``run`` (``make_tracker``'s arguments); ``key``: the parts
    of its deterministic id (``conventions.run_id``), e.g. ("report", name). Any failure is one warning through
    ``warn``, never an exception: the work goes on without W&B."""
    opts = wandb_options(mode)
    if opts.mode == "disabled":
        return
    if key:
        run["run_id"] = run_id(opts.project, opts.entity, *key)
    try:
        with make_tracker(opts, **run) as tracker:
            body(tracker)
    except Exception as exc:
        warn(f"W&B: logging {what} failed ({one_line(exc)}); the work goes on without it")


_fallback_warnings: set[str] = set()  # fallback reasons already reported in this process
_offline_said: set[Path] = set()  # offline run folders already named on stderr in this process
_live: set[WandbTracker] = set()  # this process's open runs (wandb.teardown would end them too)
_parent_notes = False  # True in a sweep worker: its parent process names the offline folders


def offline_note_from_parent() -> None:
    """In a worker process: leave the line naming the offline folder, and the warning of why a run is offline
    rather than online, to the parent (one line per command)."""
    global _parent_notes
    _parent_notes = True


def _note_stderr(line: str) -> None:
    try:
        print(printable(line), file=sys.stderr, flush=True)  # a WANDB_DIR or run dir may hold ESC
    except (OSError, ValueError):  # a closed stderr must not stop the work
        pass


def _warn_fallback(warn: Callable[[str], None], reasons: list[str], outcome: str) -> None:
    """One line per distinct fallback per process: a sweep's 100 offline cells warn once."""
    key = f"{'; '.join(reasons)} -> {outcome.split()[0]}"
    if key not in _fallback_warnings:
        _fallback_warnings.add(key)
        warn(f"W&B: {'; '.join(reasons)}; {outcome}")


def _run_folders(where: Path) -> set[str]:
    try:
        return {p.name for p in (where.resolve() / "wandb").glob("run-*")}
    except OSError:
        return set()


def _release_failed_online(wandb: Any, where: Path, before: set[str], init_args: dict) -> Any:
    """After a failed online init (a rejected key): wandb-core still holds the run id ("run ID ... is in use")
    and left a half-written ``run-*`` folder. End wandb's service so the offline try can take the same id,
    and remove the folder; with another run of this process still open, the service stays and the offline
    run gets a new id instead. Returns wandb, set up again."""
    if _live:
        init_args["id"] = new_run_id()
    else:
        try:
            wandb.teardown()
            wandb = _quiet_wandb()
        except Exception:  # the offline try says whether wandb still works
            pass
    for name in _run_folders(where) - before:
        shutil.rmtree(where.resolve() / "wandb" / name, ignore_errors=True)
    return wandb


def _wandb_base_url(wandb: Any) -> str:
    """The server wandb itself will contact (env, settings files, its default)."""
    return str(wandb.setup().settings.base_url)


def _init_run(wandb: Any, mode: str, dir: Path, init_args: dict) -> Any:
    # Absolute: wandb-core is a long-lived process whose working directory need not be ours.
    dir = dir.resolve()
    dir.mkdir(parents=True, exist_ok=True)
    settings = wandb.Settings(
        silent=True,
        console="off",  # leave the caller's stdout/stderr alone
        reinit="create_new",  # every make_tracker is a new run, even with one still open
        use_dot_wandb=False,  # always <dir>/wandb
        init_timeout=ONLINE_INIT_TIMEOUT_S,
        x_disable_meta=True,  # no system metadata: it holds sys.argv (a --storage password) and the git remote
        save_code=False,
    )
    # mode= on every call: WANDB_MODE is read once per process.
    return wandb.init(mode=mode, dir=str(dir), settings=settings, **init_args)


def _log_has_exit(path: Path) -> bool:
    """Whether an offline run log already holds its exit record (written last by wandb-core)."""
    from wandb.proto import wandb_internal_pb2 as pb

    return tracking_log.log_has_exit(path, pb)


def read_offline_run(run_dir: str | Path) -> dict:
    """Decode an offline run directory's ``run-<id>.wandb`` log; see ``bench.tracking.offline_log``."""
    from wandb.proto import wandb_internal_pb2 as pb

    return tracking_log.decode_offline_run(run_dir, pb)
