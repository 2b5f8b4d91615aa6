"""``reports/perf/README.md`` from ``results.json`` (no torch): tables, targets, how it was measured."""

from __future__ import annotations

from typing import Any


def _f(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return lines + [""]


_BASIS = {"cpu_s": "CPU time", "wall_s": "wall"}


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:+.2f}%"


def _mem(memory: dict[str, Any], name: str) -> str:
    m = memory.get(name) or {}
    return "–" if "peak_mb" not in m else f"{m['peak_mb']:.0f}"


def _share(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _floor_cells(r: dict[str, Any]) -> list[str]:
    """NCHW floor, channels_last floor (the faster in bold), ours / floor, diffusers / floor (the ceiling)."""
    if "floor_s" not in r:
        return ["–"] * len(_FLOOR_HEAD)
    per, best, by = r["floor_s"], r["floor_format"], r.get("floor_ratio_by_format", {})
    cells = [f"**{per[f]:.4f}**" if f == best else f"{per[f]:.4f}" for f in ("nchw", "nhwc")]
    both = " / ".join(f"{by[f]:.2f}×" if f in by else "–" for f in ("nchw", "nhwc"))
    bound = f"{r['bound_ratio']:.2f}×" if "bound_ratio" in r else "–"
    ceiling = f"{r['ceiling']:.2f}×" if "ceiling" in r else "–"
    fused = f"{r['fused_norm_speedup']:.2f}×" if "fused_norm_speedup" in r else "–"
    over = r.get("speedup_by_format", {})
    vs_diffusers = " / ".join(f"{over[f]:.2f}×" if f in over else "–" for f in ("nchw", "nhwc"))
    return cells + [f"**{r['floor_ratio']:.2f}×**", both, bound, ceiling, fused, vs_diffusers]


_FLOOR_HEAD = ["floor NCHW (s)", "floor channels_last (s)", "ours / floor", "ours NCHW / channels_last over floor",
               "bound / floor (lowest reachable)", "diffusers / floor (ceiling)",
               "fused GroupNorm speed-up (channels_last)", "ours NCHW / channels_last over diffusers"]  # fmt: skip
_FLOOR_NOTE = (
    "*Floor*: the network's convolutions alone (every `nn.Conv2d` call of one forward, recorded and replayed on "
    "copies of the layers; for a training step forward and backward), timed in the same interleaved loop in both "
    "memory formats; the faster (bold) is *the* floor. Diffusers' twin runs the same convolutions (equal "
    "architecture), so *ours / floor* is how far ours' other work is from free (target ≤ 1.15×) and "
    "ours is also timed in the other memory format (the faster format is the one to make the default); "
    "*diffusers / floor* is the largest speed-up over diffusers any rewrite keeping these convolutions can reach; "
    "the speed-up target is that ceiling / 1.15. *Bound*: the floor plus what no implementation avoids besides, "
    "each replayed alone in the same loop: the memory traffic of every GroupNorm outside the convolutions (x read "
    "and y written once, as a kernel that keeps each (sample, group) slice in cache makes it, the SiLU riding along; "
    "backward: x and the gradient read, dx written once), the attention's matrix products, and for a training step "
    "one Adam update by PyTorch's fused kernel. On a CPU no implementation keeping GroupNorm out of the convolution "
    "kernels gets below it (residual adds, up-sampling, concatenations, the loss and the time embedding come on "
    "top); on a GPU each replay pays its own launches, so there it is an estimate. *Fused GroupNorm speed-up*: ours "
    "in channels_last with PyTorch's GroupNorm and SiLU over ours in channels_last with `ddim.fused_norm`'s kernels "
    "(GroupNorm + SiLU in one pass per sample, forward and backward; the CPU only), same model and batch, interleaved. "
    "*Ours NCHW / channels_last over diffusers*: diffusers' time (in the run's settings) over ours' in each memory "
    "format, the speed-up a user who picks that format for ours sees."
)


def _measured(rows: list[dict[str, Any]], out: list[str]) -> list[dict[str, Any]]:
    """The rows that were measured; a line in ``out`` for each job that failed (``error``)."""
    for r in rows:
        if "error" in r:
            out.append(f"- {r['preset'] + ': ' if 'preset' in r else ''}failed — {r['error']}")
    return [r for r in rows if "error" not in r]


def _train(rows: list[dict[str, Any]]) -> list[str]:
    out = ["## 1. Training throughput (forward + backward + Adam step)", ""]
    table = []
    for r in _measured(rows, out):
        ips, t, p = r["images_per_s"], r["times"], r["params"]
        table.append([
            r["preset"], r["batch"], f"{p['ours']:,}", f"{p['diffusers']:,}", ips["ours"], ips["diffusers"],
            f"**{r.get('speedup', r['speedup_wall']):.2f}×** ({_BASIS[r.get('basis', 'wall_s')]})",
            f"{r['speedup_wall']:.2f}×", f"{r['speedup_cpu']:.2f}×",
            f"{t['ours']['spread']:.2f} / {t['diffusers']['spread']:.2f}",
            f"{_mem(r['memory'], 'ours')} / {_mem(r['memory'], 'diffusers')}", *_floor_cells(r),
        ])  # fmt: skip
    head = ["preset", "batch", "params ours", "params diffusers", "ours img/s", "diffusers img/s", "speedup",
            "speedup (wall)", "speedup (CPU time)", "max/min wall ours / diffusers",
            "peak MB ours / diffusers", *_FLOOR_HEAD]  # fmt: skip
    if not table:
        return out + [""]
    return out + _table(head, table) + [_FLOOR_NOTE, ""]


def _eval(rows: list[dict[str, Any]]) -> list[str]:
    out = ["### One network evaluation at the sweep's batch size (a sampling step)", ""]
    table = []
    for r in _measured(rows, out):
        basis = r.get("basis", "wall_s")
        t = r["times"]
        diffusers = f"{t['diffusers'][basis]:.4f}" if "diffusers" in t else "–"
        table.append([r["preset"], r["batch"], f"{t['ours'][basis]:.4f}", diffusers,
                      f"**{r['speedup']:.2f}×**" if "speedup" in r else "–", *_floor_cells(r),
                      f"{r['bf16_speedup']:.2f}×" if "bf16_speedup" in r else "–"])  # fmt: skip
    head = ["preset", "batch", "ours (s)", "diffusers (s)", "speedup", *_FLOOR_HEAD, "ours bf16 autocast speed-up"]
    out += _table(head, table) if table else [""]
    if any("bf16_speedup" in r for r in rows):
        out += ["*ours bf16 autocast speed-up*: ours in float32 over ours under bfloat16 autocast (`sweep "
                "bf16=true`), both timed whatever the run's own setting; bf16 changes the numbers beyond rounding "
                "order, so it is outside the floor targets.", ""]  # fmt: skip
    return out


def _compile(results: list[dict[str, Any]]) -> list[str]:
    out = ["## 3. `torch.compile` (ours, eager vs compiled)", ""]
    table = []
    for res in _measured(results, out):
        for r in res["rows"]:
            t, basis = r["times"], r.get("basis", "wall_s")
            eager, fast = (f"{t[k][basis]:.4f}" for k in ("eager", "compiled"))
            even = r.get("break_even_calls", "–")  # None: compiled is not faster
            table.append([res["preset"], r["what"], r["batch"], eager, fast, f"**{r['speedup']:.2f}×**",
                          f"{r['first_call_s']:.1f}", f"{r['compile_s']:.1f}",
                          "never" if even is None else even])  # fmt: skip
    head = ["preset", "call", "batch", "eager (s)", "compiled (s)", "compiled speedup", "first call (s)",
            "compile (s)", "pays off after (calls)"]  # fmt: skip
    if table:
        out += _table(head, table)
        out += ["Per-call times are medians after the first call, which compiles and is reported apart "
                "(*compile* = first call − a steady call, from an empty inductor cache); compiling pays off after "
                "*compile* / (eager − compiled) calls of that shape (wall time). The default per device is "
                "`ddim.runtime.COMPILE_DEFAULT`: flip it where compiled wins here for the runs that device serves.",
                ""]  # fmt: skip
    return out


def _sample(results: list[dict[str, Any]]) -> list[str]:
    out = ["## 2. Sampling (`ddim.sampling.sample` + `SeededNoise`)", ""]
    for res in results:
        if "error" in res:
            out += [f"- failed — {res['error']}", ""]
            continue
        out.append(
            f"Preset `{res['preset']}`, batch {res['batch']}, random weights. Overhead of `sample(...)` over its S "
            "network evaluations: *in situ* = call time / time spent inside the model during that call − 1 "
            "(primary on the CPU: both parts see the same load); *vs bare* = call time / time of S bare "
            "`model(x, t)` calls of the same batch, interleaved − 1 (primary on CUDA). Peak MB (S = 10, η = 1): ours "
            f"{_mem(res['memory'], 'ours')}, diffusers {_mem(res['memory'], 'diffusers')}."
        )
        out.append("")
        rows = []
        for r in res["rows"]:
            ips, t = r["images_per_s"], r["times"]
            rows.append([
                r["steps"], f"{r['eta']:g}", ips["ours"], ips.get("diffusers"), r.get("speedup", r.get("speedup_wall")),
                t["bare"]["wall_s"], _pct(r.get("overhead_pct_in_situ")), f"{r['overhead_pct_wall']:+.2f}%",
                f"{r['overhead_pct_cpu']:+.2f}%",
            ])  # fmt: skip
        head = ["S", "η", "ours img/s", "diffusers img/s", "speedup", "bare S evals (s)", "overhead in situ",
                "overhead vs bare (wall)", "vs bare (CPU time)"]  # fmt: skip
        out += _table(head, rows)
        if "host_noise_ms" in res:
            h = res["host_noise_ms"]
            out += [f"Host noise work per call at batch {res['batch']} (medians): seeding the per-sample generators "
                    f"{h['generators']:.2f} ms and drawing x_T {h['x_T']:.2f} ms before the first network call; one "
                    f"step's z {h['step_z']:.2f} ms, drawn while the step's network call runs.", ""]  # fmt: skip
    return out


def _sweep(runs: list[dict[str, Any]]) -> list[str]:
    out = ["## 4. Sweep overhead (digits grid, FID/IS/KID with the classifier extractor)", ""]
    rows = []
    for r in runs:
        if "error" in r:
            out.append(f"- `{r.get('mode')}`: did not run — {r['error']}")
            continue
        seen, once = r["extractor_images"], r["reference_computed_once"]
        images = f"{seen} (= {r['cells']}·{r['n']} + {r['reference_count']})" if once else f"{seen} (expected "
        images += "" if once else f"{r['extractor_images_expected_one_reference']})"
        rows.append([
            f"`{r['mode']}`", r["cells"], r["n"], r["wall_s"], r["network_s"], r["extractor_s"],
            f"**{r['overhead_pct']:.1f}%**", images, once, f"{r['peak_mb']:.0f}",
        ])  # fmt: skip
    head = ["mode", "cells", "n", "wall s", "network s", "extractor s", "overhead", "extractor images",
            "reference computed once", "peak MB"]  # fmt: skip
    if rows:
        out += _table(head, rows)
        out.append("Overhead = (wall − network − extractor) / wall; network and extractor time are measured inside the "
                   "run by timing `UNet.forward` and the extractor's `forward`. Each run starts with a cold reference "
                   "cache: the first cell computes the reference statistics, every later cell hits the cache "
                   "(the extractor sees the reference images once).")  # fmt: skip
        out.append("")
    return out


def _hours(h: float) -> str:
    return f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} days"


def _table1(results: list[dict[str, Any]]) -> list[str]:
    out = ["## 5. The paper's Table 1 on this machine", ""]
    for res in _measured(results, out):
        g = res["grid"]
        out += [f"Preset `{res['preset']}`, batch {res['batch']} (features: {res['feature_batch']}), grid of "
                f"`{g['file']}`: {g['n_cells']} cells × {g['n']:,} samples, S = "
                f"{', '.join(str(s) for s, _ in g['cells'])}; {g['feature_images']:,} images through Inception-v3 "
                f"({res['inception_images_per_s']:.1f} images/s, {_hours(res['feature_hours'])}).", ""]  # fmt: skip
        rows = []
        for name, m in res["models"].items():
            ips, measured = m["images_per_s"], m["measured_images_per_s"]
            cells = [f"{measured[s]:.1f}" if s in measured else f"{ips[s]:.2f} (fit)" for s in ips]
            rows.append([name, *cells, f"{1e3 * m['fit_a_s']:.1f} + {1e3 * m['fit_b_s']:.2f}·S",
                         _hours(m["sampling_hours"]), f"**{_hours(m['total_hours'])}**"])  # fmt: skip
        steps = list(next(iter(res["models"].values()))["images_per_s"])
        out += _table(["model", *(f"img/s S={s}" for s in steps), "ms per call", "sampling", "Table 1 in all"], rows)
        fitted, ref = " and ".join(str(v) for v in res["fit_steps"]), res["reference_images"]
        out += [f"S = {fitted} are measured (wall-time medians of interleaved `sample` calls, η = 0); a call costs "
                "a + b·S, fitted through them, which gives S = 1000 and every cell. *Table 1 in all* = every cell's "
                f"sampling + the Inception features of every sample and of the {ref:,} training images "
                "(torchvision's Inception-v3 with random weights stands in for torch-fidelity's extractor: the same "
                "architecture family at a comparable cost; the time does not depend on the weights).", ""]  # fmt: skip
    return out


_CALLS = {"eval": "one evaluation, batch {eval_batch}",
          "sample": "DDIM sampling, S = {sample_steps}, batch {sample_batch}",
          "train": "training step, batch {train_batch}"}  # fmt: skip


def _malloc(results: list[dict[str, Any]]) -> list[str]:
    out = ["## 6. glibc malloc tuned (`ddim.allocator`) against untuned, fresh processes", ""]
    for res in _measured(results, out):
        if "skipped" in res:
            out += [f"Not measured: {res['skipped']}.", ""]
            continue
        rows = []
        for name, c in res["calls"].items():
            faults = f"{_f(c['untuned_faults'], 0)} → {_f(c['tuned_faults'], 0)}"
            rows.append([_CALLS[name].format(**res), f"{c['untuned_cpu_s']:.4f}", f"{c['tuned_cpu_s']:.4f}",
                         " / ".join(f"{r:.2f}" for r in c["ratios"]), f"**{c['speedup']:.2f}×**",
                         c.get("pairs_agree"), faults])  # fmt: skip
        out += [f"Preset `{res['preset']}`, ours, the run's settings; {res['pairs']} pairs of fresh processes.", ""]
        out += _table(["call", "untuned (s)", "tuned (s)", "untuned / tuned, per pair", "median", "pairs agree",
                       "page faults per call, untuned → tuned"], rows)  # fmt: skip
        out += ["Each process runs each call as a block (a warm-up, then timed calls; process-CPU-time medians, "
                "minor page faults per call); a pair is one process with `DDIM_MALLOC_TUNING=0` and one without, the "
                "order alternating between pairs. *Pairs agree*: every pair's ratio on the same side of 1; where they "
                "do not, the effect is within the noise between fresh processes on this machine. The tuning keeps "
                "freed blocks for reuse instead of handing them back to the kernel, which zero-fills fresh pages at "
                "the next call; the numbers computed are the same.", ""]  # fmt: skip
    return out


def _failed(res: dict[str, Any]) -> list[str]:
    """A warning line naming the jobs that failed (runs written before the key: none)."""
    failed = res.get("failed", [])
    return [f"- **{len(failed)} job(s) failed**, their rows are missing: " + "; ".join(failed) + "."] if failed else []


def render(res: dict[str, Any]) -> str:
    m, s = res["machine"], res["settings"]
    device = m.get("gpu") or m["cpu"]
    lines = [
        "# Performance: ddimbench vs diffusers",
        "",
        "Generated by `python -m bench.perf` (`make bench`); raw numbers in `results.json`. "
        "What was slow and what changed it: [profile.md](profile.md).",
        "",
        f"- Measured {res['started']} in {res['seconds']} s on **{device}** ({m['cpu_count']} CPUs, "
        f"load average {_f(m.get('load_avg_1m'))} at the end), torch {m['torch']}, diffusers {m.get('diffusers')}, "
        f"{m['torch_threads']} intra-op thread(s), glibc malloc "
        f"{'tuned as the CLI tunes it (ddim.allocator)' if m.get('malloc_tuned') else 'untuned'}.",
        f"- Settings (both models alike): device `{s.get('device')}`, bf16 autocast {s.get('bf16')}, "
        f"channels_last {s.get('channels_last')}, TF32 {s.get('tf32')}, torch.compile {s.get('compile')}.",
        f"- Method: {res['method']}. Images/s and speed-ups (ours over diffusers) come from process-CPU-time "
        "medians when the CPU runs one intra-op thread (that leaves out the time spent waiting for a core "
        "while other processes run: on a shared machine the wall time moves by up to 2× between repeats), "
        "else from wall-time medians; both are in the tables and in results.json.",
        f"- Memory: {res.get('memory_method', 'see results.json')}.",
        *_failed(res),
        "",
        "## Targets",
        "",
    ]
    rows = [[k, v["target"], f"{v['value']:.2f}", v["met"], f"≥ {v['reachable']:.2f}" if "reachable" in v else "–"]
            for k, v in res["targets"].items()]  # fmt: skip
    lines += _table(["measure", "target", "measured", "met", "lowest reachable here"], rows)
    if any("reachable" in v for v in res["targets"].values()):
        lines += ["*Lowest reachable here*: the bound over the floor from the same run (see the floor tables).", ""]
    sections = (
        ("train", _train),
        ("sample", _sample),
        ("eval", _eval),
        ("compile", _compile),
        ("sweep", _sweep),
        ("table1", _table1),
        ("malloc", _malloc),
    )
    for key, section in sections:
        if res.get(key):
            lines += section(res[key])
    return "\n".join(lines).rstrip() + "\n"
