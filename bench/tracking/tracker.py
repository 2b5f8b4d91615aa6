"""What the training loop, the sweep and the report see of tracking: the ``Tracker`` interface, the no-op
``NullTracker`` and ``LazyTracker``, which starts its run at the first record. The W&B tracker is in
``bench.tracking.wandb_run``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

    ImageLike = str | Path | np.ndarray | Figure


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

    def log_artifact(self, name: str, kind: str, paths: list[Path], upload: bool, aliases: Iterable[str] = ()
                     ) -> None:  # fmt: skip
        """Log ``paths`` as a new version of artifact ``name`` (type ``kind``), in the background."""
        raise NotImplementedError

    def use_artifact(self, name: str, kind: str, paths: list[Path], upload: bool = False) -> None:
        """Record that this run read artifact ``name`` made of ``paths`` (matched by digest)."""
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

    def log_artifact(self, name: str, kind: str, paths: list[Path], upload: bool, aliases: Iterable[str] = ()
                     ) -> None:  # fmt: skip
        pass

    def use_artifact(self, name: str, kind: str, paths: list[Path], upload: bool = False) -> None:
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

    def log_artifact(self, name: str, kind: str, paths: list[Path], upload: bool, aliases: Iterable[str] = ()
                     ) -> None:  # fmt: skip
        self._get().log_artifact(name, kind, paths, upload, aliases)

    def use_artifact(self, name: str, kind: str, paths: list[Path], upload: bool = False) -> None:
        self._get().use_artifact(name, kind, paths, upload)

    def finish(self) -> None:
        self._closed = True
        if self._real is not None:
            self._real.finish()

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        if self._real is not None:
            self._real.__exit__(*exc)
