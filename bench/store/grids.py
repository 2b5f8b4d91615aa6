"""The grids a sweep's runs asked for: a name rerun with another grid adds cells to the same sweep, and its report
shows every cell any run asked for, measured or not (``bench.store.study.load_results``).

Each grid run stores its resolved config as the study user attribute ``spec`` (the latest run's; the sweep's
``sweep.json`` holds the same) and its grid's axes (``bench.store.axes.AXES`` and ``T``: what ``spec_grid`` reads) as
``grid:<digest>``, one attribute per distinct grid: a rerun of the same grid writes the same attribute again, and runs
of other grids started at once on several machines each add their own. A store written before grids were kept has
only ``spec``: the latest run's grid is all that is known of it.

A grid asked for by mistake is forgotten (``ddimbench sweep ... --forget``, ``bench.store.forget``): Optuna deletes
no study attribute, so its ``grid:<digest>`` is overwritten by a tombstone (``forgotten_mark``): ``forgotten`` (when,
UTC), the grid's axes under ``grid`` (none at the top, so no reader takes it for a grid) and ``search`` set, so that
releases that read grids before tombstones existed skip it as a search's, without a warning. A forgotten grid is no
run's grid (nor is ``spec``, when it holds that grid); its cells that no other grid has are ``Grids.forgotten``, whose
trials not run a report leaves out (``Grids.shown``). A later run of the grid stores it again (``save_spec``), and so
remembers it. Any mapping with ``forgotten`` is a tombstone: one whose ``grid`` cannot be read is forgotten all the
same, its cells unknown.

The store is untrusted: a stored grid is read only when ``ddimbench sweep`` could have run it (its values as the
sweep's keys take them, ``bench.store.axes``; S ≤ T), and only up to ``MAX_GRID_CELLS`` cells over all of a sweep's
grids, counted before any is built; any other is ignored (``stored_grids`` names it, for a warning).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from bench.store.axes import AXES, axis_values, shown
from bench.store.cell import MAX_GRID_CELLS, Cell, grid, grid_size
from bench.store.record import CellRecord
from bench.store.renames import current_names
from bench.store.runs import later_runs
from bench.store.table_cells import NOT_RUN, record_state
from bench.store.untrusted import redact, stored_int
from ddim.errors import DDIMError
from ddim.names import MAX_T

_GRID_PREFIX = "grid:"
FORGOTTEN = "forgotten"  # the key that makes a ``grid:`` attribute a tombstone (``forgotten_mark``)


def _axes(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What a grid's attribute holds of a run's config: its axes and T (the rest of the config does not make cells)."""
    return {k: spec.get(k) for k in (*AXES, "T")}


def grid_digest(spec: Mapping[str, Any]) -> str:
    """The digest that names a grid's attribute: of its axes and T."""
    return hashlib.sha256(json.dumps(_axes(spec), sort_keys=True).encode()).hexdigest()[:16]


def grid_attr(spec: Mapping[str, Any]) -> str:
    """The name of the study attribute that keeps the grid of ``spec``: ``grid:<digest>``."""
    return _GRID_PREFIX + grid_digest(spec)


def save_spec(study: Any, spec: Mapping[str, Any]) -> None:
    """Store a run's resolved config (``bench.sweep.spec.SweepSpec.to_dict``) and, for a grid, its grid (over a
    tombstone: the grid is remembered again): the grid first, so a run whose ``spec`` is stored has its grid stored
    too (``stored_grids`` pairs runs with grids)."""
    if spec.get("search") is None:
        study.set_user_attr(grid_attr(spec), _axes(spec))
    study.set_user_attr("spec", dict(spec))


def forgotten_mark(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The tombstone that replaces the grid of ``spec`` once it is forgotten (see the module's docstring)."""
    return {FORGOTTEN: datetime.now(timezone.utc).isoformat(timespec="seconds"), "search": FORGOTTEN,
            "grid": _axes(spec)}  # fmt: skip


def is_forgotten(value: Any) -> bool:
    """Whether a stored grid attribute's ``value`` is a tombstone (well-formed or not)."""
    return isinstance(value, Mapping) and FORGOTTEN in value


def spec_grid(spec: Any, limit: int = MAX_GRID_CELLS) -> list[Cell] | None:
    """The ``grid`` of a sweep's resolved config as runs store it (``bench.sweep.spec.SweepSpec.to_dict``: a list
    per axis of ``AXES``, and ``T``), or None for a search. A config that no ``ddimbench sweep`` could have run (an
    edited store: a value the sweep's key refuses, S above T, more than ``limit`` cells, two η one cell names) is a
    one-line DDIMError saying why; its cells are counted before any is built."""
    if not isinstance(spec, Mapping):
        raise DDIMError(f"{shown(spec)} is no mapping of a grid's axes")
    if spec.get("search") is not None:
        return None
    T = stored_int(spec.get("T"))
    if T is None or not 1 <= T <= MAX_T:  # a checkpoint's rule (ddim.schedules.DiffusionConfig.problem)
        raise DDIMError(f"T={shown(spec.get('T'))} is not an integer in 1..{MAX_T}")
    axes = {k: axis_values(k, spec.get(k)) for k in AXES}
    if max(axes["steps"]) > T:
        raise DDIMError(f"steps={max(axes['steps'])} exceeds T = {T}")
    size = grid_size(axes["spacing"], axes["sampler"], axes["steps"], axes["eta"], axes["seeds"])
    if size > limit:
        left = f"left of the {MAX_GRID_CELLS} a sweep's grids may have" if limit < MAX_GRID_CELLS else "a grid may have"
        raise DDIMError(f"its {size} cells are more than the {limit} {left}")
    return grid(axes["spacing"], axes["sampler"], axes["steps"], axes["eta"], axes["seeds"], T)


@dataclass(frozen=True)
class Grids:
    """The grids a sweep's runs asked for, as its report reads them (``stored_grids``): ``runs``, each distinct
    grid's cells, the latest run's grid first (``latest``; empty where the store does not say which it is), and
    ``command``, the command of the run that asked for ``latest`` (None: the store does not say)."""

    runs: tuple[tuple[Cell, ...], ...] = ()
    latest: tuple[Cell, ...] = ()
    command: str | None = None
    forgotten: frozenset[str] = frozenset()  # keys of the cells of forgotten grids that no run's grid has

    @classmethod
    def one(cls, cells: Sequence[Cell]) -> Grids:
        """A sweep of one run, or whose runs all asked for the grid of ``cells``."""
        return cls((tuple(cells),), tuple(cells))

    @property
    def cells(self) -> list[Cell]:
        """The cells of every run's grid, each once, the latest run's first."""
        return list({c.key: c for run in (self.latest, *self.runs) for c in run}.values())

    def shown(self, records: Iterable[CellRecord]) -> list[CellRecord]:
        """``records`` as a report shows them: a trial not run (``record_state``: still running or interrupted) of a
        cell that only forgotten grids asked for is left out; every measured or failed trial stays."""
        return [r for r in records if r.cell.key not in self.forgotten or record_state(r) != NOT_RUN]


NO_GRIDS = Grids()  # a sweep that keeps none (a search): its report shows the cells its trials ran


def stored_grids(attrs: Mapping[str, Any], ignored: list[str] | None = None) -> Grids:
    """The ``Grids`` of a study's user attributes: the latest run's grid first, then the others (``grid:``) in the
    order of their digests, so the same whatever order the storage returns attributes in; none for a search. The
    latest run is the newest whose record names a grid that is stored, paired with its own command
    (``bench.store.runs``); a run recorded by an earlier release, or the first run (``meta``), has the grid of
    ``spec``. A stored grid no sweep could have run (``spec_grid``), or one beyond ``MAX_GRID_CELLS`` cells over
    all the grids read before it, is left out; ``ignored`` gets its attribute's name and why. A forgotten grid is
    left out silently; its cells are read (up to ``MAX_GRID_CELLS`` over all of them) for ``Grids.forgotten``."""
    left = MAX_GRID_CELLS
    read: dict[str, tuple[Cell, ...]] = {}  # each distinct grid once (``spec`` and its ``grid:`` twin), by digest

    def digest_of(name: str) -> str | None:
        """The digest of the grid of attribute ``name``, read into ``read``; None when it holds none."""
        nonlocal left
        spec = current_names(attrs[name])
        digest = grid_digest(spec) if isinstance(spec, Mapping) else ""
        if is_forgotten(spec) or is_forgotten(attrs.get(_GRID_PREFIX + digest)):  # ``spec`` of a forgotten grid too
            return None
        if digest not in read:
            try:
                cells = spec_grid(spec, left)
            except DDIMError as exc:
                if ignored is not None:
                    ignored.append(f"{name} ({exc})")
                return None
            if cells is None:  # a search
                return None
            left -= len(cells)
            read[digest] = tuple(cells)
        return digest

    spec = digest_of("spec") if "spec" in attrs else None
    named = {k: digest_of(k) for k in sorted(k for k in attrs if k.startswith(_GRID_PREFIX))}
    latest, command = _latest_run(attrs, spec, named)
    runs = tuple(read[d] for d in dict.fromkeys(d for d in (latest, *named.values(), spec) if d is not None))
    kept = {c.key for cells in read.values() for c in cells}
    return Grids(runs, read[latest] if latest is not None else (), command if isinstance(command, str) else None,
                 frozenset(_forgotten_cells(attrs) - kept))  # fmt: skip


def _forgotten_cells(attrs: Mapping[str, Any]) -> set[str]:
    """The keys of the cells of the forgotten grids (tombstones) whose grid can be read, up to ``MAX_GRID_CELLS``."""
    out: set[str] = set()
    left = MAX_GRID_CELLS
    for name in sorted(k for k in attrs if k.startswith(_GRID_PREFIX) and is_forgotten(attrs[k])):
        try:
            cells = spec_grid(current_names(attrs[name].get("grid")), left) or ()
        except DDIMError:  # a tombstone edited or written by another program: its grid forgotten, its cells unknown
            continue
        left -= len(cells)
        out |= {c.key for c in cells}
    return out


def _latest_run(attrs: Mapping[str, Any], spec: str | None, named: Mapping[str, str | None]) -> tuple[str | None, Any]:
    """(the digest of the latest run's grid, that run's command): the newest run whose record names a grid read
    (``named``: by attribute); a run whose record names none (an earlier release's) or, none left, the first run
    (``meta``) with ``spec``'s. A run whose grid is not stored (stopped before it saved it, or left out) is passed."""
    for run in reversed(later_runs(attrs)):
        digest = run.get("grid")
        if not isinstance(digest, str):
            return spec, run.get("command")
        if named.get(_GRID_PREFIX + digest) is not None:
            return named[_GRID_PREFIX + digest], run.get("command")
    meta = attrs.get("meta")
    return spec, redact(meta.get("command")) if isinstance(meta, Mapping) else None
