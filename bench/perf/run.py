"""``python -m bench.perf``: the performance benchmark (``make bench``) → ``reports/perf/``.

Six measurements, each a ratio taken within one process by interleaving its candidates (see
``bench.perf.timing``), plus the peak memory of each in a fresh subprocess; the sixth, a process-wide setting,
compares pairs of fresh processes instead:

1. training throughput (forward + backward + Adam step) of our UNet against diffusers'
   ``UNet2DModel`` built to the same architecture, for the ``digits`` and ``cifar10`` presets, and
   the step over its convolution floor (``bench.perf.floor``, NCHW and channels_last);
2. sampling images/s at S = 10 and 50 (η = 0 and 1) and the sampler's overhead over the bare
   network evaluations it makes; one evaluation at the sweep's batch size over its convolution floor;
3. ``torch.compile`` against eager (compile time apart, per-call time amortised);
4. a small digits sweep's wall time against its network-evaluation + feature-extraction time;
5. (CUDA by default, else ``--only table1``) sampling images/s at S = 10 / 50 / 1000 and the
   estimated wall time of the paper's whole Table 1 on this machine (``bench.perf.table1``);
6. (the CPU) glibc malloc tuned against untuned, in pairs of fresh processes (``bench.perf.malloc``).

Writes ``results.json`` (machine, settings, every raw median and ratio) and ``README.md``.
On CUDA (``--device auto`` picks it when present) the defaults are bf16 autocast, channels_last and
TF32, the sampling batch is sized to the card and ``--compile`` adds ``torch.compile``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ddim.allocator import keep_freed_memory
from ddim.errors import DDIMError

SECTIONS = ("train", "sample", "compile", "sweep", "table1", "malloc")
# table1 samples the cifar10 network tens of times per repeat: minutes on a GPU, an hour on a 2-core CPU;
# malloc tunes the host's allocator, which a GPU's memory does not go through.
DEFAULT_SECTIONS = {"cpu": (*SECTIONS[:4], "malloc"), "cuda": SECTIONS[:5]}
# The floor ratio's target is bench.perf.floor.TARGET; a speed-up's is the margin that target gives:
# diffusers' time over the floor (the ceiling) / TARGET (≈ 1.25× for a ceiling of 1.44×).
TARGETS = {"sampler_overhead_pct": 2.0, "sweep_overhead_pct": 10.0}


@dataclass(frozen=True)
class PerfConfig:
    """One benchmark run; CLI options map one-to-one onto these fields (``--dry-run`` prints them)."""

    out: str = "reports/perf"
    device: str = "auto"  # auto | cpu | cuda[:i]
    quick: bool = False  # a smoke run: small batches, one or two repeats
    threads: int = 1  # intra-op CPU threads; 0 = torch's default
    bf16: bool | None = None  # None: on for CUDA, off for the CPU
    channels_last: bool | None = None  # None: on for CUDA, off for the CPU
    tf32: bool = True
    compile: bool = False
    only: tuple[str, ...] | None = None  # None: DEFAULT_SECTIONS of the device
    isolate: bool | None = None  # CPU memory figures need fresh subprocesses; None: on for the CPU, off for CUDA
    train_presets: tuple[str, ...] = ("digits", "cifar10")
    sample_preset: str | None = None  # None: digits on the CPU, cifar10 on CUDA
    sweep_modes: tuple[str, ...] = ("loop", "bench.sweep")
    cache_dir: str = ".cache/ddimbench"

    def __post_init__(self) -> None:
        only = SECTIONS if self.only is None else self.only
        bad = [s for s in only if s not in SECTIONS]
        if bad or not only:
            raise DDIMError(f"--only {','.join(only)}: choose from {','.join(SECTIONS)}")
        if self.threads < 0:
            raise DDIMError(f"--threads must be ≥ 0 (0 = torch's default), got {self.threads}")

    def sections(self, device: str) -> tuple[str, ...]:
        """The sections to run: ``only``, or the device's ``DEFAULT_SECTIONS``."""
        return DEFAULT_SECTIONS["cuda" if device.startswith("cuda") else "cpu"] if self.only is None else self.only


def _sizes(cfg: PerfConfig, cuda: bool) -> dict[str, Any]:
    """Batches and repeats; CPU sizes keep the default run within 6–8 minutes on 2 quiet cores (324–467 s, Xeon)."""
    if cfg.quick:
        return {"train_batch": {"digits": 16, "cifar10": 2, "tiny": 8}, "train_reps": 2, "sample_batch": 8,
                "sample_steps": (10,), "sample_reps": 2, "eval_reps": 2, "compile_reps": 1, "table1_reps": 1,
                "feature_batch": 4, "sweep": {"n": 32,
                "batch": 32, "steps": (5,), "etas": (0.0, 1.0)}}  # fmt: skip
    if cuda:
        return {"train_batch": {"digits": 128, "cifar10": 128, "tiny": 64}, "train_reps": 10, "sample_batch": 0,
                "sample_steps": (10, 50), "sample_reps": 3, "eval_reps": 10, "compile_reps": 10, "table1_reps": 3,
                "feature_batch": 500, "sweep": {"n": 1000,
                "batch": 500, "steps": (10, 20), "etas": (0.0, 1.0)}}  # fmt: skip
    return {"train_batch": {"digits": 128, "cifar10": 8, "tiny": 16}, "train_reps": 15, "sample_batch": 64,
            "sample_steps": (10, 50), "sample_reps": 3, "eval_reps": 11, "compile_reps": 5, "table1_reps": 3,
            "feature_batch": 16, "sweep": {"n": 256,
            "batch": 128, "steps": (10, 20), "etas": (0.0, 1.0)}}  # fmt: skip


def plan(cfg: PerfConfig, device: str) -> list[dict[str, Any]]:
    """The jobs of a run, in order; each is run by ``bench.perf.jobs.run_job``."""
    from bench.perf.models import RunSettings

    cuda = device.startswith("cuda")
    only = cfg.sections(device)
    settings = RunSettings(
        device=device,
        bf16=cuda if cfg.bf16 is None else cfg.bf16,
        channels_last=cuda if cfg.channels_last is None else cfg.channels_last,
        tf32=cfg.tf32,
        compile=cfg.compile,
    ).to_dict()
    sizes = _sizes(cfg, cuda)
    base = {"settings": settings, "threads": cfg.threads}
    jobs: list[dict[str, Any]] = []
    if "train" in only:
        for name in cfg.train_presets:
            train = {**base, "kind": "train", "preset": name, "batch": sizes["train_batch"].get(name, 8)}
            reps = sizes["train_reps"] if name != "cifar10" or cuda else 5  # a cifar10 step takes seconds on a CPU
            jobs.append({**train, "reps": max(1, reps), "warmup": 3 if cfg.compile else 1})
            jobs += [{**train, "memory": True, "models": [m]} for m in ("ours", "diffusers")]
    name = cfg.sample_preset or ("cifar10" if cuda else "digits")
    eval_batch = sizes["sweep"]["batch"]  # the sweep's batch: what one sampling step evaluates
    if "sample" in only:
        sample = {**base, "kind": "sample", "preset": name, "batch": sizes["sample_batch"], "etas": [0.0, 1.0]}
        jobs.append({**sample, "steps": list(sizes["sample_steps"]), "reps": sizes["sample_reps"]})
        jobs += [{**sample, "steps": [10], "memory": True, "models": [m]} for m in ("ours", "diffusers")]
        jobs.append({**base, "kind": "eval", "preset": name, "batch": eval_batch, "reps": sizes["eval_reps"]})
    if "compile" in only:
        jobs.append({**base, "kind": "compile", "preset": name, "batch": sizes["train_batch"].get(name, 8),
                     "eval_batch": eval_batch, "reps": sizes["compile_reps"]})  # fmt: skip
    if "sweep" in only:
        sweep = {**base, "kind": "sweep", "cache_dir": cfg.cache_dir, **sizes["sweep"]}
        jobs += [{**sweep, "modes": [mode]} for mode in cfg.sweep_modes]
    if "table1" in only:  # the paper's CIFAR10 network as sweeps/paper-table1.yaml runs it: float32, NCHW
        paper = RunSettings(device=device, bf16=False, channels_last=False, tf32=cfg.tf32, compile=cfg.compile)
        table1 = {**base, "settings": paper.to_dict(), "kind": "table1", "preset": "tiny" if cfg.quick else "cifar10",
                  "feature_batch": sizes["feature_batch"], "reps": sizes["table1_reps"]}  # fmt: skip
        # On a GPU the file's batch; on a CPU, whose throughput is flat past small batches, a small one.
        jobs.append({**table1, "batch": 8} if not cuda else table1)
    if "malloc" in only:
        jobs.append({**base, "kind": "malloc", "preset": name, "eval_batch": eval_batch, "sample_steps": 10,
                     "sample_batch": sizes["sample_batch"] or 64, "train_batch": sizes["train_batch"].get(name, 8),
                     "reps": sizes["eval_reps"] // 3 + 1, "pairs": 1 if cfg.quick else 5})  # fmt: skip
    for job in jobs:  # tuples -> lists: a job is JSON
        job.update({k: list(job[k]) for k in ("steps", "etas") if k in job})
    return jobs


def run_in_subprocess(job: dict[str, Any], timeout: float = 1800, env: dict[str, str] | None = None) -> dict[str, Any]:
    from bench.perf.jobs import RESULT_TAG

    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if job.get("threads"):
        env["OMP_NUM_THREADS"] = str(job["threads"])
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.perf.jobs", json.dumps(job)],
            capture_output=True, text=True, timeout=timeout, env=env,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit code {proc.returncode}: {tail[0]}"}


def run_job_isolated(job: dict[str, Any], isolate: bool) -> dict[str, Any]:
    """A job in a fresh subprocess (``isolate``) or in this process; failures become ``{"error": ...}``."""
    from bench.perf.jobs import job_error, run_job
    from bench.perf.malloc import compare  # pairs of fresh processes: the allocator's setting is process-wide

    start = time.perf_counter()
    if isolate and job["kind"] != "malloc":
        result = run_in_subprocess(job)
    else:
        try:
            result = compare(job, run_in_subprocess) if job["kind"] == "malloc" else run_job(job)
        except Exception as err:  # one failing job (a missing package, a CUDA error, a bug) spares the others
            result = job_error(err)
    result["job_seconds"] = round(time.perf_counter() - start, 2)
    return result


def _collect(jobs: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Group job results by section: timing results with their memory results attached."""
    out: dict[str, Any] = {k: [] for k in ("train", "sample", "eval", "compile", "sweep", "table1", "malloc")}
    for job, res in zip(jobs, results):
        kind = job["kind"]
        if kind == "sweep":
            for run in res.get("runs", [res]):
                out["sweep"].append({**{k: v for k, v in res.items() if k != "runs"}, **run})
            continue
        if kind in ("eval", "compile", "table1", "malloc"):
            out[kind].append(res)
            continue
        if not job.get("memory"):
            out[kind].append({**res, "memory": {}})
            continue
        target = out[kind][-1] if out[kind] else None
        if target is not None:
            target["memory"][job["models"][0]] = res
    return out


def _floor_targets(out: dict[str, Any], kind: str, row: dict[str, Any]) -> None:
    """A network's ratio to its convolution floor (≤ TARGET) and its speed-up over diffusers (≥ ceiling / TARGET)."""
    from bench.perf.floor import TARGET

    if "floor_ratio" in row:
        value = row["floor_ratio"]
        out[f"{kind}_floor_ratio_{row['preset']}"] = {"value": value, "target": f"≤ {TARGET}×", "met": value <= TARGET}
        if "bound_ratio" in row:  # no implementation keeping GroupNorm outside the convolutions goes below it
            out[f"{kind}_floor_ratio_{row['preset']}"]["reachable"] = row["bound_ratio"]
    if "speedup" in row and "ceiling" in row:
        value, goal = row["speedup"], row["ceiling"] / TARGET
        out[f"{kind}_speedup_{row['preset']}"] = {"value": value, "target": f"≥ {goal:.2f}× (ceiling / {TARGET})",
                                                  "met": value >= goal}  # fmt: skip


def targets(sections: dict[str, Any]) -> dict[str, Any]:
    """Each target's measured value and whether it is met (None where not measured)."""
    out: dict[str, Any] = {}
    for row in sections["train"]:
        _floor_targets(out, "train", row)
    for row in sections.get("eval", []):
        _floor_targets(out, "eval", row)
    for res in sections["sample"]:
        for row in res.get("rows", []):
            value = row.get("overhead_pct", row["overhead_pct_wall"])
            key = f"sampler_overhead_S{row['steps']}_eta{row['eta']:g}"
            out[key] = {"value": value, "target": f"≤ {TARGETS['sampler_overhead_pct']}%",
                        "met": value <= TARGETS["sampler_overhead_pct"]}  # fmt: skip
    for run in sections["sweep"]:
        if "overhead_pct" in run:
            value = run["overhead_pct"]
            out[f"sweep_overhead_{run['mode']}"] = {"value": value, "target": f"≤ {TARGETS['sweep_overhead_pct']}%",
                                                    "met": value <= TARGETS["sweep_overhead_pct"]}  # fmt: skip
    return out


PARTIAL = "results.partial.json"  # a run in progress (or killed): the jobs done so far, beside the last full run


def run(cfg: PerfConfig, log: Any = None) -> dict[str, Any]:
    """Run every planned job, write ``results.json`` and ``README.md`` under ``cfg.out``; return the results.

    While it runs, ``results.partial.json`` holds the jobs done so far (``complete`` false), rewritten after each,
    so a run that is killed or runs out of time keeps what it measured without replacing the last complete run's
    files; it is removed once those are written. A failed job is recorded as ``{"error": ...}`` and listed in
    ``failed``, and the jobs after it still run."""
    from bench.perf.report import render
    from ddim.files import atomic_write_json, atomic_write_text
    from ddim.runtime import resolve_device

    device = str(resolve_device(cfg.device))
    if device == "cuda":
        device = "cuda:0"
    jobs = plan(cfg, device)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    wall = time.perf_counter()
    results: list[dict[str, Any]] = []
    isolate = not device.startswith("cuda") if cfg.isolate is None else cfg.isolate  # CUDA peaks reset in-process
    folder = Path(cfg.out)
    for i, job in enumerate(jobs, 1):
        if log:
            log(f"[{i}/{len(jobs)}] {_label(job)} ...")
        # A compile job always gets a fresh process: inductor keeps compiled graphs in memory too.
        results.append(run_job_isolated(job, isolate or job["kind"] == "compile"))
        if log and "error" in results[-1]:
            log(f"    failed: {results[-1]['error']}")
        if i < len(jobs):
            atomic_write_json(folder / PARTIAL, _results(cfg, device, jobs, results, started, wall, isolate))
    out = _results(cfg, device, jobs, results, started, wall, isolate)
    atomic_write_json(folder / "results.json", out)
    atomic_write_text(folder / "README.md", render(out))
    (folder / PARTIAL).unlink(missing_ok=True)
    return out


def _label(job: dict[str, Any]) -> str:
    memory = f"memory {job['models'][0]}" if job.get("memory") else ""
    return " ".join(w for w in (job["kind"], str(job.get("preset", "")), memory) if w)


def _results(cfg: PerfConfig, device: str, jobs: list[dict[str, Any]], results: list[dict[str, Any]], started: str,
             wall: float, isolate: bool) -> dict[str, Any]:  # fmt: skip
    """The results of the jobs run so far (``results`` follows ``jobs``; ``wall``: the run's start)."""
    import torch

    from bench.perf.timing import machine_info

    sections = _collect(jobs, results)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out = {
        "started": started,
        "seconds": round(time.perf_counter() - wall, 1),
        "complete": len(results) == len(jobs),
        "failed": [f"{_label(job)}: {res['error']}" for job, res in zip(jobs, results) if "error" in res],
        "config": {
            **asdict(cfg),
            "isolate": isolate,
            "only": list(cfg.sections(device)),
            "train_presets": list(cfg.train_presets),
        },
        "settings": jobs[0]["settings"] if jobs else {},
        "machine": machine_info(device),
        "method": "interleaved repeats (A B A B ...), per-candidate medians, ratios within one process "
        "(the malloc section: pairs of fresh processes)",
        "memory_method": (
            "peak memory of each model measured alone"
            + (" in a fresh subprocess" if isolate else " in the benchmark process")
            + (
                ": torch.cuda.max_memory_allocated after a reset, minus what was allocated before"
                if device.startswith("cuda")
                else ": peak RSS (reset at the start on Linux) minus the RSS at the start"
            )
        ),
        **sections,
        "targets": targets(sections),
    }
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder; default reports/perf, or reports/perf/<card> on a GPU")  # fmt: skip
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:i]", help="where to run (auto: CUDA if present)")
    p.add_argument("--quick", action="store_true", help="a smoke run: small batches, one or two repeats")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="CPU intra-op threads, ≥ 0 (0: torch default)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (default: CUDA)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format for both models (default: CUDA)")  # fmt: skip
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True, help="TF32 matmul/conv on CUDA")
    p.add_argument("--compile", action="store_true", help="torch.compile both models (slow to start on a CPU)")
    p.add_argument("--only", default=None, metavar="LIST",
                   help=f"sections: {','.join(SECTIONS)} (default: no table1 on a CPU, no malloc on CUDA)")  # fmt: skip
    p.add_argument("--presets", default="digits,cifar10", metavar="LIST", help="UNet presets to train (or tiny)")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="one subprocess per memory figure (default: on for the CPU, off for CUDA)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and the job plan, run nothing")
    return p


def card_slug(name: str) -> str:
    """A folder name for a GPU model: ``NVIDIA H100 80GB HBM3`` → ``h100-80gb-hbm3``."""
    words = re.sub(r"[^a-z0-9]+", " ", name.lower()).split()
    return "-".join(w for w in words if w not in ("nvidia", "geforce", "tesla")) or "gpu"


def default_out(device: str) -> str:
    """``reports/perf`` for the CPU; ``reports/perf/<card>`` on a GPU, so a GPU run never overwrites the CPU one."""
    import torch

    from ddim.runtime import resolve_device

    resolved = resolve_device(device)
    if resolved.type != "cuda":
        return PerfConfig.out
    return str(Path(PerfConfig.out) / card_slug(torch.cuda.get_device_name(resolved)))


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # the jobs run in-process allocate as the CLI's commands do (ddim.allocator)
    args = _parser().parse_args(argv)
    try:
        cfg = PerfConfig(
            out=args.out or default_out(args.device), device=args.device, quick=args.quick, threads=args.threads,
            bf16=args.bf16,
            channels_last=args.channels_last, tf32=args.tf32, compile=args.compile,
            only=None if args.only is None else tuple(s for s in args.only.split(",") if s), isolate=args.isolate,
            train_presets=tuple(s for s in args.presets.split(",") if s),
        )  # fmt: skip
        if args.dry_run:
            from ddim.runtime import resolve_device

            device = str(resolve_device(cfg.device))
            config = {**asdict(cfg), "only": list(cfg.sections(device))}
            print(json.dumps({"config": config, "jobs": plan(cfg, device)}, indent=2))
            return 0
        out = run(cfg, log=lambda line: print(line, file=sys.stderr, flush=True))
    except DDIMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {Path(cfg.out) / 'results.json'} and README.md in {out['seconds']} s")
    if out["failed"]:
        print(f"error: {len(out['failed'])} job(s) failed (their rows are missing): " + "; ".join(out["failed"])
              + "; fix the cause and rerun those sections into another folder (--only SECTIONS --out DIR: a run "
              "rewrites its folder's results)", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
