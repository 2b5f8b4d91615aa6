"""``key=value`` overrides and YAML sweep files: one vocabulary, one parser, one-line errors.

A sweep is described by keys such as ``steps=10,20,50 eta=0,0.5,1 sampler=ddim,sigma_hat n=1000``.
The same names are the keys of a YAML file (``sweeps/*.yaml``); values given on the command line
win over the file's. Value forms:

- ``a,b,c``   a list (for the sweep's axes: ``steps``, ``eta``, ``spacing``, ``sampler``,
  ``seeds``, and for ``metrics``); a single value is a one-element list;
- ``lo..hi``  an inclusive range, only for ``steps`` (integers) and ``eta`` (floats), and only in
  search mode (``--search pareto``); a grid needs explicit lists;
- scalars for everything else (``n``, ``batch``, ``checkpoint``, ...).

Every malformed token (``steps=``, ``steps=a``, ``=3``, ``steps``), out-of-range value
(``steps=0``, ``eta=-1``, ``n=0``), unknown or repeated key raises ``DDIMError`` with one line
naming the problem and the fix. Checks that need the checkpoint (``steps`` ≤ T) happen in
``bench.sweep.resolve.resolve_spec``. The grid's axes take their type, bounds and names from
``bench.store.axes.AXES``, which checks a grid read back from a sweep's store the same way; the sampler list is
``ddim.names.SAMPLERS`` (the sampler registry's names, kept equal by a test), read without importing torch. A
deprecated key (``ALIASES``: ``schedule`` for ``spacing``) still works, with one warning line naming its replacement.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

from bench.console import warn
from bench.store.axes import AXES
from bench.store.renames import OLD_SPACING
from bench.sweep.spec import Range, SweepSpec  # Range: a parsed lo..hi value
from ddim.errors import DDIMError

__all__ = ["ALIASES", "KEYS", "Key", "example", "load_config", "merge", "parse_overrides", "parse_value", "per_dataset"]


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
    auto: bool = False  # also takes the word "auto" (decided at run time)


def _datasets() -> Sequence[str]:
    from ddim.data import DATASETS

    return DATASETS


def _extractors() -> Sequence[str]:
    from bench.metrics.fidelity import EXTRACTORS

    return EXTRACTORS


def _metrics() -> Sequence[str]:
    from bench.metrics.fidelity import METRICS

    return METRICS


def _axis(name: str, text: str, ranged: bool = False, example: str = "") -> Key:
    """The list key of a grid's axis: its type, bounds and names are the axis's (``bench.store.axes.AXES``, which
    also checks the grids read back from a store)."""
    axis = AXES[name]
    kind = "choice" if axis.names else {int: "int", float: "float"}[axis.kind]
    choices = (lambda: axis.choices) if axis.names else None
    return Key(kind, text, True, ranged, minimum=axis.minimum, choices=choices, example=example)


KEYS: dict[str, Key] = {
    "name": Key(
        "str",
        "sweep name: the study in the storage and reports/<name>/ (default: the --config file's name, else sweep)",
        example="name=digits-grid",
    ),  # fmt: skip
    "checkpoint": Key(
        "str",
        "run directory or .pt checkpoint file (default: the newest run under runs/)",
        example="checkpoint=runs/digits",
    ),  # fmt: skip
    "dataset": Key("choice", "reference dataset (default: the checkpoint's)", choices=_datasets),
    "data_root": Key("str", "folder holding the datasets", example="data_root=data"),
    "n": Key("int", "samples per cell (the paper: 50000)", minimum=1, example="n=1000"),
    "batch": Key(
        "int",
        "images per sampling batch, or auto: each worker takes the largest power of two that fits its share of "
        "half its GPU's free memory (at most 1024 and n; 256 on a CPU); samples do not depend on it beyond "
        "float rounding",
        minimum=1,
        example="batch=256",
        auto=True,
    ),  # fmt: skip
    "seeds": _axis("seeds", "seed blocks; block b uses seeds seed_base+b·n+i", example="seeds=0,1,2"),
    "seed_base": Key("int", "first seed of block 0", minimum=0, example="seed_base=0"),
    "steps": _axis("steps", "sampling steps S (≤ T)", ranged=True, example="steps=10,20,50"),
    "eta": _axis("eta", "DDIM η (eq. 16, ≤ 1 or where eq. 12 holds)", ranged=True, example="eta=0,0.5,1"),
    "spacing": _axis("spacing", "timestep spacing of τ (default: the paper's for the dataset, else uniform)"),
    "sampler": _axis("sampler", "sampler"),
    "extractor": Key("choice", "feature extractor (default: per dataset)", choices=_extractors),
    "metrics": Key("choice", "metrics to compute", True, choices=_metrics),
    "search": Key("choice", "search mode instead of a grid", choices=lambda: ("pareto",)),
    "trials": Key("int", "search mode: number of settings to try", minimum=1, example="trials=40"),
    "objective": Key("choice", "search mode: cost axis beside FID", choices=lambda: ("nfe", "time")),
    "device": Key("str", "auto, cpu, cuda or cuda:N", example="device=cuda"),
    "compile": Key("bool", "torch.compile the network (default: per device, eager on the CPU)", example="compile=true"),
    "channels_last": Key(
        "bool",
        "run the network in channels_last (NHWC) memory format: ≈ 1.2× faster on an AVX-512 Xeon (fused GroupNorm); "
        "samples equal up to float rounding",
        example="channels_last=true",
    ),
    "bf16": Key(
        "bool",
        "run the network under bfloat16 autocast (faster on GPUs with bf16 tensor cores and on AMX CPUs, far "
        "slower on CPUs without bfloat16 instructions; FID moves beyond rounding); recorded as precision bf16, "
        "and a sweep is all bf16 or all float32 (the paper: false)",
        example="bf16=true",
    ),  # fmt: skip
    "interpolation": Key("bool", "write the slerp interpolation strip at the end", example="interpolation=true"),
    "inversion": Key("bool", "measure η = 0 inversion error per S (Table 2)", example="inversion=true"),
    "inversion_n": Key("int", "real images used for the inversion table", minimum=1, example="inversion_n=64"),
    "cache_dir": Key("str", "cache for reference statistics and the classifier", example="cache_dir=.cache/ddimbench"),
    "inception_weights": Key(
        "str",
        "Inception weights file (default: $DDIMBENCH_INCEPTION_WEIGHTS, else the torch hub cache)",
        example="inception_weights=pt_inception.pth",
    ),  # fmt: skip
    "artifacts": Key("str", "folder for sample grids (default ddimbench-sweeps/<name>)", example="artifacts=out"),
}
ALIASES = {OLD_SPACING: "spacing"}  # deprecated key -> its key: the old word for the timestep spacing
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _default_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(_default_text(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe_keys() -> list[tuple[str, str]]:
    """``(key=default, help)`` for every key, for ``ddimbench sweep --help``: the default is ``SweepSpec``'s
    (what ``resolve_spec`` uses) unless the key's help says how it is chosen per sweep."""
    out = []
    for name, k in KEYS.items():
        field = SweepSpec.__dataclass_fields__.get(name)
        default = None if field is None or "default" in k.help else field.default
        static = default not in (None, "", MISSING)
        out.append((f"{name}={_default_text(default)}" if static else name, k.help))
    return out


def example(name: str) -> str:
    k = KEYS[name]
    if k.example:
        return k.example
    if k.choices is not None:
        opts = list(k.choices())
        return f"{name}={','.join(opts[:2]) if k.is_list else opts[0]}"
    return f"{name}=VALUE"


def _current(name: str) -> str:
    """The key of ``name``: itself, or for a deprecated alias its replacement (after one warning line)."""
    new = ALIASES.get(name)
    if new is None:
        return name
    warn(f"the sweep key {name!r} is deprecated; write {new}= (or {new}: in a sweep file) instead")
    return new


def _unknown_key(name: str) -> DDIMError:
    close = difflib.get_close_matches(name, KEYS, n=1)
    if close:  # the likely fix alone; the help lists every key
        return DDIMError(f"unknown key {name!r}; did you mean {close[0]!r}? (`ddimbench sweep --help` lists every key)")
    return DDIMError(f"unknown key {name!r}; valid keys: {', '.join(KEYS)}")


def _scalar(name: str, text: str) -> Any:
    """One value of key ``name`` from its text, type- and bound-checked."""
    k = KEYS[name]
    text = text.strip()
    if not text:
        raise DDIMError(f"{name} has an empty value; write e.g. {example(name)}")
    if k.auto and text.lower() == "auto":
        return "auto"
    if k.kind == "int":
        if not re.fullmatch(r"[+-]?\d+", text):
            also = f" or {name}=auto" if k.auto else ""
            raise DDIMError(f"{name}={text!r} is not an integer; write e.g. {example(name)}{also}")
        value: Any = int(text)
    elif k.kind == "float":
        if not _NUMBER.match(text):
            raise DDIMError(f"{name}={text!r} is not a number; write e.g. {example(name)}")
        value = float(text) + 0.0  # -0 is 0: one cell, one key
        if not math.isfinite(value):
            raise DDIMError(f"{name}={text!r} is not finite; write e.g. {example(name)}")
    elif k.kind == "bool":
        low = text.lower()
        if low not in _TRUE + _FALSE:
            raise DDIMError(f"{name}={text!r} is not true/false; write {name}=true or {name}=false")
        return low in _TRUE
    elif k.kind == "choice":
        options = tuple(k.choices()) if k.choices else ()
        match = [o for o in options if o.lower() == text.lower()]  # any case: dataset=MNIST
        if not match:
            raise DDIMError(f"unknown {name} {text!r}; choose from {', '.join(options)}")
        return match[0]
    else:
        return text
    if k.minimum is not None and value < k.minimum:
        bound = f"≥ {k.minimum:g}"
        raise DDIMError(f"{name}={text} is out of range: {name} must be {bound}; write e.g. {example(name)}")
    return value


def parse_value(name: str, text: str) -> Any:
    """The typed value of ``name=text``: a list for list keys, a ``Range`` for ``lo..hi``."""
    if name not in KEYS:
        raise _unknown_key(name)
    k = KEYS[name]
    text = text.strip()
    if not text:
        raise DDIMError(f"{name}= has no value; write e.g. {example(name)}")
    if ".." in text and k.ranged:  # paths like checkpoint=../run are plain values
        lo_text, _, hi_text = text.partition("..")
        if "," in text:
            raise DDIMError(f"{name}={text} mixes a range and a list; give one range lo..hi or a list a,b,c")
        lo, hi = _scalar(name, lo_text), _scalar(name, hi_text)
        if lo > hi:
            raise DDIMError(f"{name}={text}: the range is empty (lo > hi); write {name}={hi}..{lo}")
        return Range(lo, hi)
    parts = text.split(",")
    if len(parts) > 1 and not k.is_list:
        raise DDIMError(f"{name}={text}: {name} takes one value, not a list; write e.g. {example(name)}")
    values = [_scalar(name, p) for p in parts]
    if not k.is_list:
        return values[0]
    if len(set(values)) != len(values):
        twice = next(v for i, v in enumerate(values) if v in values[:i])  # named alone: the list may be long
        raise DDIMError(f"{name} repeats a value ({twice if isinstance(twice, str) else f'{twice:g}'}); list each "
                        "value once")  # fmt: skip
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
        name = _current(name.replace("-", "_"))
        if name not in KEYS:
            raise _unknown_key(name)
        if name in out:
            raise DDIMError(f"{name} is given twice; give it once, e.g. {example(name)}")
        out[name] = parse_value(name, text)
    return out


def _yaml_text(name: str, value: Any, where: str) -> str:
    """A YAML value as override text: lists joined with commas, scalars as written."""
    if value is None:
        raise DDIMError(f"{where}: {name} has no value; write e.g. {example(name)}")
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, (list, tuple, dict)) or v is None for v in value):
            raise DDIMError(f"{where}: {name} must be a flat list of values; write e.g. {example(name)}")
        return ",".join(_yaml_scalar(v) for v in value)
    if isinstance(value, dict):
        raise DDIMError(f"{where}: {name} cannot be a mapping; write e.g. {example(name)}")
    return _yaml_scalar(value)


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class _DuplicateKey(Exception):
    pass


def _unique_key_loader() -> type:
    """yaml's SafeLoader, except that a mapping repeating a key is an error (YAML says keys are unique; PyYAML
    keeps the last silently), as a key repeated on the command line is."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict:
            seen: set = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, str | int | float | bool):
                    continue  # an unhashable key: SafeLoader's own error follows
                if key in seen:
                    raise _DuplicateKey(f"{key} is given twice (line {key_node.start_mark.line + 1})")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return Loader


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML sweep file into typed values (same keys and checks as ``parse_overrides``).

    ``spacing`` may be a mapping from dataset name to spacing(s) with an optional ``default``
    (the paper used quad for CIFAR10 and uniform elsewhere); it is returned as a dict of lists and
    resolved for the sweep's dataset by ``per_dataset``.
    """
    import yaml

    p = Path(path)
    if not p.exists():
        raise DDIMError(f"sweep config {str(p)!r} not found; pass an existing YAML file to --config")
    if not p.is_file():
        raise DDIMError(f"sweep config {str(p)!r} is not a regular file; pass a YAML file to --config")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_unique_key_loader())  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError as exc:
        raise DDIMError(f"sweep config {p} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except _DuplicateKey as exc:
        raise DDIMError(f"sweep config {p}: {exc}; give each key once") from None
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
        name = _current(str(raw_name).replace("-", "_"))
        try:
            if name not in KEYS:
                raise _unknown_key(name)
            if name in out:  # e.g. seed-base and seed_base
                raise DDIMError(f"{name} is given twice; give it once, e.g. {example(name)}")
            if name == "spacing" and isinstance(value, dict):
                out[name] = {str(ds): parse_value(name, _yaml_text(name, v, str(p))) for ds, v in value.items()}
            else:
                out[name] = parse_value(name, _yaml_text(name, value, str(p)))
        except DDIMError as exc:
            msg = str(exc)
            raise DDIMError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from None
    return out


def per_dataset(value: Any, dataset: str, key: str = "spacing") -> Any:
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
