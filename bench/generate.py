"""``ddimbench sample``: n images from a checkpoint into a folder, one PNG per sample, resumable.

Sample ``i`` is drawn from seed ``seed + i`` (``ddim.sampling.SeededNoise``), so its pixels depend
only on its seed: batch size, device order and interruptions do not change it. The folder gets
``000000.png`` … , a ``grid.png`` of the first 64 and ``samples.json`` (settings, checkpoint
sha256 and the file list). ``bench.metrics.folder.read_png_folder`` reads exactly the listed files when
that manifest is there, so the grid is never scored. Rerunning the same command skips samples
already written; a different setting into the same folder is refused rather than mixed. A file already
there under a sample's name must be a PNG of this run's size and mode that decodes, else the rerun is refused
before anything is sampled: it is never overwritten, since it may be a file someone put there.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from bench.console import note, sigterm_interrupts, warn
from bench.metrics.folder import MANIFEST, sample_names
from bench.sample_config import SampleConfig
from bench.store.renames import current_names
from ddim import fused_norm, sampling, schedules
from ddim.checkpoint import load_checkpoint
from ddim.errors import DDIMError
from ddim.files import atomic_write, atomic_write_json
from ddim.images import save_grid, to_uint8
from ddim.memory import check_disk, check_memory, sampling_batch
from ddim.runtime import resolve_device, sampling_network, slow_bf16, use_compile
from ddim.sampling import check_eta, noise_batches, sample

OVERLAP_DEVICES = ("cuda",)  # where sampling is asynchronous: the host writes one batch while the next samples
GRID = "grid.png"
GRID_COUNT = 64

Progress = Callable[[int, int], None]  # (samples done, total)


def _timesteps(cfg: SampleConfig, T: int) -> torch.Tensor:
    if cfg.sampler == "ddpm":  # ancestral DDPM always walks all T steps
        return torch.arange(T - 1, -1, -1)
    return schedules.timesteps(cfg.steps, T, cfg.spacing)


def _to_png_bytes(img: torch.Tensor) -> bytes:
    import io

    from PIL import Image

    arr = img.permute(1, 2, 0).numpy()  # (H, W, C)
    pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def _settings(cfg: SampleConfig, sha: str, nfe: int) -> dict:
    """What fixes the pixels: the checkpoint's content (by sha256, however its path is spelt) and the sampler
    (the device, ``--compile`` and ``--channels-last`` change them only up to float rounding, like the batch's
    summation order)."""
    runtime = ("checkpoint", "out", "batch_size", "device", "compile", "channels_last")
    keep = {k: v for k, v in asdict(cfg).items() if k not in runtime}
    return {**keep, "checkpoint_sha256": sha, "nfe": nfe}


def generate(cfg: SampleConfig, *, progress: Progress | None = None) -> dict:
    """Write ``cfg.n`` PNG samples, the grid and the manifest into ``cfg.out``; return the manifest.

    SIGTERM (pre-emption, ``kill``) stops it as Ctrl-C does, with ``KeyboardInterrupt``: the samples
    written stay (each file whole), and rerunning the same command resumes.
    """
    with sigterm_interrupts():
        return _generate(cfg, progress)


def _generate(cfg: SampleConfig, progress: Progress | None) -> dict:
    device = resolve_device(cfg.device)
    ck = load_checkpoint(cfg.checkpoint)
    T = ck.diffusion.T
    cfg.validate(T)
    ts = _timesteps(cfg, T)
    if cfg.sampler == "ddim":
        check_eta(ck.alpha_bar(), ts, cfg.eta)  # before any folder or manifest is written
    nfe = sampling.nfe(cfg.steps, T, cfg.sampler)
    out = Path(cfg.out)
    shape = (ck.unet.in_channels, ck.unet.resolution, ck.unet.resolution)
    check_room(cfg.n, out, shape)
    sha = ck.sha256()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DDIMError(f"cannot create output folder {out} ({exc.strerror}); choose another --out") from None
    settings = _settings(cfg, sha, nfe)
    names = sample_names(cfg.n)
    manifest_path = out / MANIFEST
    old: object = None
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise DDIMError(f"{manifest_path} is damaged; empty {out} or choose another --out") from None
        # Read in today's names: a folder an earlier release (the spacing named ``schedule``) left half-done resumes.
        # ... and without ``bf16``, which folders written before the option were made without.
        if not isinstance(old, dict) or _read_settings(old.get("settings")) != settings:
            raise DDIMError(f"{out} holds samples made with other settings; choose another --out or empty it")
    elif any(out.glob("*.png")):
        raise DDIMError(f"{out} already holds PNG files not written by `ddimbench sample`; choose an empty --out")
    _remove_stale_temps(out)
    todo = _samples_to_write(out, names, shape)  # before the manifest is touched: a refusal leaves it as it was
    manifest = {
        "format": "ddimbench-samples-v1",
        "checkpoint": cfg.checkpoint,
        "settings": settings,
        "files": names,
        "grid": GRID,
    }
    atomic_write_json(manifest_path, {**manifest, "complete": False})

    fused = fused_norm.needs_build(device, compiled=use_compile(cfg.compile, device), bf16=cfg.bf16)
    if cfg.channels_last and todo and fused:  # before the network's first call
        note(fused_norm.BUILD_NOTE)
    model, eager = sampling_network(ck.build_model(device), device, compile=cfg.compile,
                                    channels_last=cfg.channels_last, bf16=cfg.bf16)  # fmt: skip
    alpha_bar = ck.alpha_bar()
    batch = _batch(cfg, eager, shape, device, len(todo))
    if cfg.bf16 and todo and (why := slow_bf16(device)):  # after the refusals: an error is one line alone
        warn(why)
    done = cfg.n - len(todo)
    if progress is not None:
        progress(done, cfg.n)
    start = time.perf_counter()
    batches = [todo[k : k + batch] for k in range(0, len(todo), batch)]
    # Sample i from seed + i, whatever its batch.
    streams = noise_batches(([cfg.seed + i for i in idx] for idx in batches), shape, device)

    def flush(written: tuple[list[int], torch.Tensor], done: int) -> int:
        done += _write_pngs(out, names, *written)
        if progress is not None:
            progress(done, cfg.n)
        return done

    # On a GPU the host works while the card samples batch k: it draws batch k+1's x_T and writes batch k−1's
    # PNGs, and only then waits for batch k (reading it back). Elsewhere sampling is synchronous: each batch is
    # written at once (an interrupted run then loses no finished batch).
    overlap = device.type in OVERLAP_DEVICES
    drawn, ready = next(streams, None), None
    try:
        for idx in batches:
            noise, x_T = drawn
            x = sample(model, x_T, alpha_bar, ts, eta=cfg.eta, sampler=cfg.sampler, clip_x0=cfg.clip_x0, noise=noise)
            drawn = next(streams, None)
            if ready is not None:
                written, ready = ready, None
                done = flush(written, done)
            ready = idx, to_uint8(x).cpu()
            if not overlap:
                written, ready = ready, None
                done = flush(written, done)
    finally:  # a batch already read back is written even when the next one fails or is interrupted
        if ready is not None:
            flush(ready, done)
    seconds = time.perf_counter() - start
    _write_grid(out, names[: min(GRID_COUNT, cfg.n)])
    run = {"device": str(device), "compiled": use_compile(cfg.compile, device), "channels_last": cfg.channels_last}
    if not todo and isinstance(old, dict) and old.get("complete") is True and "device" in old:
        run = {k: old[k] for k in (*run, "last_run") if k in old}  # nothing sampled: the run that sampled stays
    manifest = {**manifest, "complete": True, **run}
    if todo:
        manifest["last_run"] = {
            "samples": len(todo),
            "batch_size": batch,
            "seconds": round(seconds, 3),
            "images_per_s": round(len(todo) / max(seconds, 1e-9), 3),
        }
    atomic_write_json(manifest_path, manifest)
    return manifest


def _batch(cfg: SampleConfig, eager: torch.nn.Module, shape: tuple[int, ...], device: torch.device, todo: int) -> int:
    """``--batch-size``, or for ``auto`` the largest batch the device's free memory holds (the eager network
    probes, so a compiled one never compiles the probe's shape); never more than the samples left to write."""
    if cfg.batch_size != "auto":
        return int(cfg.batch_size)
    return max(1, min(todo, sampling_batch(eager, shape, device)))


def _write_pngs(out: Path, names: list[str], idx: list[int], images: torch.Tensor) -> int:
    """Samples ``idx`` (uint8 (B, C, H, W) on the CPU) as their PNG files; returns how many."""
    for i, img in zip(idx, images):
        data = _to_png_bytes(img)
        atomic_write(out / names[i], lambda f, d=data: f.write(d))
    return len(idx)


def _samples_to_write(out: Path, names: list[str], shape: tuple[int, int, int]) -> list[int]:
    """The indices of the samples missing from ``out``. Each file already there must be one this run wrote: a
    PNG of ``shape``'s size and mode (L for 1 channel, RGB for 3) that decodes; another is refused in one line."""
    from PIL import Image

    c, h, w = shape
    want = f"PNG {w}×{h} {'L' if c == 1 else 'RGB'}"
    todo = []
    for i, name in enumerate(names):
        path = out / name
        if not os.path.lexists(path):
            todo.append(i)
            continue
        try:
            with Image.open(path) as im:
                got = f"{im.format} {im.size[0]}×{im.size[1]} {im.mode}"
                im.load()  # decodes: a truncated file fails here
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
            got = "not an image PIL can read"
        if got != want:
            raise DDIMError(
                f"{path} is not a sample of this run ({got}, expected {want}); delete it and rerun to regenerate it"
            )
    return todo


def _read_settings(old: object) -> object:
    """A manifest's settings in today's words: the old spacing name, and ``bf16`` false where it is absent."""
    old = current_names(old)
    return {"bf16": False, **old} if isinstance(old, dict) else old


# The temp files ``atomic_write`` makes for our files (``.000012.png.<random>.tmp``): a killed run leaves them.
_OUR_TEMP = re.compile(r"\.(\d{6,}\.png|grid\.png|samples\.json)\.[A-Za-z0-9_]+\.tmp")


def _remove_stale_temps(out: Path) -> None:
    """Delete the half-written files of an interrupted run into ``out`` (a folder known to be ours)."""
    for p in out.iterdir():
        if _OUR_TEMP.fullmatch(p.name) and p.is_file():
            p.unlink(missing_ok=True)


BOOKKEEPING_BYTES = 200  # memory per sample for its file name, the to-do list and the manifest's JSON text


def _written(out: Path, n: int) -> int:
    """How many of samples 0..n-1 are already in ``out`` (counted from the folder, without listing all n names)."""
    if not out.is_dir():
        return 0
    count = 0
    with os.scandir(out) as entries:
        for e in entries:
            stem, dot, ext = e.name.partition(".")
            count += ext == "png" and len(stem) >= 6 and stem.isdigit() and int(stem) < n
    return count


def check_room(n: int, out: Path, shape: tuple[int, int, int]) -> None:
    """Refuse ``n`` samples of ``shape`` that cannot fit, before the folder is made: the disk must hold the PNGs
    still missing (each at most its raw bytes plus PNG framing), and memory the list of all n file names.
    Sampling itself holds one batch at a time, so it does not grow with n."""
    c, h, w = shape
    png = c * h * w + h + (c * h * w) // 16000 * 5 + 256  # raw rows + filter bytes + stored zlib blocks + chunks
    fix = "use a smaller -n or another --out"
    check_disk(f"-n {n}", out, n - _written(out, n), png, fix)
    check_memory(f"-n {n}", n * BOOKKEEPING_BYTES, "use a smaller -n")


def _write_grid(out: Path, names: list[str]) -> Path:
    import numpy as np
    from PIL import Image

    imgs = []
    for name in names:
        with Image.open(out / name) as im:
            arr = np.asarray(im, dtype=np.uint8)
        t = torch.from_numpy(arr.copy())
        imgs.append(t[None] if t.dim() == 2 else t.permute(2, 0, 1))
    return save_grid(torch.stack(imgs), out / GRID, nrow=int(math.ceil(math.sqrt(len(imgs)))))
