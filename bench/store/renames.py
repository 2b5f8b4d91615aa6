"""Names of earlier releases, read as today's and never written: the timestep spacing (the sub-sequence τ of
the paper's section 4.2) was called ``schedule`` before it was ``spacing`` everywhere.

One rule for every place that reads such a name back: a sample folder's ``samples.json`` settings
(``bench.generate``), a sweep store's trial attributes, param choices, search space and cell keys
(``bench.store.study``), and the sweep key ``schedule=`` (``bench.sweep.overrides.ALIASES``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OLD_SPACING = "schedule"  # the spacing's name in files and stores of earlier releases


def current_names(fields: Any) -> Any:
    """``fields`` with an earlier release's ``schedule`` read as ``spacing``, in the same place of the order.

    When both names are present, ``spacing`` (what today's release writes) wins and ``schedule`` is dropped.
    Anything that is not a mapping, or holds no ``schedule``, is returned as it is."""
    if not isinstance(fields, Mapping) or OLD_SPACING not in fields:
        return fields
    if "spacing" in fields:
        return {k: v for k, v in fields.items() if k != OLD_SPACING}
    return {("spacing" if k == OLD_SPACING else k): v for k, v in fields.items()}


def current_key(key: str) -> str:
    """A stored cell key (``bench.store.cell.Cell.key``) in today's words: an earlier release's
    ``sampler=ddim schedule=uniform ...`` reads as ``sampler=ddim spacing=uniform ...``."""
    return key.replace(f" {OLD_SPACING}=", " spacing=", 1)
