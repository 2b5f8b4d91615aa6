"""``key=value`` overrides and YAML sweep files: one vocabulary, one parser, one-line errors.

A sweep is described by keys such as ``steps=10,20,50 eta=0,0.5,1 sampler=ddim,sigma_hat n=1000``.
The same names are the keys of a YAML file (``sweeps/*.yaml``); values given on the command line
win over the file's. Value forms:

- ``a,b,c``   a list (for the sweep's axes: ``steps``, ``eta``, ``schedule``, ``sampler``,
  ``seeds``, and for ``metrics``); a single value is a one-element list;
- ``lo..hi``  an inclusive range, only for ``steps`` (integers) and ``eta`` (floats), and only in
  search mode (``--search pareto``); a grid needs explicit lists;
- scalars for everything else (``n``, ``batch``, ``checkpoint``, ...).

Every malformed token (``steps=``, ``steps=a``, ``=3``, ``steps``), out-of-range value
(``steps=0``, ``eta=-1``, ``n=0``), unknown or repeated key raises ``DDIMError`` with one line
naming the problem and the fix. Checks that need the checkpoint (``steps`` ≤ T) happen in
``bench.sweep.resolve_spec``. The sampler list is read from ``ddim.sampling.SAMPLERS`` at call
time, so samplers added there are accepted here without a change.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddim.errors import DDIMError


@dataclass(frozen=True)
class Range:
    """An inclusive search range ``lo..hi`` (search mode only)."""

    lo: float
    hi: float

    def __str__(self) -> str:
        return f"{self.lo:g}..{self.hi:g}"


@dataclass(frozen=True)
class Key:
    """One override key: its value type, whether it takes a list / a range, and its bounds."""

    kind: str  # "int" | "float" | "str" | "bool" | "choice"
    help: str
    is_list: bool = False
    ranged: bool = False
    minimum: float | None = None
    choices: Callable[[], Sequence[str]] | None = None
    example: str = ""


def _samplers() -> Sequence[str]:
    from ddim.sampling import SAMPLERS

    return SAMPLERS


def _spacings() -> Sequence[str]:
    from ddim.schedules import SPACINGS

    return SPACINGS


def _datasets() -> Sequence[str]:
    from ddim.data import DATASETS

    return DATASETS


def _extractors() -> Sequence[str]:
    from bench.metrics import EXTRACTORS

    return EXTRACTORS


def _metrics() -> Sequence[str]:
    from bench.metrics import METRICS

    return METRICS


KEYS: dict[str, Key] = {
    "name": Key("str", "sweep name: the study in the storage and reports/<name>/", example="name=digits-grid"),
    "checkpoint": Key("str", "run directory or .pt checkpoint file", example="checkpoint=runs/digits"),
    "dataset": Key("choice", "reference dataset (default: the checkpoint's)", choices=_datasets),
    "data_root": Key("str", "folder holding the datasets", example="data_root=data"),
    "n": Key("int", "samples per cell (the paper: 50000)", minimum=1, example="n=1000"),
    "batch": Key("int", "images per sampling batch (does not change results)", minimum=1, example="batch=256"),
    "seeds": Key("int", "seed blocks; block b uses seeds seed_base+b·n+i", True, minimum=0, example="seeds=0,1,2"),
    "seed_base": Key("int", "first seed of block 0", minimum=0, example="seed_base=0"),
    "steps": Key("int", "sampling steps S (≤ T)", True, True, minimum=1, example="steps=10,20,50"),
    "eta": Key("float", "DDIM η (eq. 16), ddim sampler only", True, True, minimum=0.0, example="eta=0,0.5,1"),
    "schedule": Key("choice", "timestep spacing of τ", True, choices=_spacings),
    "sampler": Key("choice", "sampler", True, choices=_samplers),
    "extractor": Key("choice", "feature extractor (default: per dataset)", choices=_extractors),
    "metrics": Key("choice", "metrics to compute", True, choices=_metrics),
    "search": Key("choice", "search mode instead of a grid", choices=lambda: ("pareto",)),
    "trials": Key("int", "search mode: number of settings to try", minimum=1, example="trials=40"),
    "objective": Key("choice", "search mode: cost axis beside FID", choices=lambda: ("nfe", "time")),
    "device": Key("str", "auto, cpu, cuda or cuda:N", example="device=cuda"),
    "interpolation": Key("bool", "write the slerp interpolation strip at the end", example="interpolation=true"),
    "inversion": Key("bool", "measure η = 0 inversion error per S (Table 2)", example="inversion=true"),
    "inversion_n": Key("int", "real images used for the inversion table", minimum=1, example="inversion_n=64"),
    "cache_dir": Key("str", "cache for reference statistics and the classifier", example="cache_dir=.cache/ddimbench"),
    "inception_weights": Key("str", "local Inception weights file", example="inception_weights=pt_inception.pth"),
    "artifacts": Key("str", "folder for sample grids (default ddimbench-sweeps/<name>)", example="artifacts=out"),
}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _example(name: str) -> str:
    k = KEYS[name]
    if k.example:
        return k.example
    if k.choices is not None:
        opts = list(k.choices())
        return f"{name}={','.join(opts[:2]) if k.is_list else opts[0]}"
    return f"{name}=VALUE"


def _unknown_key(name: str) -> DDIMError:
    close = difflib.get_close_matches(name, KEYS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return DDIMError(f"unknown key {name!r}; {hint}valid keys: {', '.join(KEYS)}")


def _scalar(name: str, text: str) -> Any:
    """One value of key ``name`` from its text, type- and bound-checked."""
    k = KEYS[name]
    text = text.strip()
    if not text:
        raise DDIMError(f"{name} has an empty value; write e.g. {_example(name)}")
    if k.kind == "int":
        if not re.fullmatch(r"[+-]?\d+", text):
            raise DDIMError(f"{name}={text!r} is not an integer; write e.g. {_example(name)}")
        value: Any = int(text)
    elif k.kind == "float":
        if not _NUMBER.match(text):
            raise DDIMError(f"{name}={text!r} is not a number; write e.g. {_example(name)}")
        value = float(text)
        if not math.isfinite(value):
            raise DDIMError(f"{name}={text!r} is not finite; write e.g. {_example(name)}")
    elif k.kind == "bool":
        low = text.lower()
        if low not in _TRUE + _FALSE:
            raise DDIMError(f"{name}={text!r} is not true/false; write {name}=true or {name}=false")
        return low in _TRUE
    elif k.kind == "choice":
        options = tuple(k.choices()) if k.choices else ()
        if text not in options:
            raise DDIMError(f"unknown {name} {text!r}; choose from {', '.join(options)}")
        return text
    else:
        return text
    if k.minimum is not None and value < k.minimum:
        bound = f"≥ {k.minimum:g}"
        raise DDIMError(f"{name}={text} is out of range: {name} must be {bound}; write e.g. {_example(name)}")
    return value


def parse_value(name: str, text: str) -> Any:
    """The typed value of ``name=text``: a list for list keys, a ``Range`` for ``lo..hi``."""
    if name not in KEYS:
        raise _unknown_key(name)
    k = KEYS[name]
    text = text.strip()
    if not text:
        raise DDIMError(f"{name}= has no value; write e.g. {_example(name)}")
    if ".." in text:
        if not k.ranged:
            raise DDIMError(f"{name}={text}: {name} takes no range; write e.g. {_example(name)}")
        lo_text, _, hi_text = text.partition("..")
        if "," in text:
            raise DDIMError(f"{name}={text} mixes a range and a list; give one range lo..hi or a list a,b,c")
        lo, hi = _scalar(name, lo_text), _scalar(name, hi_text)
        if lo > hi:
            raise DDIMError(f"{name}={text}: the range is empty (lo > hi); write {name}={hi}..{lo}")
        return Range(lo, hi)
    parts = text.split(",")
    if len(parts) > 1 and not k.is_list:
        raise DDIMError(f"{name}={text}: {name} takes one value, not a list; write e.g. {_example(name)}")
    values = [_scalar(name, p) for p in parts]
    if not k.is_list:
        return values[0]
    if len(set(values)) != len(values):
        raise DDIMError(f"{name}={text} repeats a value; list each value once")
    return values


def parse_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """``["steps=10,20", "eta=0..1"]`` → ``{"steps": [10, 20], "eta": Range(0.0, 1.0)}``.

    Raises a one-line ``DDIMError`` on a malformed token, an unknown or repeated key, or a value of
    the wrong type or out of its bounds.
    """
    out: dict[str, Any] = {}
    for token in tokens:
        if "=" not in token:
            guess = token.strip() if token.strip() in KEYS else "KEY"
            raise DDIMError(f"{token!r} is not KEY=VALUE; write e.g. {guess}=VALUE")
        name, _, text = token.partition("=")
        name = name.strip()
        if not name:
            raise DDIMError(f"{token!r} has no key before '='; write KEY=VALUE, e.g. steps=10,20")
        name = name.replace("-", "_")
        if name not in KEYS:
            raise _unknown_key(name)
        if name in out:
            raise DDIMError(f"{name} is given twice; give it once, e.g. {_example(name)}")
        out[name] = parse_value(name, text)
    return out


def _yaml_text(name: str, value: Any, where: str) -> str:
    """A YAML value as override text: lists joined with commas, scalars as written."""
    if value is None:
        raise DDIMError(f"{where}: {name} has no value; write e.g. {_example(name)}")
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, (list, tuple, dict)) or v is None for v in value):
            raise DDIMError(f"{where}: {name} must be a flat list of values; write e.g. {_example(name)}")
        return ",".join(_yaml_scalar(v) for v in value)
    if isinstance(value, dict):
        raise DDIMError(f"{where}: {name} cannot be a mapping; write e.g. {_example(name)}")
    return _yaml_scalar(value)


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML sweep file into typed values (same keys and checks as ``parse_overrides``).

    ``schedule`` may be a mapping from dataset name to spacing(s) with an optional ``default``
    (the paper used quad for CIFAR10 and uniform elsewhere); it is returned as a dict of lists and
    resolved for the sweep's dataset by ``per_dataset``.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise DDIMError(f"sweep config {str(p)!r} not found; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise DDIMError(f"sweep config {p} is not valid YAML{at}; fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DDIMError(f"sweep config {p} must be a mapping of key: value; see sweeps/quick.yaml")
    out: dict[str, Any] = {}
    for raw_name, value in data.items():
        name = str(raw_name).replace("-", "_")
        try:
            if name not in KEYS:
                raise _unknown_key(name)
            if name == "schedule" and isinstance(value, dict):
                out[name] = {str(ds): parse_value(name, _yaml_text(name, v, str(p))) for ds, v in value.items()}
            else:
                out[name] = parse_value(name, _yaml_text(name, value, str(p)))
        except DDIMError as exc:
            msg = str(exc)
            raise DDIMError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from None
    return out


def per_dataset(value: Any, dataset: str, key: str = "schedule") -> Any:
    """``value`` itself, or for a per-dataset mapping the entry of ``dataset`` (else ``default``)."""
    if not isinstance(value, Mapping):
        return value
    if dataset in value:
        return value[dataset]
    if "default" in value:
        return value["default"]
    raise DDIMError(f"{key} has no entry for dataset {dataset!r} and no 'default'; add one to the sweep file")


def merge(file_values: Mapping[str, Any], cli_values: Mapping[str, Any]) -> dict[str, Any]:
    """File values overridden key by key by command-line values."""
    return {**file_values, **cli_values}


# --------------------------------------------------------------------------------- the sweep spec
@dataclass(frozen=True)
class Cell:
    """One setting of the grid: sampler, spacing, S, η (ddim only, else None) and seed block."""

    sampler: str
    schedule: str
    steps: int
    eta: float | None
    seed_block: int

    @property
    def key(self) -> str:
        """Canonical text identity, stored as the trial's ``cell`` user attribute."""
        eta = "-" if self.eta is None else f"{self.eta:g}"
        return (
            f"sampler={self.sampler} schedule={self.schedule} steps={self.steps} eta={eta} seed_block={self.seed_block}"
        )

    def fields(self) -> dict[str, Any]:
        """The record fields of the cell."""
        return {k: getattr(self, k) for k in ("sampler", "steps", "eta", "schedule", "seed_block")}

    @property
    def slug(self) -> str:
        """A file name stem for the cell's images."""
        eta = "" if self.eta is None else f"_eta{self.eta:g}"
        return f"{self.schedule}_{self.sampler}{eta}_S{self.steps}_b{self.seed_block}"

    @property
    def label(self) -> str:
        what = f"η={self.eta:g}" if self.sampler == "ddim" else self.sampler
        return f"{what} S={self.steps} {self.schedule} block {self.seed_block}"


@dataclass(frozen=True)
class SweepSpec:
    """A resolved sweep: every value checked against the checkpoint (see ``resolve_spec``).

    Axes (``steps``, ``eta``, ``schedule``, ``sampler``, ``seeds``) are tuples in grid mode; in search
    mode ``steps`` / ``eta`` may be a ``Range``. Sample i of seed block b uses the seed
    ``seed_base + b·n + i`` in every cell (common random numbers).
    """

    name: str
    checkpoint: str  # the resolved checkpoint FILE (a run directory's newest at resolve time)
    dataset: str
    T: int
    resolution: int = 32  # the model's image side in pixels (from the checkpoint)
    data_root: str = "data"
    n: int = 1000
    batch: int = 256
    seeds: tuple[int, ...] = (0,)
    seed_base: int = 0
    steps: tuple[int, ...] | Range = (10, 20, 50, 100)
    eta: tuple[float, ...] | Range = (0.0,)
    schedule: tuple[str, ...] = ("uniform",)
    sampler: tuple[str, ...] = ("ddim",)
    extractor: str = "classifier"
    metrics: tuple[str, ...] = ("fid", "isc", "kid")
    search: str | None = None
    trials: int = 20
    objective: str = "nfe"
    device: str = "auto"
    interpolation: bool = True
    inversion: bool = False
    inversion_n: int = 64
    cache_dir: str = ".cache/ddimbench"
    inception_weights: str | None = None
    artifacts: str = ""
    config: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able resolved config (ranges as ``"lo..hi"``), written beside the outputs."""
        out: dict[str, Any] = {}
        for k in self.__dataclass_fields__:
            v = getattr(self, k)
            out[k] = str(v) if isinstance(v, Range) else list(v) if isinstance(v, tuple) else v
        return out

    def cells(self) -> list[Cell]:
        """The grid, without pointless duplicates: η only varies for ``ddim``; ``ddpm`` always runs
        all T steps (so it gets S = T and one cell per seed block, under the first spacing: with
        S = T every spacing is the full sequence T−1 … 0)."""
        if isinstance(self.steps, Range) or isinstance(self.eta, Range):
            raise DDIMError("a grid needs lists, not ranges; give steps=10,20 eta=0,1 or use --search pareto")
        out: dict[str, Cell] = {}
        for schedule in self.schedule:
            for sampler in self.sampler:
                if sampler == "ddpm" and schedule != self.schedule[0]:
                    continue
                steps = (self.T,) if sampler == "ddpm" else self.steps
                etas: tuple[float | None, ...] = self.eta if sampler == "ddim" else (None,)
                for s in steps:
                    for eta in etas:
                        for b in self.seeds:
                            cell = Cell(sampler, schedule, int(s), None if eta is None else float(eta), int(b))
                            out.setdefault(cell.key, cell)
        return list(out.values())

    def seed_range(self, block: int) -> tuple[int, int]:
        """First and last seed of a block."""
        first = self.seed_base + block * self.n
        return first, first + self.n - 1


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SCALARS = ("data_root", "n", "batch", "seed_base", "trials", "objective", "device", "interpolation", "inversion",
            "inversion_n", "cache_dir", "inception_weights")  # fmt: skip


def _as_tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def resolve_spec(tokens: Sequence[str], config: str | Path | None = None, *, search: str | None = None) -> SweepSpec:
    """Parse overrides (and a YAML file; command-line values win) into a checked ``SweepSpec``.

    Everything is validated before any work: malformed values, ``steps`` ≤ T of the checkpoint,
    a loadable checkpoint, known sampler / spacing / extractor, the reference data, the Inception
    weights when that extractor is used, and the device. Each problem is a one-line DDIMError.
    """
    from bench import paper
    from bench.metrics import ISC_SPLITS, default_extractor, resolve_inception_weights
    from ddim.checkpoint import load_checkpoint
    from ddim.data import dataset_info, load_dataset
    from ddim.runtime import resolve_device

    values = merge(load_config(config) if config else {}, parse_overrides(tokens))
    if search is not None:
        values["search"] = parse_value("search", search)
    # 1. The checkpoint decides T, the dataset and the image shape.
    if not values.get("checkpoint"):
        raise DDIMError("no checkpoint given; add checkpoint=RUN_DIR (a training run directory or a .pt file)")
    ck = load_checkpoint(values["checkpoint"], map_location="cpu")
    T, shape = ck.diffusion.T, (ck.unet.in_channels, ck.unet.resolution)
    dataset = values.get("dataset") or ck.dataset.get("name")
    if not dataset:
        raise DDIMError(f"checkpoint {ck.path} does not name its dataset; add dataset=NAME")
    info = dataset_info(dataset, ck.dataset.get("resolution") if dataset == ck.dataset.get("name") else None)
    if (info.channels, info.resolution) != shape:
        raise DDIMError(
            f"the checkpoint makes {shape[0]}x{shape[1]}px images but {dataset} is {info.channels}x{info.resolution}px;"
            " pass the dataset the model was trained on"
        )
    # 2. Axes and scalars, with defaults; the spacing may be given per dataset.
    name = values.get("name") or (Path(config).stem if config else "sweep")
    if not _NAME.match(name):
        raise DDIMError(f"name={name!r} must be letters, digits, '.', '_' or '-' (it names folders); e.g. name=my-grid")
    schedule = per_dataset(values.get("schedule", [paper.SPACING.get(dataset, "uniform")]), dataset)
    mode = values.get("search")
    kw = {k: _as_tuple(values[k]) for k in _SCALARS if k in values}
    spec = SweepSpec(
        name=name,
        checkpoint=str(ck.path),
        dataset=dataset,
        T=T,
        resolution=shape[1],
        seeds=_as_tuple(values.get("seeds", [0])),
        steps=_as_tuple(values.get("steps", [10, 20, 50, 100])),
        eta=_as_tuple(values.get("eta", [0.0])),
        schedule=tuple(schedule),
        sampler=_as_tuple(values.get("sampler", ["ddim"])),
        extractor=values.get("extractor") or default_extractor(dataset),
        metrics=_as_tuple(values.get("metrics", ["fid", "isc", "kid"])),
        search=mode,
        artifacts=str(values.get("artifacts") or Path("ddimbench-sweeps") / name),
        config=None if config is None else str(config),
        **kw,
    )
    # 3. Checks that need the checkpoint or cross two keys.
    top = spec.steps.hi if isinstance(spec.steps, Range) else max(spec.steps)
    if top > T:
        raise DDIMError(f"steps={top} exceeds the checkpoint's T = {T}; use steps between 1 and {T}")
    if mode is None:
        for key in ("steps", "eta"):
            if isinstance(getattr(spec, key), Range):
                raise DDIMError(
                    f"{key}={getattr(spec, key)} is a range; ranges need --search pareto, a grid needs a list"
                    f" (e.g. {_example(key)})"
                )
    elif "fid" not in spec.metrics:
        raise DDIMError("search mode minimises FID; include fid in metrics=")
    if "isc" in spec.metrics and spec.n < ISC_SPLITS:
        raise DDIMError(
            f"n={spec.n} is too few for IS (needs ≥ {ISC_SPLITS} samples); raise n or drop isc from metrics="
        )
    if spec.n < 2 and ({"fid", "kid"} & set(spec.metrics)):
        raise DDIMError(f"n={spec.n} is too few for FID/KID (needs ≥ 2 samples); raise n")
    resolve_device(spec.device)
    if spec.extractor == "inception":
        resolve_inception_weights(spec.inception_weights)
    if {"fid", "kid"} & set(spec.metrics) or spec.inversion:
        load_dataset(dataset, root=spec.data_root, split="train", resolution=info.resolution)  # data present?
    return spec
