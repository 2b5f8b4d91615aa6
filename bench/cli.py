"""The ``ddimbench`` command line (the only module that imports Typer).

Every command parses its options into a config, calls one library function and maps ``DDIMError`` (and
unwritable paths) to one line on stderr and exit code 2, without a traceback. Progress goes to stderr
(``bench.console``). Named choices are ``Literal``s of the library's own name lists (``--help`` and shell
completion show them); ``train``'s options are the fields of ``TrainConfig`` (``config_options``).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import typer
from rich.console import Console
from rich.markup import escape

from bench.console import (
    COMPARE_HELP,
    DEVICE_HELP,
    DEVICE_METAVAR,
    DOWNLOAD_HELP,
    FORCE_HELP,
    INCEPTION_HELP,
    LazyBar,
    error_message,
    usage_line,
    version_text,
)
from bench.metrics import EXTRACTORS, METRICS
from bench.report import paper
from bench.sample_config import SampleConfig
from bench.store.untrusted import command_line, safe_url
from bench.sweep.devices import DEVICES_HELP, DRY_RUN_HELP, WORKERS_HELP
from bench.sweep.overrides import describe_keys
from bench.tracking.conventions import WandbOptions
from bench.tracking.reach import check_mode_env
from ddim.allocator import keep_freed_memory
from ddim.errors import DDIMError, printable
from ddim.names import BETA_SCHEDULES, DATASETS, LABELLED_DATASETS, SAMPLERS, SPACINGS
from ddim.train_config import TrainConfig

app = typer.Typer(
    name="ddimbench",
    help="DDIM (Song et al. 2020): train, sample, score and benchmark diffusion models.",
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err = Console(stderr=True)

# The library's name lists as option types: --help shows them, shells complete them, any case is accepted.
Dataset = Literal[DATASETS]
LabelledDataset = Literal[LABELLED_DATASETS]
Spacing = Literal[SPACINGS]
Sampler = Literal[SAMPLERS]
BetaSchedule = Literal[BETA_SCHEDULES]
Extractor = Literal[EXTRACTORS]


def _version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """DDIM (Song et al. 2020): train, sample, score and benchmark diffusion models."""


def _say(*lines: str) -> None:
    """Status lines on stderr, each printed literally (``printable``): paths and values may contain [brackets]."""
    err.print("\n".join(printable(safe_url(t)) for t in lines), markup=False, highlight=False, soft_wrap=True)


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(printable(safe_url(message)))}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def guarded(fn: Callable) -> Callable:
    """Map our errors, OS failures and truncated files to one line + exit 2; Ctrl-C to exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (DDIMError, OSError, EOFError) as exc:
            raise _fail(error_message(exc)) from None
        except KeyboardInterrupt:
            _say("interrupted; rerun the same command to resume")
            raise typer.Exit(130) from None

    return wrapper


def config_options(cls: type, **special: dict[str, Any]) -> Callable:
    """Give a command one option per field of the frozen config ``cls``, after its own parameters (name, type, default
    and help from the field's metadata), so the options cannot drift from the config. ``special[field]`` overrides:
    ``type`` (choices; tuples as text), ``flags``, ``default`` (None: the command decides), ``metavar``, ``omit``."""
    import dataclasses
    import inspect
    import typing

    hints = typing.get_type_hints(cls)

    def wrap(fn: Callable) -> Callable:
        params, kw = [], inspect.Parameter.KEYWORD_ONLY
        for f in dataclasses.fields(cls):
            if (sp := special.get(f.name, {})).get("omit"):
                continue
            default = sp.get("default", ... if f.default is dataclasses.MISSING else f.default)  # ...: required
            option = typer.Option(default, *sp.get("flags", ()), help=f.metadata.get("help"),
                                  metavar=sp.get("metavar"), case_sensitive=False)  # fmt: skip
            kind = sp.get("type", hints[f.name])
            params.append(inspect.Parameter(f.name, kw, default=option, annotation=kind))
        own = [q.replace(kind=kw) for q in inspect.signature(fn).parameters.values() if q.kind != q.VAR_KEYWORD]
        fn.__signature__ = inspect.Signature([*params, *own])
        fn.__annotations__ = {q.name: q.annotation for q in [*params, *own]}
        return fn

    return wrap


@app.command()
@guarded
@config_options(
    TrainConfig,
    dataset={"type": Dataset},
    beta_schedule={"type": BetaSchedule},
    ch_mult={"type": str | None},
    attn_resolutions={"type": str | None},
    T={"flags": ("--T",)},
    device={"metavar": DEVICE_METAVAR},
    max_steps={"default": None},  # None: decided below (--epochs changes both)
    sample_every={"default": None},
)
@config_options(WandbOptions)
def train(
    resume: bool = typer.Option(False, help="Continue --run-dir and its W&B run from the newest checkpoint."),
    dry_run: bool = typer.Option(False, help="Print the resolved config as JSON and exit."),
    **fields: Any,
) -> None:
    """Train an ε-model with Algorithm 1 (resumable; Ctrl-C / SIGTERM checkpoints and exits)."""
    wandb = WandbOptions(**{k: fields.pop(k) for k in WandbOptions.__dataclass_fields__})
    if fields["epochs"] is not None and fields["max_steps"] is not None:
        raise DDIMError("--epochs and --max-steps both given; pass one (an epoch is N_train / --batch-size steps)")
    if fields["sample_every"] is None:
        fields["sample_every"] = 0 if fields["epochs"] is not None else 500  # --epochs: a grid at each epoch end
    cfg = TrainConfig.from_dict({k: v for k, v in fields.items() if v is not None})  # None: the config's default
    cfg.validate()
    cfg = cfg.resolved()  # --epochs → max_steps, from the size of the training split
    if dry_run:
        typer.echo(json.dumps(cfg.to_dict(), indent=2))
        return
    _train(cfg, resume, wandb)


def _train(cfg: Any, resume: bool, wandb: WandbOptions) -> None:
    from bench.tracking.training import train_tracked
    from ddim.distributed import env_world

    result = train_tracked(cfg, resume, wandb, err)
    where = result.checkpoint or cfg.run_dir
    if result.interrupted:
        _say(f"stopped by signal at step {result.step}; checkpoint {where}; rerun with --resume to continue")
        raise typer.Exit(130)
    loss = "" if result.last_loss is None else f", loss {result.last_loss:.4g}"
    if env_world()[0] == 0:  # under torchrun only rank 0 reports
        _say(f"done: step {result.step}{loss}, checkpoint {where}")


@app.command()
@guarded
@config_options(
    SampleConfig,
    n={"flags": ("-n", "--n")},
    spacing={"type": Spacing, "default": None},  # None: not given (the deprecated --schedule may stand in)
    sampler={"type": Sampler},
    batch_size={"type": str, "metavar": "INTEGER|auto"},
    device={"metavar": DEVICE_METAVAR},
)
def sample(
    dry_run: bool = typer.Option(False, help="Print the resolved config as JSON and exit."),
    schedule: Spacing | None = typer.Option(None, hidden=True, case_sensitive=False, help="Deprecated: --spacing."),
    **fields: Any,
) -> None:
    """Write exactly n samples as PNG files (plus grid.png) into --out; rerun to resume."""
    from bench.generate import generate

    cfg = SampleConfig.from_options(fields, schedule)
    if dry_run:
        typer.echo(json.dumps(asdict(cfg), indent=2))
        return
    with LazyBar("sample", err) as bar:
        manifest = generate(cfg, progress=bar.update)
    _say(f"wrote {cfg.n} samples (NFE {manifest['settings']['nfe']} each) and {manifest['grid']} to {cfg.out}")


@app.command()
@guarded
def classifier(
    dataset: LabelledDataset = typer.Option("digits", case_sensitive=False, help="A dataset with class labels."),
    data_root: str = typer.Option("data", help="Where dataset files live."),
    resolution: int | None = typer.Option(None, help="Image side in pixels (default: the dataset's)."),
    cache_dir: str = typer.Option(".cache/ddimbench", help="Cache for the classifier and reference statistics."),
    device: str | None = typer.Option(None, hidden=True, help="Ignored: the classifier is trained on the CPU."),
    download: bool = typer.Option(False, help="Let torchvision download MNIST/CIFAR-10 into --data-root."),
) -> None:
    """Train (once, on the CPU: the same on every machine) the classifier that extracts offline FID/IS/KID features."""
    from bench.console import warn
    from bench.metrics.classifier import ensure_classifier, summary_line
    from ddim.data import fetch_dataset

    if device is not None:
        warn("--device is ignored: the classifier is always trained on the CPU, so every machine gets the same one")
    if download:
        fetch_dataset(dataset, data_root)
    with err.status(f"classifier for {dataset} (trained on first use)…"):
        path, info = ensure_classifier(dataset, data_root=data_root, cache_dir=cache_dir, resolution=resolution)
    _say(summary_line(path, info))


@app.command()
@guarded
def metrics(
    folder: str = typer.Argument(..., help="Folder of PNG samples (a `ddimbench sample` folder or any PNGs)."),
    dataset: Dataset = typer.Option(..., case_sensitive=False, help="Reference dataset."),
    data_root: str = typer.Option("data", help="Where dataset files live."),
    split: str = typer.Option("train", help="Reference split."),
    resolution: int | None = typer.Option(None, help="Image side in pixels (default: the dataset's)."),
    extractor: Extractor | None = typer.Option(
        None, case_sensitive=False, help="Feature extractor (default: classifier for digits/mnist, else inception)."
    ),
    metric: list[str] = typer.Option(  # typer takes no list of Literal: the choices go into the metavar
        list(METRICS), "--metric", metavar="<" + "|".join(METRICS) + ">", help="A metric (repeat the option)."
    ),
    n: int | None = typer.Option(None, "-n", "--n", help="Refuse to score unless exactly n samples are found."),
    inception_weights: str | None = typer.Option(None, help=INCEPTION_HELP),
    download: bool = typer.Option(False, help=DOWNLOAD_HELP),
    cache_dir: str = typer.Option(".cache/ddimbench", help="Cache for reference statistics and the classifier."),
    device: str = typer.Option("auto", metavar=DEVICE_METAVAR, help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Score a folder of samples: FID, IS and KID through torch-fidelity."""
    from bench.metrics.folder import result_lines, score_folder
    from ddim.runtime import resolve_device

    with err.status("computing metrics…"):
        result = score_folder(folder, dataset=dataset, download=download, data_root=data_root, split=split,
                              resolution=resolution, extractor=extractor, metrics=metric, n_expected=n,
                              device=str(resolve_device(device)), cache_dir=cache_dir,
                              inception_weights=inception_weights)  # fmt: skip
    typer.echo(json.dumps(result, indent=2, sort_keys=True) if as_json else "\n".join(result_lines(result)))


def _sweep_keys() -> str:
    """The sweep keys with their defaults, from the code's own list (``bench.sweep.overrides.describe_keys``)."""
    lines = [f"[bold]{escape(key)}[/] — {escape(text)}" for key, text in describe_keys()]
    return "Sweep keys (KEY=VALUES; lists a,b,c; ranges lo..hi with --search):\n" + "\n".join(lines)


@app.command(context_settings={"allow_extra_args": False}, epilog=_sweep_keys())
@guarded
@config_options(WandbOptions, wandb_artifacts={"omit": True})
def sweep(
    overrides: list[str] | None = typer.Argument(
        None, metavar="KEY=VALUES...", help="e.g. steps=10,20,50 eta=0,0.5,1 checkpoint=runs/digits n=1000"
    ),
    config: str | None = typer.Option(None, "--config", help="YAML sweep definition (sweeps/*.yaml); KEY=VALUES win."),
    search: str | None = typer.Option(None, help="pareto: multi-objective search (FID vs cost) over lo..hi ranges."),
    workers: int | None = typer.Option(None, min=1, help=WORKERS_HELP),
    devices: str | None = typer.Option(None, metavar="LIST", help=DEVICES_HELP),
    storage: str | None = typer.Option(None, help="Optuna storage URL (default: a SQLite file here)."),
    device: str | None = typer.Option(
        None, metavar=DEVICE_METAVAR, help=DEVICE_HELP + " Or device=... (default: auto)."
    ),
    inception_weights: str | None = typer.Option(None, help=INCEPTION_HELP + " Same as inception_weights=..."),
    download: bool = typer.Option(False, help=DOWNLOAD_HELP),
    dry_run: bool = typer.Option(False, help=DRY_RUN_HELP),
    forget: bool = typer.Option(False, help="Forget the grid of a mistaken run (its KEY=VALUES); run nothing."),
    **wb: Any,
) -> None:
    """Run a grid (or Pareto search) of sampler settings and score every cell; rerun to finish what is missing.

    Without checkpoint= it uses the newest training run under runs/ (and says which)."""
    from bench.report.front import summary_lines
    from bench.sweep.forget import forget_grid
    from bench.sweep.resolve import resolve_spec
    from bench.sweep.runner import dry_run_lines, run_sweep

    options = {"device": device, "inception_weights": inception_weights}  # given twice → one-line error
    tokens = [*(overrides or []), *(f"{k}={v}" for k, v in options.items() if v is not None)]
    spec = resolve_spec(tokens, config, search=search, download=download, note=_say)
    if forget:  # its grid forgotten instead of run (--dry-run: what would be), bench.sweep.forget
        return _say(forget_grid(spec, storage, dry_run))
    if dry_run:
        _say(*dry_run_lines(spec, workers, devices, storage))  # after refusing what the run would refuse
        typer.echo(json.dumps(asdict(spec), indent=2, default=str))
        return
    summary = run_sweep(spec, workers=workers, storage=storage, wandb=WandbOptions(**wb), command=command_line(),
                        devices=devices)  # fmt: skip
    _say(*summary_lines(summary, spec))
    if summary.failed or summary.missing:  # a failed cell, or one a dead worker left
        raise typer.Exit(1)


@app.command()
@guarded
@config_options(WandbOptions, wandb_artifacts={"omit": True})
def report(
    names: list[str] = typer.Argument(
        ..., metavar="NAME", help="Sweep name(s) (name=... of `ddimbench sweep`); several: one combined Table 1."
    ),
    storage: str | None = typer.Option(None, help="Optuna storage URL of the sweep (default: the local SQLite file)."),
    out: str | None = typer.Option(None, help="Output folder (default: reports/<name>, reports/<A>+<B> for several)."),
    compare_paper: list[str] | None = typer.Option(None, metavar=f"<{'|'.join(paper.datasets())}>", help=COMPARE_HELP),
    force: bool = typer.Option(False, help=FORCE_HELP),
    **wb: Any,
) -> None:
    """Write tables (md, tex), CSV, plots, grids, manifest and index.html from stored sweep results; several
    sweeps make one Table 1 with a column block per dataset; a Pareto search is shown as its front."""
    from bench.report.build import make_reports

    wandb = WandbOptions(**wb)
    path = make_reports(names, storage=storage, out=out, compare_paper=compare_paper, force=force, wandb=wandb)
    _say(f"report written to {path} (open {Path(path) / 'index.html'})")


@app.command()
@guarded
def dashboard(
    name: str = typer.Argument(..., metavar="NAME", help="Sweep name (name=... of `ddimbench sweep`)."),
    storage: str | None = typer.Option(None, help="Optuna storage URL of the sweep (default: the local SQLite file)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int | None = typer.Option(None, min=0, max=65535, help="Port (default: 8080 when free, else a free one)."),
) -> None:
    """Serve optuna-dashboard over a sweep's store: its cells (S, η, FID, metrics) and sample grids; Ctrl-C stops."""
    from bench.report.dashboard import serve

    try:
        serve(name, storage=storage, host=host, port=port, say=_say)
    except KeyboardInterrupt:
        _say("dashboard stopped")
        raise typer.Exit(130) from None


@app.command("import-weights")
@guarded
def import_weights(
    src: str = typer.Argument(..., help="A diffusers UNet2DModel/pipeline folder, Hub name or official .ckpt."),
    out: str = typer.Option(..., help="Run directory to write our checkpoint into (must hold none yet)."),
    fmt: str = typer.Option("auto", "--format", help="auto, diffusers or official."),
    dataset: Dataset | None = typer.Option(None, case_sensitive=False, help="What the model generates (for metrics)."),
    preset: str | None = typer.Option(None, help="Our preset supplying resolution/dropout for official weights."),
    config: str | None = typer.Option(None, help="The official YAML (e.g. cifar10.yml) for official weights."),
    T: int | None = typer.Option(None, "--T", help="Diffusion steps T when the source does not say (default 1000)."),
) -> None:
    """Convert pretrained DDPM weights into a ddimbench checkpoint (then `sweep checkpoint=OUT`)."""
    from ddim.convert import import_weights as convert

    path = convert(src, out, fmt=fmt, preset=preset, config=config, dataset=dataset, T=T)
    _say(f"wrote {path}; next: ddimbench sweep checkpoint={out} ...")


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: returns the exit code (0 ok, 1 failed cells, 2 bad input, 130 interrupted).

    Usage errors (unknown option, bad type) are one line too, not click's framed box; a bare ``ddimbench`` prints
    the help and exits 0."""
    from typer.exceptions import TyperException

    keep_freed_memory()  # every command reuses its large tensors' memory (ddim.allocator)
    os.environ.setdefault("WANDB_SILENT", "true")
    args = sys.argv[1:] if argv is None else list(argv)
    check_mode_env(lambda line: _say(f"warning: {line}"))  # a bad WANDB_MODE: once, before any worker inherits it
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=args or ["--help"], prog_name="ddimbench", standalone_mode=False)
    except typer.Abort:
        _say("interrupted; rerun the same command to resume")
        return 130
    except TyperException as exc:  # click's usage and parameter errors: the same one line as our own errors
        _fail(usage_line(exc))
        return int(getattr(exc, "exit_code", 2))
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
