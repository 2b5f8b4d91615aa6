"""What a sweep refuses or reports in one line instead of a traceback: cells that cannot fit in memory, a full
disk and a store that fails mid-sweep."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from bench.store.guard import disk_full, readable_values
from bench.store.untrusted import safe_url
from bench.sweep.spec import SweepSpec
from ddim.errors import DDIMError, one_line

# A spawned worker process's resident memory before its first cell: Python, torch, Optuna and the metrics
# imported and a digits model loaded, measured as ~750 MB (ru_maxrss, CPU, torch 2.x). Counted only for
# --workers > 1: a single worker is this process, already running.
WORKER_BASELINE_BYTES = 750 * 2**20


def check_memory_fits(spec: SweepSpec, workers: int) -> None:
    """Refuse an n whose cells cannot fit before anything is stored: each worker holds a cell's n samples
    (uint8) and their features at once to score them, and each spawned worker its own copy of the libraries
    (``WORKER_BASELINE_BYTES``)."""
    from bench.metrics.fidelity import FEATURE_BYTES
    from ddim.data import dataset_info
    from ddim.memory import check_memory

    per_sample = dataset_info(spec.dataset).channels * spec.resolution**2 + FEATURE_BYTES.get(spec.extractor, 0)
    fix = "use fewer --workers (or a smaller n=)" if workers > 1 else "use a smaller n="
    each = f" in each of {workers} workers (processes of ~{WORKER_BASELINE_BYTES >> 20} MB before any cell)"
    check_memory(f"n={spec.n} per cell" + (each if workers > 1 else ""),
                 (spec.n * per_sample + (WORKER_BASELINE_BYTES if workers > 1 else 0)) * workers, fix)  # fmt: skip


def disk_message(reason: str, url: str, spec: SweepSpec) -> str:
    return (f"the disk is full ({reason}); free space where the store ({safe_url(url)}) and "
            f"artifacts={spec.artifacts} live, then rerun the same command to finish the sweep")  # fmt: skip


@contextlib.contextmanager
def store_errors(url: str, spec: SweepSpec) -> Iterator[None]:
    """A database error in the middle of a sweep (a full disk, a damaged file, a lost server, a stored value JSON
    cannot read back) as one line."""
    try:
        with readable_values(url):
            yield
    except (DDIMError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if disk_full(exc):
            raise DDIMError(disk_message(one_line(exc, 300), url, spec)) from None
        if type(exc).__module__.split(".")[0] not in ("sqlalchemy", "sqlite3", "psycopg2", "psycopg"):
            raise
        raise DDIMError(f"the sweep store {safe_url(url)} failed ({one_line(exc, 300)[:200]}); rerun the same "
                        "command to finish the sweep (measured cells are kept)") from None  # fmt: skip
