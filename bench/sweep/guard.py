"""What a sweep refuses or reports in one line instead of a traceback: cells that cannot fit in memory, a full
disk and a store that fails mid-sweep."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from bench.store.guard import disk_full, readable_values
from bench.store.untrusted import safe_url
from bench.sweep.spec import SweepSpec
from ddim.errors import DDIMError, one_line


def check_memory_fits(spec: SweepSpec, workers: int) -> None:
    """Refuse an n whose cells cannot fit before anything is stored: each worker holds a cell's n samples
    (uint8) and their features at once to score them."""
    from bench.metrics.fidelity import FEATURE_BYTES
    from ddim.data import dataset_info
    from ddim.memory import check_memory

    per_sample = dataset_info(spec.dataset).channels * spec.resolution**2 + FEATURE_BYTES.get(spec.extractor, 0)
    fix = "use a smaller n= (or fewer --workers)" if workers > 1 else "use a smaller n="
    check_memory(f"n={spec.n} per cell" + (f" in each of {workers} workers" if workers > 1 else ""),
                 spec.n * per_sample * workers, fix)  # fmt: skip


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
