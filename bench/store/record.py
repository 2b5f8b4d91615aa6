"""A sweep cell's result as one typed record, from the evaluator that measures it to the report that prints it.

- ``Scores``: FID, Inception Score and KID of a cell's n samples (Song et al. 2020, section 5 and Table 1
  report FID); KID is kept raw, as torch-fidelity returns it, and shown ×10³ (``Scores.shown``);
- ``Protocol``: what must match between cells for their numbers to be comparable (checkpoint, feature
  extractor and reference statistics, by sha256, and the device);
- ``Measurement``: what ``bench.sweep.evaluate.Evaluator`` returns for one cell;
- ``CellRecord``: one stored trial of a sweep (``bench.store.study`` alone writes and reads them).

``columns`` flattens a record into the named columns of ``results.csv`` and of the W&B tables. Pure
python: no torch, no optuna.
"""

from __future__ import annotations

import dataclasses
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.store.cell import Cell

# KID has one scale wherever it leaves the store: ×10³ (tables, results.csv, manifest.json, the terminal and
# W&B), named so in every header and key; the store keeps torch-fidelity's raw value (``kid_mean``).
KID_SCALE = 1000.0
_SHOWN = {"scale": KID_SCALE, "suffix": "_x1e3"}


@dataclass(frozen=True)
class Scores:
    """FID, Inception Score (mean, std over splits) and KID (mean, std over subsets) of one cell's samples;
    None where the metric was not asked for or not measured."""

    fid: float | None = None
    isc_mean: float | None = None
    isc_std: float | None = None
    kid_mean: float | None = field(default=None, metadata=_SHOWN)
    kid_std: float | None = field(default=None, metadata=_SHOWN)

    @classmethod
    def split(cls, values: Mapping[str, Any]) -> tuple[Scores, dict[str, Any]]:
        """(the scores, the rest) of a metrics result (``bench.metrics.fidelity.compute_metrics``'s dict)."""
        names = {f.name for f in dataclasses.fields(cls)}
        rest = {k: v for k, v in values.items() if k not in names}
        return cls(**{k: values.get(k) for k in names}), rest

    @staticmethod
    def scale(name: str) -> float:
        """The factor a score is shown with (KID: 10³)."""
        return next(f.metadata.get("scale", 1.0) for f in dataclasses.fields(Scores) if f.name == name)

    def shown(self) -> dict[str, float | None]:
        """The scores as every output shows them: KID ×10³ under ``kid_mean_x1e3`` / ``kid_std_x1e3``."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            real = isinstance(v, numbers.Real) and not isinstance(v, bool)
            scale = f.metadata.get("scale", 1.0)
            out[f.name + f.metadata.get("suffix", "")] = (float(v) * scale if real else None) if scale != 1.0 else v
        return out


BF16 = "bf16"  # Protocol.precision of a cell whose network ran under bfloat16 autocast


@dataclass(frozen=True)
class Protocol:
    """What a cell was measured with; cells whose protocol differs from the sweep's are flagged in the report."""

    checkpoint_sha256: str | None = None
    extractor: str | None = None
    extractor_sha256: str | None = None
    ref_key: str | None = None
    ref_sha256: str | None = None
    device: str | None = None
    precision: str | None = None  # "bf16": the network ran under bfloat16 autocast; None: float32 (the paper's)


# A sweep's provenance ``device`` lists the devices its workers ran on, each as a trial's ``Protocol.device``
# names it, joined by ", " (a GPU model in brackets keeps any comma of its own).
_DEVICE_SPLIT = re.compile(r", (?![^(]*\))")


def devices_text(devices: Iterable[str]) -> str:
    """The sweep's ``device`` provenance of its workers' ``devices``: each once, in order."""
    return ", ".join(dict.fromkeys(devices))


def listed_devices(text: str) -> list[str]:
    """The devices a sweep's ``device`` provenance lists (``devices_text``); one device for a single name."""
    return _DEVICE_SPLIT.split(text)


@dataclass(frozen=True)
class Measurement:
    """One measured cell: its scores, NFE, sampling time (``wall_s``, sampling only), sample count and seeds,
    its 8x8 grid and 8-sample strip (paths relative to the sweep's artifacts) and its protocol."""

    nfe: int | None = None
    n: int | None = None
    seeds: str | None = None  # "first-last"
    scores: Scores = Scores()
    wall_s: float | None = None
    images_per_s: float | None = None
    grid: str | None = None
    strip: str | None = None
    protocol: Protocol = Protocol()
    versions: Mapping[str, str] | None = field(default=None, compare=False)  # libraries; stored, not shown

    @property
    def images(self) -> tuple[str, ...]:
        """The cell's image files (grid, strip) that were written, relative to the sweep's artifacts folder."""
        return tuple(rel for rel in (self.grid, self.strip) if rel)

    def summary(self) -> dict[str, Any]:
        """NFE, n, seeds, the scores as shown (KID ×10³) and the timing: the measured values of ``columns``."""
        return {"nfe": self.nfe, "n": self.n, "seeds": self.seeds, **self.scores.shown(), "wall_s": self.wall_s,
                "images_per_s": self.images_per_s}  # fmt: skip


NOT_MEASURED = Measurement()


@dataclass(frozen=True)
class CellRecord:
    """One trial of a sweep: its number and Optuna state (COMPLETE, FAIL or RUNNING), the cell, what was
    measured (None before or without a measurement), the error of a failed cell, in a Pareto search whether the
    trial is on the front (None outside searches), and whether a FAIL trial was ``interrupted``: stopped by
    Ctrl-C / SIGTERM (or a full disk), not by its cell, so the cell is not run yet and a rerun measures it."""

    number: int
    state: str
    cell: Cell
    measurement: Measurement | None = None
    error: str | None = None
    pareto: bool | None = None
    interrupted: bool = False

    @property
    def failed(self) -> bool:
        """A trial that failed on its own (an error, or its worker killed), not one ``interrupted``."""
        return self.state == "FAIL" and not self.interrupted

    @property
    def measured(self) -> Measurement:
        """The measurement, or an empty one (every value None) for a cell not measured."""
        return self.measurement or NOT_MEASURED

    @property
    def scores(self) -> Scores:
        return self.measured.scores


def columns(r: CellRecord) -> dict[str, Any]:
    """A record as named columns: the trial and its cell, the measured values (KID ×10³), the error, the image
    files, then the rest (protocol, Pareto flag of a search, ``interrupted`` of an interrupted trial) alphabetically."""
    m = r.measured
    rest = {**dataclasses.asdict(m.protocol), **({} if r.pareto is None else {"pareto": r.pareto}),
            **({"interrupted": True} if r.interrupted else {})}  # fmt: skip
    return {"number": r.number, "state": r.state, **r.cell.fields(), **m.summary(), "error": r.error,
            "grid": m.grid, "strip": m.strip, **dict(sorted(rest.items()))}  # fmt: skip


def table(records: Sequence[CellRecord]) -> tuple[list[str], list[list[Any]]]:
    """(column names, one row per record) of ``columns``: results.csv's and the W&B tables' content."""
    flat = [columns(r) for r in records]
    names = list(dict.fromkeys(k for row in flat for k in row))
    return names, [[row.get(k) for k in names] for row in flat]
