"""The metrics a stored sweep asked for (its meta's ``metrics``), as a report reads them: the store cannot check them
(it knows no metric names) and anyone with access to it can write them."""

from __future__ import annotations

from collections.abc import Mapping

from bench.console import warn
from bench.metrics import METRICS
from bench.store.axes import shown


def asked_metrics(name: str, meta: Mapping) -> tuple[str, ...]:
    """The metric names (``bench.metrics.METRICS``) sweep ``name``'s ``meta`` lists, each once; all of them when it
    lists none. A value that is not a list of those names (an edited store: ``5``, ``[[1]]``, ``["fid", "x"]``) is
    left out with one warning, as the store's other edited values are, and the report shows every metric measured."""
    value = meta.get("metrics")
    if value is None or value == []:
        return METRICS
    if isinstance(value, list) and all(isinstance(m, str) and m in METRICS for m in value):
        return tuple(dict.fromkeys(value))
    warn(f"the metrics stored for {name!r} are not a list of {', '.join(METRICS)} (edited store?) and are left out: "
         f"{shown(value)}")  # fmt: skip
    return METRICS
