"""The sweep store: one Optuna study per sweep name in an RDB storage, and reading results back.

Storage: any Optuna RDB URL. The default, ``sqlite:///ddimbench-sweeps.db``, is a SQLite file in the
working directory (fine for workers on one machine); many machines share a PostgreSQL database
(``postgresql+psycopg2://user:password@host:5432/db``). Trials are written with an Optuna
heartbeat, so a worker that dies mid-cell leaves a RUNNING trial that goes stale and is retried.

What is stored (everything JSON-able, readable with ``optuna-dashboard URL``):

- study user attributes: ``protocol`` (what must match to add cells to the sweep: checkpoint
  sha256, n, seeds, dataset, extractor, metrics, T, mode), ``meta`` (the report's provenance:
  command, git commit, versions, device, ... of the run that created the study), ``run:<time>-<id>``
  (command, device, git commit and time of each later run), ``spec`` (the latest run's resolved
  config) and ``extras`` (interpolation strip, inversion table);
- trial user attributes: ``cell`` (the cell's canonical key, also the claim that makes a cell run
  once), ``run`` (the token of the ``run_sweep`` call), ``pid``/``host``, and on completion every
  record field (metrics, NFE, wall time, images/s, grid paths, protocol hashes, device); a failed
  cell has ``error``.

``load_results`` turns trials into the report's records (see ``bench.report.write``): PRUNED trials (a
duplicate that yielded), WAITING ones and ones stopped before the cell's fields were recorded are
skipped; a failure superseded by a later complete run of the same cell is dropped and counted in
``meta["superseded_trials"]``. ``meta["seeds"]`` is the union of the reported cells' seeds, and
``meta["runs"]``/``meta["last_run"]`` name the runs after the first.
"""

from __future__ import annotations

import re
import sys
import time
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddim.errors import DDIMError

if TYPE_CHECKING:
    import optuna

DEFAULT_STORAGE = "sqlite:///ddimbench-sweeps.db"
GRACE_FACTOR = 4  # a trial is stale after GRACE_FACTOR heartbeats without a beat
RECORD_FIELDS = (
    "sampler", "steps", "eta", "schedule", "seed_block", "nfe", "fid", "isc_mean", "isc_std", "kid_mean", "kid_std",
    "wall_s", "images_per_s", "n", "seeds", "grid", "strip", "error", "checkpoint_sha256", "extractor",
    "extractor_sha256", "ref_key", "ref_sha256", "device",
)  # fmt: skip
TABLE_COLUMNS = ("number", "state", "schedule", "sampler", "eta", "steps", "seed_block", "nfe", "fid", "isc_mean",
                 "kid_mean", "wall_s", "images_per_s", "error")  # fmt: skip
_PROTOCOL_META = ("checkpoint_sha256", "extractor_sha256", "ref_key", "ref_sha256")
_CELL_FIELDS = ("sampler", "steps", "schedule", "seed_block")  # set with "eta" right after the claim ("cell")
_RUN_PREFIX = "run:"  # study user attribute of each run after the first (see ``create_study``)
_RUN_FIELDS = ("command", "device", "git_commit", "created")
KILLED = "the worker stopped during this cell (killed, pre-empted or out of memory); rerun the sweep to retry it"


def safe_url(url: str) -> str:
    """The URL with any password masked, for messages."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


_OPEN: dict[tuple[str, int | None], Any] = {}


def _with_driver(url: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2; use psycopg2 when only that driver is installed."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        if importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def open_storage(url: str | None = None, heartbeat: int | None = None) -> optuna.storages.RDBStorage:
    """An RDB storage (``heartbeat`` seconds between beats, or none for read-only use).

    An unreachable server, a missing driver or a bad URL is a one-line DDIMError.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own progress and errors are shown instead
    url = _with_driver(url or DEFAULT_STORAGE)
    shown = safe_url(url)
    fix = "check --storage (e.g. postgresql+psycopg2://user:pw@host/db) or omit it for the local SQLite file"
    if "://" not in url:
        raise DDIMError(f"storage {shown!r} is not a database URL; {fix}")
    if url.startswith("sqlite"):
        engine = {"connect_args": {"timeout": 60}}  # several local workers share one file
    else:
        engine = {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            engine["connect_args"] = {"connect_timeout": 10}
    memo = (url, heartbeat or None)
    if memo in _OPEN:  # one engine (and connection pool) per storage and process
        return _OPEN[memo]
    beat = {}
    if heartbeat:
        beat = {"heartbeat_interval": int(heartbeat), "grace_period": GRACE_FACTOR * int(heartbeat)}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat options
                _OPEN[memo] = optuna.storages.RDBStorage(url, engine_kwargs=engine, **beat)
                if url.startswith("sqlite"):
                    _fast_sqlite(_OPEN[memo])
                return _OPEN[memo]
        except ModuleNotFoundError as exc:
            raise DDIMError(
                f"storage {shown}: the database driver {exc.name!r} is not installed; "
                "pip install psycopg2-binary (PostgreSQL) or use a sqlite:/// URL"
            ) from None
        except Exception as exc:  # sqlalchemy raises many kinds: OperationalError, ArgumentError, ...
            text = str(exc).strip().splitlines()
            reason = f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__
            # Two processes creating the tables at once race ("already exists"): retry.
            if "already exists" in reason and attempt < 2:
                time.sleep(0.5 + attempt)
                continue
            raise DDIMError(f"cannot open sweep storage {shown} ({reason}); {fix}") from None
    raise AssertionError("unreachable")


def _fast_sqlite(storage: Any) -> None:
    """WAL journal + synchronous=NORMAL: a commit no longer waits for two fsyncs (a trial makes dozens).

    Still safe for several processes on one machine; a power cut can lose the last commits, which a
    rerun simply measures again.
    """
    from sqlalchemy import event

    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # connections opened while creating the tables get the pragmas too


def load_study(name: str, storage: str | None, heartbeat: int | None = None, sampler: Any = None) -> optuna.Study:
    """An existing study, or a DDIMError that says how to create it."""
    import optuna

    url = storage or DEFAULT_STORAGE
    path = url.removeprefix("sqlite:///")
    if url.startswith("sqlite:///") and path and path != ":memory:" and not Path(path).exists():
        raise DDIMError(f"no sweep named {name!r}: the store {path} does not exist; run `ddimbench sweep "
                        f"name={name} ...` first, or pass the --storage it was run with")  # fmt: skip
    st = open_storage(url, heartbeat)
    try:
        return optuna.load_study(study_name=name, storage=st, sampler=sampler)
    except KeyError:
        shown = safe_url(storage or DEFAULT_STORAGE)
        raise DDIMError(f"no sweep named {name!r} in {shown}; run `ddimbench sweep name={name} ...` first") from None


def create_study(
    name: str, storage: str | None, heartbeat: int, protocol: Mapping[str, Any], meta: Mapping[str, Any]
) -> optuna.Study:
    """Create the sweep's study once (or load it) and check that it is the same experiment.

    Grid sweeps minimise one value (FID); searches minimise (FID, cost). A study made with another
    checkpoint, n, seeds, extractor, metrics or mode is refused: its cells would not be comparable.
    """
    import optuna

    st = open_storage(storage, heartbeat)
    directions = ["minimize", "minimize"] if protocol["mode"] == "pareto" else ["minimize"]
    study = None
    for attempt in range(3):
        try:
            study = optuna.create_study(study_name=name, storage=st, directions=directions, load_if_exists=True)
            break
        except Exception as exc:  # a concurrent creation by another machine: load it on the next try
            if attempt == 2:
                where = safe_url(storage or DEFAULT_STORAGE)
                raise DDIMError(
                    f"cannot create sweep {name!r} in {where} ({type(exc).__name__}); check --storage"
                ) from None
            time.sleep(0.5 + attempt)
    assert study is not None
    old = study.user_attrs.get("protocol")
    if old is None:
        study.set_user_attr("protocol", dict(protocol))
        study.set_user_attr("meta", dict(meta))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["fid", "cost"] if protocol["mode"] == "pareto" else ["fid"])
    else:
        for key, value in protocol.items():
            if old.get(key) != value:
                raise DDIMError(
                    f"sweep {name!r} was run with {key}={old.get(key)!r}, not {value!r}; "
                    "rerun with the same settings or choose another name="
                )
        # ``meta`` stays the first run's; each later run is recorded under its own key (an insert, so runs
        # started at once on several machines cannot overwrite each other), named so that keys sort by time.
        run = {k: meta.get(k) for k in _RUN_FIELDS}
        study.set_user_attr(f"{_RUN_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}", run)
    return study


def _record(trial: optuna.trial.FrozenTrial) -> dict[str, Any] | None:
    ua = trial.user_attrs
    if not ua.get("cell") or trial.state.name not in ("COMPLETE", "FAIL", "RUNNING"):
        return None
    # A trial stopped between claiming its cell and recording the cell's fields measured nothing and names no
    # cell to report; its "cell" claim alone makes ``cell_plan`` retry the cell.
    if any(ua.get(k) is None for k in _CELL_FIELDS) or (ua["sampler"] == "ddim" and ua.get("eta") is None):
        return None
    rec: dict[str, Any] = {"number": trial.number, "state": trial.state.name}
    values = {**ua, **(ua.get("result") or {})}  # the measurements are stored as one "result" attribute
    rec.update({k: values.get(k) for k in RECORD_FIELDS})
    if trial.state.name == "FAIL" and not rec["error"]:
        rec["error"] = KILLED
    return rec


def records_of(study: optuna.Study) -> tuple[list[dict[str, Any]], int]:
    """(records, number of superseded failures) of a study, ordered by trial number."""
    trials = study.get_trials(deepcopy=False)
    complete = {t.user_attrs["cell"] for t in trials if t.state.name == "COMPLETE" and t.user_attrs.get("cell")}
    kept, superseded = [], 0
    for t in trials:
        cell = t.user_attrs.get("cell")
        if cell and t.state.name in ("FAIL", "RUNNING") and cell in complete:
            superseded += 1  # a try of a cell measured since (also one stopped before its fields were recorded)
        elif (r := _record(t)) is not None:
            kept.append(r)
    if len(study.directions) == 2:
        front = {t.number for t in study.best_trials}
        for r in kept:
            r["pareto"] = r["number"] in front
    return kept, superseded


def load_results(name: str, storage: str | None = None) -> tuple[list[dict], dict, dict]:
    """(records, meta, extras) of a sweep, straight from the store (no recomputation)."""
    study = load_study(name, storage)
    records, superseded = records_of(study)
    meta = dict(study.user_attrs.get("meta", {}))
    # Protocol hashes known only after the first measured cell: take them from the cells.
    for key in _PROTOCOL_META:
        if meta.get(key) is None:
            meta[key] = next((r[key] for r in records if r["state"] == "COMPLETE" and r.get(key)), None)
    # The seeds behind the reported cells (the first run's meta names only that run's seed blocks).
    seeds = _seeds_text(r.get("seeds") for r in records)
    if seeds:
        meta["seeds"] = seeds
    runs = [v for k, v in sorted(study.user_attrs.items()) if k.startswith(_RUN_PREFIX) and isinstance(v, dict)]
    if runs:
        meta["runs"] = 1 + len(runs)
        meta["last_run"] = {k: runs[-1].get(k) for k in _RUN_FIELDS}
    if superseded:
        meta["superseded_trials"] = superseded
    extras = {k: v for k, v in dict(study.user_attrs.get("extras", {})).items() if k != "key"}
    return records, meta, extras


def _seeds_text(ranges: Any) -> str | None:
    """The union of per-cell seed ranges, ordered like ``provenance.seeds_text``: ``0-19, 20-39``."""

    def order(text: str) -> tuple:
        m = re.fullmatch(r"(\d+)-(\d+)", text)
        return (0, int(m[1]), int(m[2]), "") if m else (1, 0, 0, text)

    return ", ".join(sorted({str(x) for x in ranges if x}, key=order)) or None


def table_rows(records: list[dict]) -> list[list]:
    """Rows of ``TABLE_COLUMNS`` for a W&B table."""
    return [[r.get(c) for c in TABLE_COLUMNS] for r in records]


def make_report(
    name: str,
    *,
    storage: str | None = None,
    out: str | Path | None = None,
    compare_paper: str | None = None,
    wandb: str | None = None,
) -> Path:
    """Write ``reports/<name>/`` (or ``out``) from the stored results; returns the folder.

    Sample grids are read from the sweep's artifacts folder; a grid made on another machine (not
    present here) is left out with a warning. With tracking on, the table and figures are logged
    as a ``report`` run in the sweep's W&B group.
    """
    from bench.sweep.provenance import tracked
    from bench.report.write import write_report

    records, meta, extras = load_results(name, storage)
    root = Path(meta.get("artifacts") or Path("ddimbench-sweeps") / name)
    missing = 0
    for r in records:
        for key in ("grid", "strip"):
            if r.get(key) and not (root / r[key]).is_file():
                r[key], missing = None, missing + 1
    if extras.get("interpolation") and not (root / extras["interpolation"]).is_file():
        extras.pop("interpolation")
        missing += 1
    if missing:
        print(f"warning: {missing} sample image(s) of {name!r} are not under {root} (made on another machine?); "
              "the report leaves them out", file=sys.stderr)  # fmt: skip
    folder = Path(out) if out is not None else Path("reports") / name
    metrics = meta.get("metrics") or ("fid", "isc", "kid")
    written = write_report(
        records, meta, folder, root=root, extras=extras, compare_paper=compare_paper, metrics=metrics
    )

    def body(tracker: Any) -> None:
        tracker.log_table("results", list(TABLE_COLUMNS), table_rows(records))
        for rel, path in written.items():
            if rel.endswith(".png") and "/" not in rel:  # the figures, not every grid
                tracker.log_image(rel.removesuffix(".png"), path)

    warn = lambda line: print(f"warning: {line}", file=sys.stderr)  # noqa: E731
    tracked(wandb, warn, "the report", body, name=f"{name}-report", group=name, job_type="report", config=meta,
             dir=root)  # fmt: skip
    return folder


# ----------------------------------------------------------------------- how the cells of a grid stand
MAX_ATTEMPTS = 3  # kills of one cell tolerated per run before it is reported failed


@dataclass
class CellPlan:
    """Where each cell of a grid stands (``cell_plan``)."""

    done: int = 0
    failed: int = 0
    waiting: int = 0
    fresh: list[str] = field(default_factory=list)
    retry: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)


def _states() -> Any:
    from optuna.trial import TrialState

    return TrialState


def _weight(trial: Any) -> int:
    """How much a failed trial counts towards MAX_ATTEMPTS: an error of the cell's own is final; a kill or an
    interruption (Ctrl-C / SIGTERM of that worker) counts once, so the other workers retry the cell."""
    ua = trial.user_attrs
    return MAX_ATTEMPTS if ua.get("error") and not ua.get("interrupted") else 1


def cell_plan(trials: list, keys: list[str], token: str) -> CellPlan:
    """Sort the grid's cells by their trials: done (COMPLETE), running, queued (WAITING), fresh (no
    trial), failed in this run (an error, or MAX_ATTEMPTS kills) or to retry (only failures of
    earlier runs, kills below the limit, or duplicates that yielded)."""
    from optuna.trial import TrialState as S

    by_cell: dict[str, list] = {}
    for t in trials:
        if t.user_attrs.get("cell"):
            by_cell.setdefault(t.user_attrs["cell"], []).append(t)
    plan = CellPlan()
    for key in keys:
        ts = by_cell.get(key, [])
        states = {t.state for t in ts}
        if S.COMPLETE in states:
            plan.done += 1
        elif S.RUNNING in states:
            plan.running.append(key)
        elif S.WAITING in states:
            plan.waiting += 1
        elif not ts:
            plan.fresh.append(key)
        else:  # only FAIL / PRUNED trials: failures of this run count, an error counts as final
            mine = [t for t in ts if t.state == S.FAIL and t.user_attrs.get("run") == token]
            if sum(_weight(t) for t in mine) >= MAX_ATTEMPTS:
                plan.failed += 1
            else:
                plan.retry.append(key)
    return plan
