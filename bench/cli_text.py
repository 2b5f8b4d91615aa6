"""The command line's texts that need no Typer: option help, the sweep keys with their defaults (for
``sweep --help``), click's usage errors as one line, and the version."""

from __future__ import annotations

import re

from rich.markup import escape

from ddim.names import DEVICES

DEVICE_METAVAR = "<" + "|".join((*DEVICES, "cuda:N")) + ">"  # cuda:N is not a fixed list: checked by the library
DEVICE_HELP = "auto (CUDA when present), cpu, cuda or cuda:N."
WANDB_HELP = "W&B mode (default: online when a W&B key is configured, else offline)."
INCEPTION_HELP = "Inception weights file (default: $DDIMBENCH_INCEPTION_WEIGHTS, else torch-fidelity's, hub cache)."
DOWNLOAD_HELP = "Fetch what is missing first: MNIST / CIFAR-10 into --data-root, torch-fidelity's Inception weights."


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"ddimbench {version('ddimbench')}"
    except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        return "ddimbench (not installed; run `make install`)"


def sweep_keys() -> str:
    """The sweep keys and their defaults, from the code's own list (``bench.sweep.overrides.KEYS``)."""
    from bench.sweep.overrides import describe_keys

    lines = [f"[bold]{escape(key)}[/] — {escape(text)}" for key, text in describe_keys()]
    return "Sweep keys (KEY=VALUES; lists a,b,c; ranges lo..hi with --search):\n" + "\n".join(lines)


def usage_line(message: str) -> str:
    """click's usage error as one line; a value outside a choice list reads like the library's own refusals."""
    message = " ".join(message.split())
    m = re.fullmatch(r"Invalid value for '([^']+)': (?:Value error, )?('.*') is not one of (.*?)\.?", message)
    if m:
        return f"unknown {m[1]} {m[2]}; choose one of {m[3].replace(chr(39), '')}"
    return f"{message}; see `ddimbench --help`"
