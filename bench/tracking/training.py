"""``ddimbench train`` around ``ddim.training.train``: a memory check first, W&B tracking, and progress.

Under torchrun only rank 0 warns, tracks and shows progress. Progress is ``bench.console.LazyBar``:
a live bar on a terminal, and in a log a line every ``LINE_EVERY_S`` seconds with the step, the loss,
images/s and an ETA.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.console import LazyBar, note, warn
from bench.tracking.conventions import (
    WandbOptions,
    model_artifact,
    new_run_id,
    read_run_id,
    upload,
    wandb_options,
    write_run_id,
)
from bench.tracking.tracker import LazyTracker, NullTracker, Tracker
from ddim.errors import one_line
from ddim.train_config import UNET_OVERRIDES, TrainConfig
from ddim.training import TrainResult

# define_metric summaries: the best value of the run, not the last one.
TRAIN_SUMMARIES = {"loss": "min", "mse": "min", "images_per_s": "max"}


def resolved_config(cfg: TrainConfig) -> dict:
    """The run's W&B config: ``cfg`` with the model fields it left to the preset filled in (``preset``, ``ch``,
    ``ch_mult``, ..., ``resolution``, ``channels``) and ``model``, the UNet it trains (channels and resolution
    from the data): what ``ddim.training`` builds, not the command line's Nones."""
    unet = cfg.unet_config()
    model = {**unet.to_dict(), "out_channels": unet.out_ch}
    filled = {k: model[k] for k in UNET_OVERRIDES}
    return {**cfg.to_dict(), **filled, "preset": cfg.preset or cfg.dataset, "resolution": unet.resolution,
            "channels": unet.in_channels, "model": model}  # fmt: skip


def train_tracked(cfg: TrainConfig, resume: bool, wandb: str | WandbOptions | None, console: Console) -> TrainResult:
    """Train ``cfg`` (resolved: ``cfg.max_steps`` is the run's end), logging to W&B per ``wandb``.

    The run: group and job type "train", named after the run directory, config = ``cfg`` plus the resolved
    model (``model``: the preset with its overrides). Its id is kept in the run directory, so ``--resume``
    continues the same W&B run. Each checkpoint becomes a version of the ``model-<run dir name>`` artifact
    (aliases ``step-<N>`` and ``latest``), uploaded or by reference per ``--wandb-artifacts``.
    """
    from bench.tracking.wandb_run import make_tracker
    from ddim import fused_norm
    from ddim.distributed import env_world
    from ddim.memory import training_warning
    from ddim.runtime import resolve_device, use_compile
    from ddim.training import train

    rank = env_world()[0]  # a RANK that is no integer: one line, before anything is made

    def on_data(_: int) -> None:  # once the data is found: a missing dataset is then the only line
        if warning := training_warning(cfg):
            console.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
        device = resolve_device(cfg.device)  # bf16 autocast is CUDA's only (TrainConfig.bf16)
        fused = fused_norm.needs_build(device, compiled=use_compile(cfg.compile, device))
        if cfg.channels_last and rank == 0 and fused:
            note(fused_norm.BUILD_NOTE, console)  # the first training step compiles them

    opts = wandb_options(wandb)
    run_dir = Path(cfg.run_dir)

    def start() -> Tracker:
        run_id = (read_run_id(run_dir, warn) if resume else None) or new_run_id()
        started = make_tracker(
            opts,
            name=run_dir.name,
            job_type="train",
            config=resolved_config(cfg),
            dir=run_dir,
            group="train",
            run_id=run_id,
            metrics=TRAIN_SUMMARIES,
        )
        if started.mode != "disabled":
            try:  # the run directory exists: training has started
                write_run_id(run_dir, run_id)
            except OSError as exc:  # tracking never stops the work
                warn(f"W&B: cannot keep the run id in {run_dir} ({one_line(exc)}); --resume will start a new W&B run")
        return started

    # Lazy: no run for a command that fails before training starts (missing data, refused resume).
    tracker: Tracker = LazyTracker(start) if rank == 0 and opts.mode != "disabled" else NullTracker()

    def on_checkpoint(path: Path, step: int) -> None:
        tracker.log_artifact(model_artifact(path), "model", [path], upload(path, opts.wandb_artifacts),
                             aliases=[f"step-{step}", "latest"])  # fmt: skip

    with tracker, LazyBar("train", console, unit="step", loss="loss …", speed="") as bar:
        state: dict[str, Any] = {"t": None, "step": None, "speed": ""}

        def progress(step: int, metrics: dict) -> None:
            now = time.perf_counter()
            if state["t"] is None:
                state["t"], state["step"] = now, step
            elif now - state["t"] >= 1.0 and step > state["step"]:  # images/s over windows of at least 1 s
                rate = (step - state["step"]) * cfg.batch_size / (now - state["t"])
                state["t"], state["step"], state["speed"] = now, step, f"{rate:.0f} images/s"
            loss = metrics.get("loss")
            if rank != 0:
                return
            text = f"loss {loss:.4g}" if loss is not None else "loss …"
            ready = loss is not None and bool(state["speed"])  # a log's first line has a loss and a rate
            bar.update(step, cfg.max_steps, ready=ready, loss=text, speed=state["speed"])

        result = train(
            cfg,
            resume=resume,
            log=tracker.log,
            on_grid=lambda path, step: tracker.log_image("samples", str(path), step=step),
            progress=progress,
            on_checkpoint=on_checkpoint,
            on_data=on_data,
        )
        tracker.summary({"step": result.step, "final_loss": result.last_loss})  # "loss" holds its minimum
    return result
