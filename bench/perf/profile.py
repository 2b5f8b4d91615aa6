"""``python -m bench.perf.profile``: torch.profiler tables of one training step, ours vs diffusers' twin.

Profile before optimising: the table shows which operators a train step (forward + backward +
Adam) spends its time in, per model, with the settings ``bench.perf.run`` uses on that device. The
findings are written up in ``reports/perf/profile.md``.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from bench.perf.models import RunSettings, apply_backend_flags, build, prepare
from bench.perf.workload import batch_data, train_step, unet_config


def profile_step(name: str, preset: str, batch: int, settings: RunSettings, steps: int = 3, rows: int = 20) -> str:
    """The profiler table (sorted by self device time on CUDA, self CPU time otherwise) of ``steps`` steps."""
    config = unet_config(preset)
    torch.manual_seed(0)
    model = prepare(build(name, config).train(), settings)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    data = batch_data(config, batch, settings)
    cuda = settings.device.startswith("cuda")
    for _ in range(2):  # warm-up: allocator, cuDNN autotuning, lazy init
        train_step(model, opt, settings, data)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            train_step(model, opt, settings, data)
        if cuda:
            torch.cuda.synchronize()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.perf.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="digits", help="UNet preset (or tiny)")
    p.add_argument("--batch", type=int, default=128, help="images per step, ≥ 1")
    p.add_argument("--device", default="cpu", help="cpu | cuda[:i]")
    p.add_argument("--models", default="ours,diffusers", help="comma list of ours, diffusers")
    p.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (0: torch default)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="default: CUDA")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    settings = RunSettings(
        device=args.device,
        bf16=cuda if args.bf16 is None else args.bf16,
        channels_last=cuda if args.channels_last is None else args.channels_last,
    )
    apply_backend_flags(settings)
    for name in args.models.split(","):
        print(f"== {name}: {args.preset}, batch {args.batch}, {settings}")
        print(profile_step(name, args.preset, args.batch, settings), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
