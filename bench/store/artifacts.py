"""Sample images in an Optuna artifact store: each measured cell's grid and strip belong to its trial.

A cell's images are written to the artifacts folder of the machine that measured it
(``cells/<cell>.png``); ``upload_images`` also puts them in an Optuna artifact store and records them
on the cell's trial, where optuna-dashboard shows them, and ``fetch_missing`` gets them back for a
report made on a machine that lacks them. The store is a folder (``FileSystemArtifactStore``):
``$DDIMBENCH_ARTIFACT_STORE`` when set — a folder all machines mount, so every machine's report and
dashboard has every machine's grids — else ``<the sweep's artifacts folder>/optuna-artifacts``.

What comes back from the store is untrusted: only a PNG named like the record's own file is taken,
and it is written only inside the artifacts folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from bench.store.record import CellRecord, Measurement
from bench.store.storage import open_storage
from bench.store.untrusted import PNG_SIGNATURE
from ddim.errors import DDIMError

if TYPE_CHECKING:
    import optuna

ENV = "DDIMBENCH_ARTIFACT_STORE"
FOLDER = "optuna-artifacts"  # the default store, inside the sweep's artifacts folder
MAX_BYTES = 64 << 20  # no sample grid is near this; a larger "grid" is not one


def store_path(artifacts: str | os.PathLike) -> Path:
    """The artifact store's folder for a sweep whose artifacts folder is ``artifacts``."""
    env = os.environ.get(ENV, "").strip()
    return Path(env) if env else Path(artifacts) / FOLDER


def open_store(artifacts: str | os.PathLike, create: bool = False) -> optuna.artifacts.FileSystemArtifactStore:
    """The sweep's artifact store (``create``: make its folder, or a one-line DDIMError)."""
    from optuna.artifacts import FileSystemArtifactStore

    path = store_path(artifacts)
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fix = f"set {ENV} to a writable folder" if os.environ.get(ENV, "").strip() else "choose another artifacts="
            raise DDIMError(f"artifact store {path} cannot be created ({exc.strerror or exc}); {fix}") from None
    return FileSystemArtifactStore(path)


def upload_images(trial: optuna.Trial, store: Any, root: str | os.PathLike, measurement: Measurement) -> list[str]:
    """Upload the cell's grid and strip (relative paths under ``root``) as artifacts of ``trial``; returns
    their artifact ids. Called right after ``bench.store.study.save_result``."""
    from optuna.artifacts import upload_artifact

    paths = [Path(root) / rel for rel in measurement.images]
    return [upload_artifact(artifact_store=store, file_path=str(p), study_or_trial=trial) for p in paths]


def _inside(root: Path, rel: Any) -> Path | None:
    """``root / rel`` when ``rel`` is a plain relative path that stays inside ``root``, else None."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        return None
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or any(p in ("", ".", "..") for p in parts):
        return None
    path = root.joinpath(*parts)
    return path if path.resolve().is_relative_to(root.resolve()) else None


def _read_png(store: Any, artifact_id: str) -> bytes | None:
    from optuna.artifacts.exceptions import ArtifactNotFound

    try:
        with store.open_reader(artifact_id) as f:
            data = f.read(MAX_BYTES + 1)
    except (ArtifactNotFound, ValueError, OSError):  # ValueError: an id that would leave the store's folder
        return None
    return data if data.startswith(PNG_SIGNATURE) and len(data) <= MAX_BYTES else None


def fetch_missing(
    name: str, storage: str | None, records: Iterable[CellRecord], root: str | os.PathLike, store: Any | None = None
) -> int:
    """Download from the artifact store each record's grid/strip that is not under ``root``; returns how many
    were written. Images the store does not hold (or holds as something other than a PNG) stay missing."""
    from optuna.artifacts import get_all_artifact_meta

    root = Path(root)
    wanted: dict[int, list[tuple[str, Path]]] = {}
    for r in records:
        for rel in r.measured.images:
            dest = _inside(root, rel)
            if dest is not None and not dest.is_file():
                wanted.setdefault(r.number, []).append((dest.name, dest))
    if not wanted:
        return 0
    if store is None:
        if not store_path(root).is_dir():
            return 0
        store = open_store(root)
    from ddim.files import atomic_write

    rdb = open_storage(storage)
    study_id = rdb.get_study_id_from_name(name)
    fetched = 0
    for trial in rdb.get_all_trials(study_id, deepcopy=False):
        if trial.number not in wanted:
            continue
        metas = {m.filename: m for m in get_all_artifact_meta(trial, storage=rdb)}
        for filename, dest in wanted[trial.number]:
            meta = metas.get(filename)
            data = _read_png(store, meta.artifact_id) if meta is not None else None
            if data is None:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(dest, lambda f, data=data: f.write(data))
            fetched += 1
    return fetched
