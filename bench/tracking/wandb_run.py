"""Experiment tracking: the Tracker interface, a no-op tracker, the W&B tracker, and a run-log reader.

This is the only module that imports wandb (and wandb_report), and it does so inside functions: importing it costs
nothing. Modes fall back online -> offline -> disabled with one warning line, and every call on a
tracker is guarded: a W&B failure becomes a single warning and the tracker turns into a no-op, so
tracking never crashes the caller. Offline runs land in ``<dir>/wandb/offline-run-*`` and can be
uploaded later with ``wandb sync``. ``read_offline_run`` decodes a run's binary ``.wandb`` log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.console import warn as _warn_stderr
from bench.store.untrusted import safe_url
from bench.tracking import offline_log as tracking_log
from bench.tracking import reach
from bench.tracking.reach import MODES
from ddim.errors import DDIMError, one_line

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

    ImageLike = str | Path | np.ndarray | Figure

ONLINE_INIT_TIMEOUT_S = 30.0  # wandb's own default (90 s) is too long to wait on a dead network
FINISH_FLUSH_TIMEOUT_S = 10.0  # bound on waiting for wandb-core to write the end of the run log


class Tracker:
    """What the training loop and the sweep see; every method must be cheap and never raise."""

    mode: str  # the mode actually in use after fallbacks
    run_dir: Path | None  # local run directory, None when nothing is written

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log scalar metrics; with ``step``, rows at the same step are merged (steps must increase)."""
        raise NotImplementedError

    def log_image(
        self,
        key: str,
        image: ImageLike,
        step: int | None = None,
        caption: str | None = None,
    ) -> None:
        """Log an image: a PNG/JPEG path, an (H, W[, C]) array, or a matplotlib figure."""
        raise NotImplementedError

    def log_table(self, key: str, columns: list[str], rows: list[list], images: Sequence[str] = (),
                  charts: Sequence[Any] = ()) -> None:  # fmt: skip
        """Log a table (e.g. FID per step count and eta). The columns named in ``images`` hold image files (or
        None), shown as images; each of ``charts`` (``key``, ``x``, ``y``, ``stroke``, ``title``: a
        ``bench.tracking.results.Chart``) is a native line chart of the table under its own key."""
        raise NotImplementedError

    def summary(self, values: dict) -> None:
        """Set run-summary values (final metrics)."""
        raise NotImplementedError

    def finish(self) -> None:
        """End the run; idempotent. Later calls on this tracker do nothing."""
        raise NotImplementedError

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()


class NullTracker(Tracker):
    """Tracking disabled: every call is a no-op and nothing touches the disk."""

    def __init__(self) -> None:
        self.mode = "disabled"
        self.run_dir = None

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_image(self, key: str, image: ImageLike, step: int | None = None, caption: str | None = None) -> None:
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list], images: Sequence[str] = (),
                  charts: Sequence[Any] = ()) -> None:  # fmt: skip
        pass

    def summary(self, values: dict) -> None:
        pass

    def finish(self) -> None:
        pass


class LazyTracker(Tracker):
    """Starts its run (``start()``) at the first call that records something, so a command that fails
    before producing anything (a missing dataset, a refused resume) leaves no empty run behind."""

    def __init__(self, start: Callable[[], Tracker]) -> None:
        self._start, self._real, self._closed = start, None, False
        self.mode, self.run_dir = "pending", None

    def _get(self) -> Tracker:
        if self._real is None and not self._closed:
            self._real = self._start()
            self.mode, self.run_dir = self._real.mode, self._real.run_dir
        return self._real if self._real is not None else NullTracker()

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._get().log(metrics, step)

    def log_image(self, key: str, image: ImageLike, step: int | None = None, caption: str | None = None) -> None:
        self._get().log_image(key, image, step, caption)

    def log_table(self, key: str, columns: list[str], rows: list[list], images: Sequence[str] = (),
                  charts: Sequence[Any] = ()) -> None:  # fmt: skip
        self._get().log_table(key, columns, rows, images, charts)

    def summary(self, values: dict) -> None:
        self._get().summary(values)

    def finish(self) -> None:
        self._closed = True
        if self._real is not None:
            self._real.finish()

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        if self._real is not None:
            self._real.__exit__(*exc)


class WandbTracker(Tracker):
    """A live W&B run (online or offline). Built by ``make_tracker``; wraps every call in a guard."""

    def __init__(self, run: Any, mode: str, warn: Callable[[str], None]) -> None:
        self._run = run
        self._warn = warn
        self._lock = threading.Lock()
        self._warned: set[str] = set()  # warning categories already shown
        self._active = True  # False after finish() or after the first failure
        self._last_step = -1
        self.mode = mode
        self.run_dir = Path(run.settings.sync_dir)

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
            data = [[wandb.Image(str(v)) if i in pics and v is not None else _plain(v) for i, v in enumerate(row)]
                    for row in rows]  # fmt: skip
            table = wandb.Table(columns=list(columns), data=data)
            lines = {c.key: wandb.plot.line(table, c.x, c.y, stroke=c.stroke, title=c.title) for c in charts}
            self._run.log({key: table, **lines})

        self._guarded("log_table", call)

    def summary(self, values: dict) -> None:
        self._guarded("summary", lambda: self._run.summary.update(_plain(values)))

    def finish(self) -> None:
        self._end(exit_code=0)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._end(exit_code=0 if exc_type is None else 1)

    def _end(self, exit_code: int) -> None:
        if self._run is None:
            return
        run, self._run, was_active = self._run, None, self._active
        self._active = False
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


# -- choosing a mode ------------------------------------------------------------------------------


# -- building a tracker ---------------------------------------------------------------------------


def _quiet_wandb() -> Any:
    """Import wandb with its terminal output silenced (process-wide settings; cheap to repeat)."""
    import wandb

    wandb.setup(settings=wandb.Settings(silent=True))
    return wandb


def make_tracker(
    mode: str | None,
    *,
    project: str = "ddimbench",
    name: str | None = None,
    group: str | None = None,
    job_type: str | None = None,
    config: dict | None = None,
    dir: str | Path = ".",
    tags: Iterable[str] | None = None,
    warn: Callable[[str], None] = _warn_stderr,
    lazy: bool = False,
) -> Tracker:
    """Start a run in ``mode`` (None: ``reach.default_mode()``), falling back online -> offline -> disabled.

    A fallback costs one line through ``warn`` (once per process for the same reason); nothing
    raises except an unknown mode (``DDIMError``). Online is tried only when a key is configured
    and the server answers a TCP probe, then with a bounded ``init_timeout``; a failure is
    remembered, so a dead network costs seconds once, not minutes per run. Runs are written under
    ``<dir>/wandb/``; every call starts a new run, so finish each one. ``lazy``: start the run only
    when something is first logged (``LazyTracker``).
    """
    requested = reach.default_mode() if mode is None else str(mode).strip().lower()
    if requested not in MODES:
        raise DDIMError(f"unknown tracking mode {mode!r}; choose one of {', '.join(MODES)}")
    if requested == "disabled":
        return NullTracker()
    if lazy:
        args = dict(project=project, name=name, group=group, job_type=job_type, config=config, dir=dir, tags=tags)
        return LazyTracker(lambda: make_tracker(requested, warn=warn, **args))

    reasons: list[str] = []
    reach.check_mode_env(warn)
    try:
        wandb = _quiet_wandb()
    except Exception as exc:
        warn(f"W&B: cannot load wandb ({one_line(exc)}); tracking disabled")
        return NullTracker()

    init_args = dict(
        project=project,
        name=name,
        group=group,
        job_type=job_type,
        config=_plain(config or {}),
        tags=[tags] if isinstance(tags, str) else list(tags) if tags is not None else None,
    )
    for attempt in ("online", "offline") if requested == "online" else ("offline",):
        base_url = ""
        try:
            if attempt == "online":
                base_url = _wandb_base_url(wandb)
                if problem := reach.server_problem(base_url):
                    reasons.append(f"online mode unavailable: {problem}")
                    continue
            tracker = WandbTracker(_init_run(wandb, attempt, Path(dir), init_args), attempt, warn)
        except Exception as exc:
            reasons.append(f"{attempt} init failed: {one_line(exc)}")
            if attempt == "online" and base_url:
                reach.online_failures[base_url] = f"online init failed earlier ({one_line(exc)})"
            continue
        if reasons:
            _warn_fallback(warn, reasons, f"logging offline to {tracker.run_dir} (`wandb sync` uploads it)")
        return tracker
    _warn_fallback(warn, reasons, "tracking disabled")
    return NullTracker()


_fallback_warnings: set[str] = set()  # fallback reasons already reported in this process


def _warn_fallback(warn: Callable[[str], None], reasons: list[str], outcome: str) -> None:
    """One line per distinct fallback per process: a sweep's 100 offline cells warn once."""
    key = f"{'; '.join(reasons)} -> {outcome.split()[0]}"
    if key not in _fallback_warnings:
        _fallback_warnings.add(key)
        warn(f"W&B: {'; '.join(reasons)}; {outcome}")


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


def _plain(value: Any) -> Any:
    """JSON-friendly copy: numpy/torch values to Python numbers and lists, dataclasses to dicts,
    anything else (Paths, dtypes) to str; every string with its URL passwords masked (``safe_url``)."""
    if isinstance(value, dict):
        return {safe_url(str(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value  # a str falls through to the masked str() below
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _plain(value.item())  # a numpy str_ is masked too
    if hasattr(value, "tolist"):  # numpy arrays, tensors
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        return _plain({f: getattr(value, f) for f in value.__dataclass_fields__})
    return safe_url(str(value))


def _log_has_exit(path: Path) -> bool:
    """Whether an offline run log already holds its exit record (written last by wandb-core)."""
    from wandb.proto import wandb_internal_pb2 as pb

    return tracking_log.log_has_exit(path, pb)


def read_offline_run(run_dir: str | Path) -> dict:
    """Decode an offline run directory's ``run-<id>.wandb`` log; see ``bench.tracking.offline_log``."""
    from wandb.proto import wandb_internal_pb2 as pb

    return tracking_log.decode_offline_run(run_dir, pb)
