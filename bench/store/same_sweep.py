"""Whether a run adds cells to the same experiment as the sweep stored under its name: the ``protocol`` user
attribute (checkpoint sha256, n, seeds, dataset, extractor, metrics, T, mode, precision) must match key for key,
or the new cells would not be comparable with the stored ones (the paper's Table 1 compares cells measured under
one protocol). ``create_study`` checks it before adding a run; ``sweep --dry-run`` checks it without writing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.store.record import BF16
from bench.store.renames import current_names
from ddim.errors import DDIMError


def migrated_protocol(protocol: Any) -> Any:
    """A stored protocol with its search ``space`` in today's names (``current_names``): an earlier release's
    search reruns."""
    if isinstance(protocol, dict) and isinstance(protocol.get("space"), dict):
        return {**protocol, "space": current_names(protocol["space"])}
    return protocol


def check_same_sweep(name: str, stored: Mapping[str, Any], first_checkpoint: Any, protocol: Mapping[str, Any],
                     checkpoint: Any) -> None:  # fmt: skip
    """Refuse, in one line, a run whose ``protocol`` differs from the ``stored`` one (compared both ways: a key
    only one side has, like ``precision``, differs too). ``first_checkpoint`` / ``checkpoint``: the checkpoint
    files of the stored sweep and of this run, named when their sha256 differ (a hash alone says nothing)."""
    for key in {**stored, **protocol}:
        was, now = stored.get(key), protocol.get(key)
        if was == now:
            continue
        if key == "checkpoint_sha256":
            first = f"the checkpoint {first_checkpoint}" if first_checkpoint else "another checkpoint"
            fix = f"pass checkpoint={first_checkpoint}" if first_checkpoint else "pass the checkpoint it was run with"
            raise DDIMError(
                f"sweep {name!r} was run on {first} (sha256 {str(was)[:12] + '…' if was else 'unknown'}), not "
                f"{checkpoint} ({str(now)[:12]}…); {fix} or choose another name="
            )
        raise DDIMError(
            f"sweep {name!r} was run with {_setting(key, was)}, not {_setting(key, now)}; "
            "rerun with the same settings or choose another name="
        )


def _setting(key: str, value: Any) -> str:
    """A protocol entry as the user sets it: ``precision`` is the sweep key ``bf16``."""
    return f"bf16={str(value == BF16).lower()}" if key == "precision" else f"{key}={value!r}"
