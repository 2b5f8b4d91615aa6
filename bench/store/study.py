"""The sweep's schema in Optuna: the study's user attributes, and trials read back as records.

- study user attributes: ``protocol`` (what must match to add cells to the sweep: checkpoint sha256, n, seeds,
  dataset, extractor, metrics, T, mode), ``meta`` (the report's provenance: command, git commit, versions, device,
  ... of the run that created the study), ``run:<time>-<id>`` (command, device, git commit, time and grid of each
  later run: ``bench.store.runs``), ``spec`` (the latest run's resolved config) and ``grid:<digest>`` (each run's
  grid: ``bench.store.grids``), and ``extras`` (interpolation strip, inversion table);
- trial params (Optuna's own, so optuna-dashboard plots them): ``sampler`` and ``spacing``
  (categorical over the choices recorded in the study's ``param_choices``), ``steps`` and
  ``seed_block`` (int), ``eta`` (float, ddim cells only). A grid cell is an enqueued trial
  (``enqueue_cell``) whose params are read back through the suggest API (``queued_cell``);
- trial user attributes: ``cell`` (the cell's canonical key, also the claim that makes a cell run
  once), ``run`` (the token of the ``run_sweep`` call), ``pid``/``host`` (set first by a trial's objective:
  a RUNNING trial without them was stopped inside Optuna's ``ask``), each metric as its own
  attribute (``METRIC_ATTRS``: fid, isc_mean, isc_std, kid_mean, kid_std, nfe, wall_s,
  images_per_s), the rest of the ``bench.store.record.Measurement`` (grid paths, seeds, protocol hashes,
  device, versions) as ``result``; a failed cell has ``error``. Stores of the previous release (one
  categorical ``cell-<hash>`` param, every metric inside ``result``) are read the same way.

Stores written before the timestep spacing was called ``spacing`` everywhere name it ``schedule`` (the param,
the user attribute, the ``schedule=`` part of the cell key, ``param_choices`` and a search's ``protocol``);
they are migrated as they are read (``stored_key``, ``bench.store.renames``), so reports and reruns see one word.

``load_results`` turns trials into the report's records (``bench.store.record.CellRecord``, each attribute
read by the dataclasses' field names and types; a trial with an ill-typed one is left out, with a one-line
warning): PRUNED trials
(a duplicate that yielded), WAITING ones and ones stopped before the cell's fields were recorded are
skipped; a failure superseded by a later complete run of the same cell is dropped and counted in
``meta["superseded_trials"]``.
``meta["seeds"]`` is the union of the reported cells' seeds, and ``meta["runs"]``/``meta["last_run"]``
name the runs after the first (``bench.store.runs``).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
import time
import typing
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bench.store.axes import cell_problem
from bench.store.cell import Cell
from bench.store.grids import Grids, stored_grids
from bench.store.guard import ATTEMPTS, backoff, disk_full, readable_values, sqlite_path
from bench.store.record import CellRecord, Measurement, Protocol, Scores
from bench.store.renames import OLD_SPACING, current_key, current_names
from bench.store.runs import add_runs, record_run
from bench.store.same_sweep import check_same_sweep, migrated_protocol
from bench.store.storage import DEFAULT_STORAGE, open_storage
from bench.store.untrusted import redact, safe_url, stored_float, stored_int
from ddim.errors import DDIMError, printable

if TYPE_CHECKING:
    import optuna

_CELL_FIELDS = ("sampler", "steps", "spacing", "seed_block")  # set with "eta" right after the claim ("cell")
KILLED = "the worker stopped during this cell (killed, pre-empted or out of memory); rerun the sweep to retry it"


def load_study(name: str, storage: str | None, heartbeat: int | None = None, sampler: Any = None) -> optuna.Study:
    """An existing study, or a DDIMError that says how to create it."""
    import optuna

    url = storage or DEFAULT_STORAGE
    path = sqlite_path(url)  # the file, without the URL's ?options
    if path is not None and not path.exists():
        raise DDIMError(f"no sweep named {name!r}: the store {path} does not exist; run `ddimbench sweep "
                        f"name={name} ...` first, or pass the --storage it was run with")  # fmt: skip
    st = open_storage(url, heartbeat)
    try:
        return optuna.load_study(study_name=name, storage=st, sampler=sampler)
    except KeyError:
        shown = safe_url(storage or DEFAULT_STORAGE)
        raise DDIMError(f"no sweep named {name!r} in {shown}; run `ddimbench sweep name={name} ...` first") from None


def create_study(
    name: str, storage: str | None, heartbeat: int, protocol: Mapping[str, Any], meta: Mapping[str, Any],
    grid: str | None = None,
) -> optuna.Study:  # fmt: skip
    """Create the sweep's study once (or load it) and check that it is the same experiment; a later run is recorded
    with the digest of its ``grid`` (``bench.store.runs``).

    Grid sweeps minimise one value (FID); searches minimise (FID, cost). A study made with another
    checkpoint, n, seeds, extractor, metrics or mode is refused: its cells would not be comparable.
    """
    import optuna

    st = open_storage(storage, heartbeat)
    directions = ["minimize", "minimize"] if protocol["mode"] == "pareto" else ["minimize"]
    study = None
    for attempt in range(ATTEMPTS):
        try:
            study = optuna.create_study(study_name=name, storage=st, directions=directions, load_if_exists=True)
            break
        except Exception as exc:  # a concurrent creation by another machine (or a lock): load it on the next try
            where = safe_url(storage or DEFAULT_STORAGE)
            if disk_full(exc):
                raise DDIMError(
                    f"cannot create sweep {name!r} in {where}: the disk is full; free space, rerun"
                ) from None
            if attempt == ATTEMPTS - 1:
                raise DDIMError(
                    f"cannot create sweep {name!r} in {where} ({type(exc).__name__}); check --storage"
                ) from None
            time.sleep(backoff(attempt))
    assert study is not None
    old = migrated_protocol(study.user_attrs.get("protocol"))
    if "param_choices" not in study.user_attrs:  # fixed for the study's life: Optuna's categorical choices never change
        study.set_user_attr("param_choices", _param_choices())
    if old is None:
        study.set_user_attr("protocol", dict(protocol))
        study.set_user_attr("meta", dict(meta))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["fid", "cost"] if protocol["mode"] == "pareto" else ["fid"])
    else:
        first = (study.user_attrs.get("meta") or {}).get("checkpoint")
        check_same_sweep(name, old, first, protocol, meta.get("checkpoint"))
        record_run(study, meta, grid)  # ``meta`` stays the first run's
    return study


def stored_protocol(name: str, storage: str | None) -> tuple[dict[str, Any], Any] | None:
    """The stored sweep ``name``'s protocol and the checkpoint its first run used, read without creating anything;
    None when the store or the sweep does not exist yet (``sweep --dry-run``)."""
    import optuna

    url = storage or DEFAULT_STORAGE
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        return None
    with readable_values(url):
        protocol = migrated_protocol(study.user_attrs.get("protocol"))
        return None if protocol is None else (protocol, (study.user_attrs.get("meta") or {}).get("checkpoint"))


def stored_key(trial: optuna.trial.FrozenTrial) -> str | None:
    """The key of the cell a trial claims (None for none), in today's words (``current_key``)."""
    key = trial.user_attrs.get("cell")
    return current_key(key) if isinstance(key, str) and key else None


def _record(trial: optuna.trial.FrozenTrial) -> CellRecord | None:
    ua = current_names(trial.user_attrs)
    if stored_key(trial) is None or trial.state.name not in ("COMPLETE", "FAIL", "RUNNING"):
        return None
    # A trial stopped between claiming its cell and recording the cell's fields measured nothing and names no
    # cell to report; its "cell" claim alone makes ``cell_plan`` retry the cell.
    if any(ua.get(k) is None for k in _CELL_FIELDS):
        return None
    result = ua.get("result")
    result = result if isinstance(result, dict) else {}  # the rest of the measurement: one "result" attribute
    values = redact({**ua, **result})
    cell = _typed(Cell, values)
    if cell_problem(cell) is not None:  # η on σ̂, a ddim cell without η, S = 0, ...: no grid's cell, no table's
        raise _Malformed("cell")
    measured = bool(result) or any(ua.get(k) is not None for k in METRIC_ATTRS)
    error = _value("error", values.get("error"), str)
    if trial.state.name == "FAIL" and not error:
        error = KILLED
    return CellRecord(
        number=trial.number,
        state=trial.state.name,
        cell=cell,
        measurement=_typed(Measurement, values) if measured else None,
        error=error,
        interrupted=trial.state.name == "FAIL" and ua.get("interrupted") is True,
    )


class _Malformed(Exception):
    """A stored attribute of the wrong type, or a cell no grid has: a store edited by hand or by another program."""


@functools.cache
def _kinds(cls: type) -> dict[str, Any]:
    """{field: the type it holds (a dataclass, int, float, str, bool or Mapping)} of a record dataclass."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        kind = next((a for a in typing.get_args(hints[f.name]) if a is not type(None)), hints[f.name])
        out[f.name] = kind if dataclasses.is_dataclass(kind) else typing.get_origin(kind) or kind
    return out


def _typed(cls: type, values: Mapping[str, Any]) -> Any:
    """A record dataclass from a trial's attributes by field name (nested dataclasses from the same attributes)."""
    kwargs = {}
    for name, kind in _kinds(cls).items():
        kwargs[name] = _typed(kind, values) if dataclasses.is_dataclass(kind) else _value(name, values.get(name), kind)
    return cls(**kwargs)


def _value(name: str, v: Any, kind: type) -> Any:
    """A stored attribute as ``kind`` (None stays None; a whole float is an int), else ``_Malformed``."""
    if v is None:
        return None
    number = stored_float(v) if kind is float else stored_int(v) if kind is int else None
    if number is not None:
        return number
    if (kind in (str, bool) and isinstance(v, kind)) or (kind is Mapping and isinstance(v, Mapping)):
        return v
    raise _Malformed(name)


def _flat(obj: Any) -> dict[str, Any]:
    """A record dataclass as its stored attributes: every leaf field by name (nested dataclasses inlined)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out.update(_flat(v) if dataclasses.is_dataclass(v) else {f.name: v})
    return out


def records_of(study: optuna.Study, malformed: list[int] | None = None) -> tuple[list[CellRecord], int]:
    """(records, number of superseded failures) of a study, ordered by trial number. A trial whose stored fields
    have the wrong types is left out; its number is appended to ``malformed``."""
    trials = study.get_trials(deepcopy=False)
    cells = {t.number: c for t in trials if (c := stored_key(t))}
    complete = {cells[t.number] for t in trials if t.state.name == "COMPLETE" and t.number in cells}
    kept, superseded = [], 0
    for t in trials:
        cell = cells.get(t.number)
        if cell and t.state.name in ("FAIL", "RUNNING") and cell in complete:
            superseded += 1  # a try of a cell measured since (also one stopped before its fields were recorded)
        else:
            try:
                r = _record(t)
            except _Malformed:
                if malformed is not None:
                    malformed.append(t.number)
                continue
            if r is not None:
                kept.append(r)
    if len(study.directions) == 2:
        front = {t.number for t in study.best_trials}
        kept = [dataclasses.replace(r, pareto=r.number in front) for r in kept]
    return kept, superseded


Sweep = tuple[str, Sequence[CellRecord], Mapping]  # (name, records, meta): a sweep as ``load_results`` reads it


def load_results(
    name: str, storage: str | None = None, grids: list[Grids] | None = None
) -> tuple[list[CellRecord], dict, dict]:
    """(records, meta, extras) of a sweep, straight from the store (no recomputation); the grids of its runs
    (``bench.store.grids.stored_grids``; none for a search) are appended to ``grids``.

    Every string is passed through ``redact`` (the records' as they are read, ``_record``): a study written
    before credentials were masked (or by another tool) cannot put a password into a report or a W&B run. A value
    JSON cannot read back is a one-line DDIMError (``bench.store.guard.readable_values``).
    """
    with readable_values(storage or DEFAULT_STORAGE):
        return _results(name, storage, grids)


def _results(name: str, storage: str | None, grids: list[Grids] | None) -> tuple[list[CellRecord], dict, dict]:
    study = load_study(name, storage)
    ignored: list[str] = []
    stored = stored_grids(study.user_attrs, ignored)
    _left_out(ignored, f"stored grid(s) of {name!r} are none `ddimbench sweep` could have run")
    if grids is not None:
        grids.append(stored)
    malformed: list[int] = []
    records, superseded = records_of(study, malformed)
    _left_out([f"#{n}" for n in malformed], f"trial(s) of {name!r} hold fields of the wrong type or no grid's cell")
    meta = study.user_attrs.get("meta")
    meta = redact(dict(meta)) if isinstance(meta, dict) else {}
    if meta.get("mode") == "pareto" and not meta.get("objective"):  # a search made before meta named its cost
        meta["objective"] = (study.user_attrs.get("protocol", {}).get("space") or {}).get("objective")
    # Protocol hashes known only after the first measured cell: take them from the cells.
    for f in dataclasses.fields(Protocol):
        if meta.get(f.name) is None:
            known = (getattr(r.measured.protocol, f.name) for r in records if r.state == "COMPLETE")
            value = next((v for v in known if v), None)
            if value is not None or f.name in meta:  # no "precision: —" row for a float32 sweep
                meta[f.name] = value
    # The seeds behind the reported cells (the first run's meta names only that run's seed blocks).
    seeds = _seeds_text(r.measured.seeds for r in records)
    if seeds:
        meta["seeds"] = seeds
    add_runs(meta, study.user_attrs)
    if superseded:
        meta["superseded_trials"] = superseded
    extras = study.user_attrs.get("extras")
    extras = {k: v for k, v in redact(dict(extras)).items() if k != "key"} if isinstance(extras, dict) else {}
    return records, meta, extras


def _left_out(items: Sequence[str], what: str) -> None:
    """One warning line naming ``items`` (the first five) of an edited store, which the report leaves out."""
    if items:
        listed = ", ".join(i[:120] for i in items[:5]) + (", …" if len(items) > 5 else "")
        print(printable(f"warning: {len(items)} {what} (edited store?) and are left out: {listed}"), file=sys.stderr)


def _seeds_text(ranges: Any) -> str | None:
    """The union of per-cell seed ranges, ordered like ``provenance.seeds_text``: ``0-19, 20-39``."""

    def order(text: str) -> tuple:
        m = re.fullmatch(r"(\d+)-(\d+)", text)
        return (0, int(m[1]), int(m[2]), "") if m else (1, 0, 0, text)

    return ", ".join(sorted({str(x) for x in ranges if x}, key=order)) or None


# ----------------------------------------------------------------------------- writing a cell's trial
# Each its own trial attribute (optuna-dashboard shows them); the rest of a measurement is the ``result`` attribute.
METRIC_ATTRS = (*(f.name for f in dataclasses.fields(Scores)), "nfe", "wall_s", "images_per_s")


def _param_choices() -> dict[str, list[str]]:
    from ddim.sampling import SAMPLERS
    from ddim.schedules import SPACINGS

    return {"sampler": list(SAMPLERS), "spacing": list(SPACINGS)}


def cell_params(cell: Cell) -> dict[str, Any]:
    """The Optuna params of a cell (η only where the sampler has one)."""
    out: dict[str, Any] = {"sampler": cell.sampler, "spacing": cell.spacing, "steps": cell.steps}
    if cell.eta is not None:
        out["eta"] = cell.eta
    return {**out, "seed_block": cell.seed_block}


def enqueue_cell(study: optuna.Study, cell: Cell) -> None:
    """Queue a grid cell as a trial whose params are the cell's; the next free worker pops it."""
    study.enqueue_trial(cell_params(cell), user_attrs={"cell": cell.key})


def queued_cell(trial: optuna.Trial, T: int) -> Cell | None:
    """The grid cell a popped trial was queued for (None for a trial nobody queued), with its params set
    through the suggest API so the trial carries S, η, ... as numbers."""
    key = stored_key(trial)
    if not key:
        return None
    want = Cell.from_key(key)
    choices = current_names(trial.study.user_attrs.get("param_choices") or _param_choices())
    for name in ("sampler", "spacing"):
        if getattr(want, name) not in choices[name]:
            raise DDIMError(f"this sweep's store predates {name} {getattr(want, name)!r}; run it under a new name=")
    # A trial an earlier release queued has its spacing fixed under that release's param name.
    legacy = key != trial.user_attrs["cell"]
    sampler = trial.suggest_categorical("sampler", choices["sampler"])
    spacing = trial.suggest_categorical(OLD_SPACING if legacy else "spacing", choices["spacing"])
    steps = trial.suggest_int("steps", 1, max(T, want.steps))
    eta = None if want.eta is None else trial.suggest_float("eta", 0.0, max(1.0, want.eta))
    block = trial.suggest_int("seed_block", 0, max(1, want.seed_block))
    got = Cell(sampler, spacing, steps, eta, block)
    if got.key != key:
        raise DDIMError(f"queued trial #{trial.number} holds {got.key!r}, not its cell {key!r}; rerun the sweep")
    return got


def claim(trial: optuna.Trial, cell: Cell, attrs: Mapping[str, Any]) -> int | None:
    """Claim ``cell`` for ``trial``, then read the store: the number of another live or finished holder
    (this trial must yield), or None. Claiming before reading means two trials never both go on."""
    from optuna.trial import TrialState

    trial.set_user_attr("cell", cell.key)
    storage = trial.storage
    study_id = storage.get_study_id_from_name(trial.study.study_name)
    holders = [
        t.number
        for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE))
        if t.number != trial.number and stored_key(t) == cell.key
    ]
    if holders:
        return min(holders)
    for k, v in {**attrs, **cell.fields()}.items():
        trial.set_user_attr(k, v)
    return None


def save_result(trial: optuna.Trial, measurement: Measurement) -> None:
    """A measured cell: each metric its own attribute, the rest of the measurement as ``result``."""
    flat = _flat(measurement)
    for k in METRIC_ATTRS:
        if flat[k] is not None:
            trial.set_user_attr(k, flat[k])
    trial.set_user_attr("result", {k: v for k, v in flat.items() if k not in METRIC_ATTRS})


def save_error(trial: optuna.Trial, message: str, interrupted: bool = False) -> None:
    """A cell that failed (``interrupted``: stopped by Ctrl-C / SIGTERM, not its own fault, so retried)."""
    if interrupted:
        trial.set_user_attr("interrupted", True)
    trial.set_user_attr("error", message)
