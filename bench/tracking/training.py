"""``ddimbench train`` around ``ddim.training.train``: a memory check first, W&B tracking, and progress.

Under torchrun only rank 0 warns, tracks and shows progress. Progress is ``bench.console.LazyBar``:
a live bar on a terminal, and in a log a line every ``LINE_EVERY_S`` seconds with the step, the loss,
images/s and an ETA.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.console import LazyBar
from ddim.train_config import TrainConfig
from ddim.training import TrainResult


def train_tracked(cfg: TrainConfig, resume: bool, wandb: str | None, console: Console) -> TrainResult:
    """Train ``cfg`` (resolved: ``cfg.max_steps`` is the run's end), logging to W&B per ``wandb``."""
    from bench.tracking.wandb_run import make_tracker
    from ddim.memory import training_warning
    from ddim.training import train

    rank = int(os.environ.get("RANK", "0"))
    warning = training_warning(cfg) if rank == 0 else None
    if warning:
        console.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    tracker = make_tracker(
        wandb if rank == 0 else "disabled",
        name=Path(cfg.run_dir).name,
        job_type="train",
        config=cfg.to_dict(),
        dir=cfg.run_dir,
        group="train",
        lazy=True,  # no run for a command that fails before training starts (missing data, refused resume)
    )
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
        )
        tracker.summary({"step": result.step, "loss": result.last_loss})
    return result
