"""``resolve_spec``: ``key=value`` overrides and a YAML sweep file into a checked ``SweepSpec``.

The overrides and the file are parsed by ``bench.sweep.overrides`` (command-line values win); then
everything is validated before any work: ``steps`` ≤ T of the checkpoint, a loadable checkpoint whose
image shape matches the dataset, enough samples for the metrics, the reference data, the Inception
weights and the device. Each problem is a one-line ``DDIMError``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.store.untrusted import check_name
from bench.sweep.overrides import example, load_config, merge, parse_overrides, parse_value, per_dataset
from bench.sweep.spec import Range, SweepSpec
from ddim.errors import DDIMError

_SCALARS = ("data_root", "n", "batch", "seed_base", "trials", "objective", "device", "compile", "channels_last", "bf16",
            "interpolation", "inversion", "inversion_n", "cache_dir", "inception_weights")  # fmt: skip


def _check_folder(key: str, path: str) -> None:
    """``path`` must be (or be creatable as) a folder: its first existing ancestor is a writable folder."""
    import os

    p = Path(path).absolute()
    existing = next(a for a in (p, *p.parents) if a.exists())
    if not existing.is_dir():
        raise DDIMError(f"{key}={path} cannot be a folder: {existing} is a file; choose another {key}=")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DDIMError(f"{key}={path} is not writable ({existing}); choose another {key}=")


def _check_eta(spec: SweepSpec, alpha_bar: Any) -> None:
    """Every ddim cell's η must keep eq. 12 valid at its timesteps (η ≤ 1 always does): refused up front,
    so a grid never stores a cell that could only fail."""
    from ddim import sampling, schedules

    for cell in spec.cells():
        if cell.sampler == "ddim" and cell.eta is not None and cell.eta > 1:
            sampling.check_eta(alpha_bar, schedules.timesteps(cell.steps, spec.T, cell.spacing), cell.eta)


def _as_tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def resolve_spec(
    tokens: Sequence[str],
    config: str | Path | None = None,
    *,
    search: str | None = None,
    download: bool = False,
    note: Callable[[str], None] | None = None,
) -> SweepSpec:
    """Parse overrides (and a YAML file; command-line values win) into a checked ``SweepSpec``.

    Everything is validated before any work: malformed values, ``steps`` ≤ T of the checkpoint,
    a loadable checkpoint, known sampler / spacing / extractor, the reference data, the Inception
    weights when that extractor is used, and the device. Each problem is a one-line DDIMError.
    Without ``checkpoint=`` the newest training run under runs/ is used and ``note`` says which.
    ``download`` fetches missing reference data (MNIST, CIFAR-10) and Inception weights first.
    """
    from bench.metrics.fidelity import ISC_SPLITS, default_extractor, resolve_inception_weights
    from bench.report import paper
    from ddim.checkpoint import load_checkpoint
    from ddim.data import dataset_info, load_dataset
    from ddim.rundir import RUNS, newest_run
    from ddim.runtime import resolve_device
    from ddim.sampling import MAX_SEED

    given, in_file = parse_overrides(tokens), load_config(config) if config else {}
    values = merge(in_file, given)
    if search is not None:
        values["search"] = parse_value("search", search)
    # 1. The checkpoint decides T, the dataset and the image shape.
    if not values.get("checkpoint"):
        run = newest_run()
        if run is None:
            raise DDIMError(
                f"no checkpoint= given and no training run under {RUNS}/; train one first (`ddimbench train`, "
                "or `make demo`) or add checkpoint=RUN_DIR (a run directory or a .pt file)"
            )
        values["checkpoint"] = str(run)
        if note is not None:
            note(f"no checkpoint= given: using {run}, the newest training run under {RUNS}/")
    ck = load_checkpoint(values["checkpoint"], map_location="cpu")
    T, shape = ck.diffusion.T, (ck.unet.in_channels, ck.unet.resolution)
    dataset = values.get("dataset") or ck.dataset.get("name")
    if not dataset:
        raise DDIMError(f"checkpoint {ck.path} does not name its dataset; add dataset=NAME")
    info = dataset_info(dataset, ck.dataset.get("resolution") if dataset == ck.dataset.get("name") else None)
    if problem := info.mismatch(*shape):
        raise DDIMError(f"{problem}; pass the dataset the model was trained on")
    # 2. Axes and scalars, with defaults; the spacing may be given per dataset.
    name = values.get("name") or (Path(config).stem if config else "sweep")
    check_name(name)
    mode = values.get("search")
    # A grid defaults to the paper's spacing (quad for CIFAR10, else uniform); a search, whose S is arbitrary,
    # to trailing: it starts at t = T − 1 for every S (uniform can start far below it when T % S ≠ 0).
    default = "trailing" if mode else paper.SPACING.get(dataset, "uniform")
    spacing = per_dataset(values.get("spacing", [default]), dataset)
    kw = {k: _as_tuple(values[k]) for k in _SCALARS if k in values}
    spec = SweepSpec(
        name=name,
        checkpoint=str(ck.path),
        dataset=dataset,
        T=T,
        resolution=shape[1],
        seeds=_as_tuple(values.get("seeds", SweepSpec.seeds)),
        steps=_as_tuple(values.get("steps", SweepSpec.steps)),
        eta=_as_tuple(values.get("eta", SweepSpec.eta)),
        spacing=tuple(spacing),
        sampler=_as_tuple(values.get("sampler", SweepSpec.sampler)),
        extractor=values.get("extractor") or default_extractor(dataset),
        metrics=_as_tuple(values.get("metrics", SweepSpec.metrics)),
        search=mode,
        artifacts=str(values.get("artifacts") or Path("ddimbench-sweeps") / name),
        config=None if config is None else str(config),
        **kw,
    )
    # 3. Checks that need the checkpoint or cross two keys.
    # An eta that no sampler takes is refused, as `sample --eta` with another sampler: typed on the command line, or
    # in a sweep file whose own samplers have no ddim. A file's eta under a sampler= typed on the command line is
    # left unused (it is for the file's ddim rows), as the grid leaves it for sigma_hat.
    if "ddim" not in spec.sampler and ("eta" in given or ("eta" in in_file and "sampler" not in given)):
        fix = (
            "drop eta= or add ddim to sampler="
            if "eta" in given
            else f"remove eta from {config} or add ddim to its sampler"
        )
        raise DDIMError(f"eta applies to the ddim sampler only and sampler={','.join(spec.sampler)} has none; {fix}")
    top = spec.steps.hi if isinstance(spec.steps, Range) else max(spec.steps)
    if top > T:
        raise DDIMError(f"steps={top} exceeds the checkpoint's T = {T}; use steps between 1 and {T}")
    if mode is None:
        for key in ("steps", "eta"):
            if isinstance(getattr(spec, key), Range):
                raise DDIMError(
                    f"{key}={getattr(spec, key)} is a range; ranges need --search pareto, a grid needs a list"
                    f" (e.g. {example(key)})"
                )
        _check_eta(spec, ck.alpha_bar())  # also builds the grid: colliding η values are refused here
    elif "fid" not in spec.metrics:
        raise DDIMError("search mode minimises FID; include fid in metrics=")
    elif "ddim" in spec.sampler and (spec.eta.hi if isinstance(spec.eta, Range) else max(spec.eta)) > 1:
        raise DDIMError(f"eta={spec.eta} goes above 1, where eq. 12 can break; search eta within 0..1")
    if "isc" in spec.metrics and spec.n < ISC_SPLITS:
        raise DDIMError(
            f"n={spec.n} is too few for IS (needs ≥ {ISC_SPLITS} samples); raise n or drop isc from metrics="
        )
    if spec.n < 2 and ({"fid", "kid"} & set(spec.metrics)):
        raise DDIMError(f"n={spec.n} is too few for FID/KID (needs ≥ 2 samples); raise n")
    resolve_device(spec.device)
    last = spec.seed_range(max(spec.seeds.hi if isinstance(spec.seeds, Range) else max(spec.seeds), 0))[1]
    if last > MAX_SEED:
        fix = "a smaller seed_base" if spec.seed_base else "a smaller n or fewer seed blocks"
        raise DDIMError(f"the last seed {last} (seed_base + blocks·n) exceeds 2^32 − 1; use {fix}")
    _check_folder("artifacts", spec.artifacts)
    _check_folder("cache_dir", spec.cache_dir)
    if spec.extractor == "inception":
        resolve_inception_weights(spec.inception_weights, download=download)
    if {"fid", "kid"} & set(spec.metrics) or spec.inversion:  # data present?
        load_dataset(dataset, root=spec.data_root, split="train", resolution=info.resolution, download=download)
    return spec
