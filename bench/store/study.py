"""The sweep's schema in Optuna: the study's user attributes, and trials read back as records.

- study user attributes: ``protocol`` (what must match to add cells to the sweep: checkpoint
  sha256, n, seeds, dataset, extractor, metrics, T, mode), ``meta`` (the report's provenance:
  command, git commit, versions, device, ... of the run that created the study), ``run:<time>-<id>``
  (command, device, git commit and time of each later run), ``spec`` (the latest run's resolved
  config) and ``extras`` (interpolation strip, inversion table);
- trial params (Optuna's own, so optuna-dashboard plots them): ``sampler`` and ``schedule``
  (categorical over the choices recorded in the study's ``param_choices``), ``steps`` and
  ``seed_block`` (int), ``eta`` (float, ddim cells only). A grid cell is an enqueued trial
  (``enqueue_cell``) whose params are read back through the suggest API (``queued_cell``);
- trial user attributes: ``cell`` (the cell's canonical key, also the claim that makes a cell run
  once), ``run`` (the token of the ``run_sweep`` call), ``pid``/``host``, each metric as its own
  attribute (``METRIC_ATTRS``: fid, isc_mean, isc_std, kid_mean, kid_std, nfe, wall_s,
  images_per_s), the rest of the record (grid paths, seeds, protocol hashes, device) as ``result``;
  a failed cell has ``error``. Stores of the previous release (one categorical ``cell-<hash>``
  param, every metric inside ``result``) are read the same way.

``load_results`` turns trials into the report's records: PRUNED trials (a duplicate that yielded),
WAITING ones and ones stopped before the cell's fields were recorded are skipped; a failure superseded
by a later complete run of the same cell is dropped and counted in ``meta["superseded_trials"]``.
``meta["seeds"]`` is the union of the reported cells' seeds, and ``meta["runs"]``/``meta["last_run"]``
name the runs after the first.
"""

from __future__ import annotations

import numbers
import re
import sys
import time
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.store.cell import Cell
from bench.store.guard import ATTEMPTS, backoff
from bench.store.storage import DEFAULT_STORAGE, open_storage
from bench.store.untrusted import redact, safe_url
from ddim.errors import DDIMError

if TYPE_CHECKING:
    import optuna

RECORD_FIELDS = (
    "sampler", "steps", "eta", "schedule", "seed_block", "nfe", "fid", "isc_mean", "isc_std", "kid_mean", "kid_std",
    "wall_s", "images_per_s", "n", "seeds", "grid", "strip", "error", "checkpoint_sha256", "extractor",
    "extractor_sha256", "ref_key", "ref_sha256", "device",
)  # fmt: skip
# KID has one scale wherever it leaves the store: ×10³ (tables, results.csv, manifest.json, the terminal and
# W&B), named so in every header and key; the store keeps torch-fidelity's raw value (``kid_mean``).
KID_SCALE = 1000.0
KID_SHOWN = {"kid_mean": "kid_mean_x1e3", "kid_std": "kid_std_x1e3"}  # record field -> shown field
# The W&B tables' columns (``table_rows``): KID ×10³, as everywhere it is shown.
TABLE_COLUMNS = ("number", "state", "schedule", "sampler", "eta", "steps", "seed_block", "nfe", "fid", "isc_mean",
                 "kid_mean_x1e3", "wall_s", "images_per_s", "error")  # fmt: skip
PROTOCOL_META = ("checkpoint_sha256", "extractor_sha256", "ref_key", "ref_sha256")
_CELL_FIELDS = ("sampler", "steps", "schedule", "seed_block")  # set with "eta" right after the claim ("cell")
_RUN_PREFIX = "run:"  # study user attribute of each run after the first (see ``create_study``)
_RUN_FIELDS = ("command", "device", "git_commit", "created")
KILLED = "the worker stopped during this cell (killed, pre-empted or out of memory); rerun the sweep to retry it"


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
    for attempt in range(ATTEMPTS):
        try:
            study = optuna.create_study(study_name=name, storage=st, directions=directions, load_if_exists=True)
            break
        except Exception as exc:  # a concurrent creation by another machine: load it on the next try
            if attempt == ATTEMPTS - 1:
                where = safe_url(storage or DEFAULT_STORAGE)
                raise DDIMError(
                    f"cannot create sweep {name!r} in {where} ({type(exc).__name__}); check --storage"
                ) from None
            time.sleep(backoff(attempt))
    assert study is not None
    old = study.user_attrs.get("protocol")
    if "param_choices" not in study.user_attrs:  # fixed for the study's life: Optuna's categorical choices never change
        study.set_user_attr("param_choices", _param_choices())
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
    if not isinstance(ua.get("cell"), str) or not ua["cell"] or trial.state.name not in ("COMPLETE", "FAIL", "RUNNING"):
        return None
    # A trial stopped between claiming its cell and recording the cell's fields measured nothing and names no
    # cell to report; its "cell" claim alone makes ``cell_plan`` retry the cell.
    if any(ua.get(k) is None for k in _CELL_FIELDS) or (ua["sampler"] == "ddim" and ua.get("eta") is None):
        return None
    rec: dict[str, Any] = {"number": trial.number, "state": trial.state.name}
    result = ua.get("result")
    values = {**ua, **(result if isinstance(result, dict) else {})}  # the measurements: one "result" attribute
    rec.update({k: values.get(k) for k in RECORD_FIELDS})
    if trial.state.name == "FAIL" and not rec["error"]:
        rec["error"] = KILLED
    return rec


_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("sampler", "schedule"), (str,)),
    **dict.fromkeys(("steps", "seed_block", "nfe", "n"), (int,)),
    **dict.fromkeys(("eta", "fid", "isc_mean", "isc_std", "kid_mean", "kid_std", "wall_s", "images_per_s"),
                    (int, float)),
}  # fmt: skip
_TEXT = ("seeds", "grid", "strip", "error", "checkpoint_sha256", "extractor", "extractor_sha256", "ref_key",
         "ref_sha256", "device")  # fmt: skip


def _malformed(rec: Mapping[str, Any]) -> str | None:
    """The first field of a record whose stored value has the wrong type (a store edited by hand or by another
    program), or None. Numbers may be missing (None)."""
    for key, kinds in _TYPES.items():
        v = rec.get(key)
        if v is not None and key in rec and (isinstance(v, bool) or not isinstance(v, kinds)):
            return key
    return next((k for k in _TEXT if rec.get(k) is not None and not isinstance(rec[k], str)), None)


def records_of(study: optuna.Study, malformed: list[int] | None = None) -> tuple[list[dict[str, Any]], int]:
    """(records, number of superseded failures) of a study, ordered by trial number. A trial whose stored fields
    have the wrong types is left out; its number is appended to ``malformed``."""
    trials = study.get_trials(deepcopy=False)
    cells = {t.number: c for t in trials if isinstance(c := t.user_attrs.get("cell"), str) and c}
    complete = {cells[t.number] for t in trials if t.state.name == "COMPLETE" and t.number in cells}
    kept, superseded = [], 0
    for t in trials:
        cell = cells.get(t.number)
        if cell and t.state.name in ("FAIL", "RUNNING") and cell in complete:
            superseded += 1  # a try of a cell measured since (also one stopped before its fields were recorded)
        elif (r := _record(t)) is not None:
            if _malformed(r) is None:
                kept.append(r)
            elif malformed is not None:
                malformed.append(t.number)
    if len(study.directions) == 2:
        front = {t.number for t in study.best_trials}
        for r in kept:
            r["pareto"] = r["number"] in front
    return kept, superseded


def load_results(name: str, storage: str | None = None) -> tuple[list[dict], dict, dict]:
    """(records, meta, extras) of a sweep, straight from the store (no recomputation).

    Every string is passed through ``redact``: a study written before credentials were masked (or by
    another tool) cannot put a password into a report or a W&B run.
    """
    study = load_study(name, storage)
    malformed: list[int] = []
    records, superseded = records_of(study, malformed)
    if malformed:
        listed = ", ".join(f"#{n}" for n in malformed[:5]) + (", …" if len(malformed) > 5 else "")
        print(f"warning: {len(malformed)} trial(s) of {name!r} hold fields of the wrong type (edited store?) and "
              f"are left out: {listed}", file=sys.stderr)  # fmt: skip
    records = redact(records)
    meta = study.user_attrs.get("meta")
    meta = redact(dict(meta)) if isinstance(meta, dict) else {}
    if meta.get("mode") == "pareto" and not meta.get("objective"):  # a search made before meta named its cost
        meta["objective"] = (study.user_attrs.get("protocol", {}).get("space") or {}).get("objective")
    # Protocol hashes known only after the first measured cell: take them from the cells.
    for key in PROTOCOL_META:
        if meta.get(key) is None:
            meta[key] = next((r[key] for r in records if r["state"] == "COMPLETE" and r.get(key)), None)
    # The seeds behind the reported cells (the first run's meta names only that run's seed blocks).
    seeds = _seeds_text(r.get("seeds") for r in records)
    if seeds:
        meta["seeds"] = seeds
    runs = [redact(v) for k, v in sorted(study.user_attrs.items()) if k.startswith(_RUN_PREFIX) and isinstance(v, dict)]
    if runs:
        meta["runs"] = 1 + len(runs)
        meta["last_run"] = {k: runs[-1].get(k) for k in _RUN_FIELDS}
    if superseded:
        meta["superseded_trials"] = superseded
    extras = study.user_attrs.get("extras")
    extras = {k: v for k, v in redact(dict(extras)).items() if k != "key"} if isinstance(extras, dict) else {}
    return records, meta, extras


def _seeds_text(ranges: Any) -> str | None:
    """The union of per-cell seed ranges, ordered like ``provenance.seeds_text``: ``0-19, 20-39``."""

    def order(text: str) -> tuple:
        m = re.fullmatch(r"(\d+)-(\d+)", text)
        return (0, int(m[1]), int(m[2]), "") if m else (1, 0, 0, text)

    return ", ".join(sorted({str(x) for x in ranges if x}, key=order)) or None


def shown(values: Mapping) -> dict:
    """``values`` (a record or a metrics result) as every output shows it: KID ×10³ under its shown name."""
    out = {}
    for k, v in values.items():
        if k in KID_SHOWN:
            real = isinstance(v, numbers.Real) and not isinstance(v, bool)
            out[KID_SHOWN[k]] = float(v) * KID_SCALE if real else None
        else:
            out[k] = v
    return out


def table_rows(records: list[dict]) -> list[list]:
    """Rows of ``TABLE_COLUMNS`` for a W&B table (KID ×10³, ``shown``)."""
    return [[row.get(c) for c in TABLE_COLUMNS] for row in map(shown, records)]


# ----------------------------------------------------------------------------- writing a cell's trial
METRIC_ATTRS = ("fid", "isc_mean", "isc_std", "kid_mean", "kid_std", "nfe", "wall_s", "images_per_s")


def _param_choices() -> dict[str, list[str]]:
    from ddim.sampling import SAMPLERS
    from ddim.schedules import SPACINGS

    return {"sampler": list(SAMPLERS), "schedule": list(SPACINGS)}


def cell_params(cell: Cell) -> dict[str, Any]:
    """The Optuna params of a cell (η only where the sampler has one)."""
    out: dict[str, Any] = {"sampler": cell.sampler, "schedule": cell.schedule, "steps": cell.steps}
    if cell.eta is not None:
        out["eta"] = cell.eta
    return {**out, "seed_block": cell.seed_block}


def enqueue_cell(study: optuna.Study, cell: Cell) -> None:
    """Queue a grid cell as a trial whose params are the cell's; the next free worker pops it."""
    study.enqueue_trial(cell_params(cell), user_attrs={"cell": cell.key})


def queued_cell(trial: optuna.Trial, T: int) -> Cell | None:
    """The grid cell a popped trial was queued for (None for a trial nobody queued), with its params set
    through the suggest API so the trial carries S, η, ... as numbers."""
    key = trial.user_attrs.get("cell")
    if not key:
        return None
    want = Cell.from_key(key)
    choices = trial.study.user_attrs.get("param_choices") or _param_choices()
    for name in ("sampler", "schedule"):
        if getattr(want, name) not in choices[name]:
            raise DDIMError(f"this sweep's store predates {name} {getattr(want, name)!r}; run it under a new name=")
    sampler = trial.suggest_categorical("sampler", choices["sampler"])
    schedule = trial.suggest_categorical("schedule", choices["schedule"])
    steps = trial.suggest_int("steps", 1, max(T, want.steps))
    eta = None if want.eta is None else trial.suggest_float("eta", 0.0, max(1.0, want.eta))
    block = trial.suggest_int("seed_block", 0, max(1, want.seed_block))
    got = Cell(sampler, schedule, steps, eta, block)
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
        if t.number != trial.number and t.user_attrs.get("cell") == cell.key
    ]
    if holders:
        return min(holders)
    for k, v in {**attrs, **cell.fields()}.items():
        trial.set_user_attr(k, v)
    return None


def save_result(trial: optuna.Trial, result: Mapping[str, Any]) -> None:
    """A measured cell: each metric its own attribute, the rest of the record as ``result``."""
    for k in METRIC_ATTRS:
        if result.get(k) is not None:
            trial.set_user_attr(k, result[k])
    trial.set_user_attr("result", {k: v for k, v in result.items() if k not in METRIC_ATTRS})


def save_error(trial: optuna.Trial, message: str, interrupted: bool = False) -> None:
    """A cell that failed (``interrupted``: stopped by Ctrl-C / SIGTERM, not its own fault, so retried)."""
    if interrupted:
        trial.set_user_attr("interrupted", True)
    trial.set_user_attr("error", message)
