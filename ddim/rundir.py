"""A training run's directory and its rules.

```
<run_dir>/config.json                 resolved TrainConfig + UNetConfig (rewritten at every start)
<run_dir>/metrics.jsonl               one JSON line per log point: {"step": k, "loss": ..., ...}
<run_dir>/samples/step-0000500.png    fixed-seed EMA sample grids
<run_dir>/checkpoints/step-0000500.pt atomic checkpoints, the newest ``keep`` kept
```

A directory that already holds a run is only reused with ``resume``, and only for the same
experiment (``check_same_experiment``). On resume, log lines and grids past the checkpoint's step are
dropped, so what is on disk always describes the weights that a later run continues from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ddim.checkpoint import Checkpoint, check_compatible, list_checkpoints, load_checkpoint, remove_stale_temps
from ddim.errors import DDIMError
from ddim.files import atomic_write_json, atomic_write_text, write_error

# TrainConfig fields a resumed run may change: run length, bookkeeping and speed settings. Everything
# else (data, model, optimiser, schedule, seed, batch) defines the experiment and must stay the same.
RESUMABLE_CHANGES = frozenset(
    {
        "max_steps",
        "epochs",
        "save_every",
        "keep",
        "sample_every",
        "grid_size",
        "grid_steps",
        "log_every",
        "device",
        "num_workers",
        "run_dir",
        "data_root",
        "download",
        "bf16",
        "channels_last",
        "compile",
        "compile_backend",
        "tf32",
        "deterministic",
    }
)


def _plain(v: Any) -> Any:
    return json.loads(json.dumps(v))  # tuples -> lists, so a config read back from JSON compares equal


# Compared after resolution by ``check_compatible`` (the UNet, resolution): an explicit value equal to the
# preset's default is the same experiment as leaving it unset.
RESOLVED_ELSEWHERE = frozenset(
    {"resolution", "channels", "preset", "ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "num_groups"}
)


def check_same_experiment(
    old: dict[str, Any], new: dict[str, Any], where: str | Path, skip: frozenset[str] = frozenset()
) -> None:
    """Refuse, in one line, to resume a run with settings that change the experiment (``skip``: keys
    the caller compares otherwise). ``data_root`` may change: the training loop compares the data itself
    (``data_fingerprint``), so moved files resume and other files are refused."""
    for key, value in new.items():
        if key in RESUMABLE_CHANGES or key in skip or key not in old:
            continue
        if _plain(old[key]) != _plain(value):
            flag = "--" + key.replace("_", "-")
            raise DDIMError(
                f"--resume: {flag} {value!r} differs from the run in {where} ({old[key]!r}); "
                "use the original settings or a new --run-dir"
            )


_OWN = ("config.json", "metrics.jsonl", "samples", "checkpoints")  # what a run writes in its folder (W&B aside)


def _holds_run(run_dir: Path) -> bool:
    return (run_dir / "config.json").exists() or bool(list_checkpoints(run_dir))


def _refuse_foreign(run_dir: Path) -> None:
    """A folder without a run's config.json is not a run of ours: refuse it when it holds what a run would rewrite
    (a metrics.jsonl, samples/ or checkpoints/), since starting there truncates the log and deletes grids."""
    if (run_dir / "config.json").exists():
        return
    found = [name for name in _OWN[1:] if (run_dir / name).exists()]
    if found:
        raise DDIMError(f"{run_dir} holds {', '.join(found)} but no run's config.json, so it is not a ddimbench run; "
                        "choose another --run-dir or move them away")  # fmt: skip


def open_run(
    run_dir: str | Path,
    *,
    resume: bool,
    train: dict[str, Any],
    expect: dict[str, Any],
) -> Checkpoint | None:
    """Decide how a run starts: fresh (None) or from the newest checkpoint of ``run_dir``.

    ``expect`` holds ``check_compatible`` keywords (unet, dataset, resolution, diffusion). With
    ``resume`` and no checkpoint yet (a fresh directory, or a run killed before its first save) the
    run starts from scratch, so a pre-emptible job can always pass ``--resume``.
    """
    run_dir = Path(run_dir)
    if not resume:
        if _holds_run(run_dir):
            raise DDIMError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --run-dir")
        _refuse_foreign(run_dir)
        return None
    found = list_checkpoints(run_dir)
    if found:
        try:
            ck = load_checkpoint(found[-1][1])
        except DDIMError as err:
            if len(found) < 2:
                raise
            newest, previous = found[-1][1], found[-2][1]
            raise DDIMError(f"{err}; to resume from {previous.name} instead, move {newest} aside") from None
        if ck.state.get("optimizer") is None or ck.state.get("ema") is None or not ck.train:
            raise DDIMError(f"{ck.path} holds imported weights, not a training state, so it cannot be resumed; "
                            "train in a new --run-dir (or sample from it with --checkpoint)")  # fmt: skip
        check_compatible(ck, **expect, hint="use the original settings or a new --run-dir")
        check_same_experiment(ck.train, train, ck.path, skip=RESOLVED_ELSEWHERE)
        return ck
    _refuse_foreign(run_dir)
    config = run_dir / "config.json"
    if config.exists():
        try:
            saved = json.loads(config.read_text(encoding="utf-8"))
            old, old_unet = saved["train"], saved.get("unet")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise DDIMError(f"{config} is unreadable; delete it or choose another --run-dir") from None
        if not isinstance(old, dict):  # the settings to compare with: anything else would pass unchecked
            raise DDIMError(f"{config} holds train settings that are a {type(old).__name__}, not a mapping, so it was "
                            "edited or damaged; delete it or choose another --run-dir")  # fmt: skip
        check_same_experiment(old, train, config, skip=RESOLVED_ELSEWHERE)
        unet = expect.get("unet")
        if old_unet is not None and unet is not None and _plain(old_unet) != _plain(unet.to_dict()):
            raise DDIMError(f"--resume: the UNet differs from the run in {config}; use the original settings "
                            "or a new --run-dir")  # fmt: skip
    return None


def start_run(run_dir: str | Path, config: dict[str, Any], step: int) -> list[Path]:
    """Write ``config.json`` and make the log and grids agree with ``step`` (the weights' step).

    Returns what this call begins, for ``abandon_run`` should the run fail before its first checkpoint: nothing
    when the run was begun before (its config.json exists), else the folder when this call makes it, else the
    run's files in it (none of which exists yet: ``open_run`` refuses a folder that holds them without a
    config.json)."""
    run_dir = Path(run_dir)
    existed = run_dir.exists() or run_dir.is_symlink()  # a dangling link is the user's too
    begun = [] if (run_dir / "config.json").exists() else [run_dir / n for n in _OWN] if existed else [run_dir]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(run_dir)
        atomic_write_json(run_dir / "config.json", config)
        _truncate_metrics(run_dir / "metrics.jsonl", step)
        for p in (run_dir / "samples").glob("step-*.png"):
            if p.stem[5:].isdigit() and int(p.stem[5:]) > step:
                p.unlink()
    except OSError as exc:
        abandon_run(begun)
        raise write_error("the run directory", run_dir, exc) from None
    return begun


def abandon_run(begun: list[Path]) -> None:
    """Remove what ``start_run`` began (folders with all they hold) after a failure before the run's first
    checkpoint, so that rerunning the same command, the cause fixed, starts afresh instead of asking for
    --resume. Best effort: what cannot be removed stays, and the failure being reported is the one the user sees."""
    for p in begun:
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
        except OSError:
            continue


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (and a line cut short by a kill) so the log matches the weights."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(k + "\n" for k in keep))


def append_metrics(run_dir: str | Path, step: int, metrics: dict[str, float]) -> None:
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
    except OSError as exc:
        raise write_error("metrics", path, exc) from None


RUNS = Path("runs")  # where `ddimbench train` puts runs by default (runs/<dataset>)


def newest_run(root: str | Path = RUNS) -> Path | None:
    """The run directory under ``root`` whose newest checkpoint was written last (None if there is none):
    the run a sweep uses when no checkpoint is named."""
    root = Path(root)
    runs = []
    for run in sorted(root.iterdir()) if root.is_dir() else []:
        found = list_checkpoints(run) if run.is_dir() else []
        if found:
            try:
                runs.append((found[-1][1].stat().st_mtime, run))
            except OSError:  # removed meanwhile (keep= pruning by a running training)
                continue
    return max(runs)[1] if runs else None
