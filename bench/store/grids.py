"""The grids a sweep's runs asked for: a name rerun with another grid adds cells to the same sweep, and its report
shows every cell any run asked for, measured or not (``bench.store.study.load_results``).

Each grid run stores its resolved config as the study user attribute ``spec`` (the latest run's; the sweep's
``sweep.json`` holds the same) and its grid's axes (``bench.store.cell.AXES`` and ``T``: what ``spec_grid`` reads) as
``grid:<digest>``, one attribute per distinct grid: a rerun of the same grid writes the same attribute again, and runs
of other grids started at once on several machines each add their own. A store written before grids were kept has
only ``spec``: the latest run's grid is all that is known of it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from bench.store.cell import AXES, Cell, spec_grid
from bench.store.renames import current_names

_GRID_PREFIX = "grid:"


def save_spec(study: Any, spec: Mapping[str, Any]) -> None:
    """Store a run's resolved config (``bench.sweep.spec.SweepSpec.to_dict``) and, for a grid, its grid."""
    study.set_user_attr("spec", dict(spec))
    if spec.get("search") is None:
        axes = {k: spec[k] for k in (*AXES, "T")}
        digest = hashlib.sha256(json.dumps(axes, sort_keys=True).encode()).hexdigest()[:16]
        study.set_user_attr(_GRID_PREFIX + digest, axes)


def stored_grids(attrs: Mapping[str, Any]) -> tuple[list[Cell], list[Cell]]:
    """(the cells of every run's grid, each once; the cells of the latest run's grid) from a study's user attributes:
    the latest grid's cells first, then the others' in the order of their attributes. Empty for a search."""
    latest = spec_grid(current_names(attrs.get("spec"))) or []
    every = {c.key: c for c in latest}
    for key in sorted(k for k in attrs if k.startswith(_GRID_PREFIX)):
        for c in spec_grid(current_names(attrs[key])) or ():
            every.setdefault(c.key, c)
    return list(every.values()), latest
